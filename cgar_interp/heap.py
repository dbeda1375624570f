"""Handing freed host memory back to the operating system.

glibc's ``malloc`` keeps freed memory for reuse. Once a large block has been freed, its
dynamic mmap threshold rises (to 32 MiB on 64-bit), so a forward pass's temporaries come from
the heap too, and freed temporaries stay resident as holes the later, differently sized ones
do not fill. On the paper suite's shared pass (agnews-mini, 1.15 GB of kept tensors) that was
1.3 GB of resident memory nobody used between passes. ``malloc_trim`` returns every free page,
holes included (glibc >= 2.8). Elsewhere (macOS, musl, Windows) this is a no-op.

Trimming between passes does not touch the slack *during* a pass: a wide pass holds ~250 MB
of tensors at once and glibc makes ~450-800 MB of it resident, whether or not kept caches sit
in the heap (``benchmarks/heap_transient.py``).

Another allocator can be put in front of glibc's at process start (``LD_PRELOAD``).
``benchmarks/allocator.py`` compares them on the paper suite: tcmalloc ran it faster and with
a lower peak than glibc's, with every table identical. So the ``cgar`` command (and the
benchmarks that time it) restart themselves once under tcmalloc where it is installed
(:func:`reexec_under_allocator`; ``CGAR_ALLOCATOR`` chooses: ``auto``, the default, ``glibc``,
``tcmalloc`` or ``jemalloc``). :func:`allocator` names the one in use, which every run's
manifest records, and :func:`trim_heap` asks that allocator to return its free pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Mapping, Sequence

# shared-library name fragment -> allocator name, for the allocators LD_PRELOAD commonly installs
PRELOADED = {"libtcmalloc": "tcmalloc", "libjemalloc": "jemalloc", "libmimalloc": "mimalloc"}
ALLOCATOR_ENV = "CGAR_ALLOCATOR"  # auto | glibc | tcmalloc | jemalloc
CHOICES = ("auto", "glibc", "tcmalloc", "jemalloc")
# allocator -> the names ``ctypes.util.find_library`` looks up (gperftools' minimal tcmalloc
# first: the full one adds a heap profiler the toolkit does not use)
LIBRARIES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
INSTALL = {"tcmalloc": "libtcmalloc-minimal4 (Debian/Ubuntu)", "jemalloc": "libjemalloc2"}
_REEXEC_MARK = "CGAR_ALLOCATOR_REEXEC"  # set in the restarted process: never restart twice


@functools.lru_cache(maxsize=1)
def allocator() -> str:
    """The ``malloc`` this process runs on: ``tcmalloc``, ``jemalloc`` or ``mimalloc`` where one
    was preloaded (read from ``/proc/self/maps``), else ``glibc`` on Linux with glibc and
    ``system`` elsewhere (macOS, Windows, musl). It changes time and resident memory, never
    values."""
    if not sys.platform.startswith("linux"):
        return "system"
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:
        mapped = ""
    for fragment, name in PRELOADED.items():
        if fragment in mapped:
            return name
    return "glibc" if _malloc_trim() is not None else "system"


@functools.lru_cache(maxsize=1)
def _release_free():
    """The preloaded allocator's own call that returns its free pages, or None."""
    name = allocator()
    try:
        if name == "tcmalloc":  # gperftools' C API (libtcmalloc and libtcmalloc_minimal)
            return ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory
        if name == "jemalloc":  # purge every arena (MALLCTL_ARENAS_ALL = 4096)
            mallctl = ctypes.CDLL(None).mallctl
            key = b"arena.4096.purge"
            return lambda: mallctl(key, None, None, None, ctypes.c_size_t(0))
    except AttributeError:
        return None
    return None


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS; ``True`` where an allocator did it (glibc's
    ``malloc_trim``, and a preloaded tcmalloc's or jemalloc's own release), ``False`` where
    there is no such call (nothing happens)."""
    done = False
    release = _release_free()
    if release is not None:
        release()
        done = True
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
        done = True
    return done


def find_library(name: str) -> str | None:
    """The shared library of allocator ``name`` as the dynamic loader knows it, or None
    (looked up, never loaded: an allocator must be in place before the first ``malloc``)."""
    for stem in LIBRARIES[name]:
        found = ctypes.util.find_library(stem)
        if found:
            return found
    return None


def preload_for(environ: Mapping[str, str] | None = None) -> str | None:
    """The library this process should restart under, or None to go on as it is.

    ``CGAR_ALLOCATOR`` in ``environ`` (default ``os.environ``): ``auto`` (unset) restarts
    under tcmalloc where it is installed and glibc's malloc is in use; ``tcmalloc`` or
    ``jemalloc`` require that one (an error where it is not installed); ``glibc`` never
    restarts. An allocator the user preloaded is kept. Linux only (elsewhere: None).

    Raises:
        ValueError: an unknown ``CGAR_ALLOCATOR``, or one that is not installed.
    """
    environ = os.environ if environ is None else environ
    choice = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(
            f"{ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r} is not valid; valid: {', '.join(CHOICES)}"
        )
    if choice == "glibc" or not sys.platform.startswith("linux") or allocator() != "glibc":
        return None
    name = "tcmalloc" if choice == "auto" else choice
    library = find_library(name)
    if library is None and choice != "auto":
        raise ValueError(
            f"{ALLOCATOR_ENV}={choice} but {name} is not installed (the package "
            f"{INSTALL[name]}); valid here: auto, glibc"
        )
    return library


def reexec_under_allocator(argv: Sequence[str]) -> None:
    """Restart this process as ``python argv...`` under :func:`preload_for`'s library, once.

    Call it first thing in an entry point (before the model loads: nothing is lost); returns
    without doing anything where no restart is due, or in the restarted process itself.
    ``argv``: the arguments after the interpreter, e.g. ``sys.orig_argv[1:]``.
    """
    if os.environ.get(_REEXEC_MARK):
        return
    library = preload_for()
    if library is None:
        return
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    env = {**os.environ, "LD_PRELOAD": preload, _REEXEC_MARK: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], env)

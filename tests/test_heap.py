"""trim_heap: freed host memory goes back to the OS (glibc, or a preloaded tcmalloc or
jemalloc), a no-op elsewhere; allocator names the malloc a process runs on."""

import os
import subprocess
import sys

import pytest

CHILD = """
import numpy as np
from cgar_interp.heap import trim_heap
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
big = np.ones(30 << 20, dtype=np.uint8)
del big  # freeing a mapped block raises glibc's mmap threshold: the next blocks use the heap
blocks = [np.ones(4 << 20, dtype=np.uint8) for _ in range(100)]
kept = blocks[::2]  # every other block stays: the freed ones are holes between them
del blocks
before = rss()
print(trim_heap(), before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_returns_the_holes_between_kept_blocks():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    trimmed, returned_mib = out.stdout.split()
    assert trimmed == "True"
    # 50 freed 4 MiB blocks between kept ones: most of their 200 MiB goes back
    assert float(returned_mib) > 150, out.stdout


def test_trim_heap_is_a_no_op_without_glibc(monkeypatch):
    from cgar_interp import heap

    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    monkeypatch.setattr(heap, "_release_free", lambda: None)
    assert heap.trim_heap() is False


PRELOADED_CHILD = """
import numpy as np
from cgar_interp.heap import allocator, trim_heap
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
start = rss()
blocks = [np.ones(1 << 20, dtype=np.uint8) for _ in range(400)]  # 400 MiB in 1 MiB blocks
del blocks
freed = rss()
print(allocator(), trim_heap(), freed - start, rss() - start)
"""


def preload_child(library: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LD_PRELOAD": library}
    return subprocess.run(
        [sys.executable, "-c", PRELOADED_CHILD], capture_output=True, text=True, env=env
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc")
@pytest.mark.parametrize(
    "name, library",
    [("tcmalloc", "libtcmalloc_minimal.so.4"), ("jemalloc", "libjemalloc.so.2")],
)
def test_a_preloaded_allocator_is_named_and_trimmed(name, library):
    """Under a preloaded allocator, ``allocator`` names it and ``trim_heap`` returns what it
    kept of 400 freed MiB (tcmalloc keeps all of it until asked)."""
    out = preload_child(library)
    if out.returncode or "cannot be preloaded" in out.stderr:
        pytest.skip(f"{library} is not installed here (apt: libtcmalloc-minimal4, libjemalloc2)")
    used, trimmed, _, after = out.stdout.split()
    assert used == name, out.stdout
    assert trimmed == "True"
    assert float(after) < 100, out.stdout  # the 400 freed MiB are no longer resident


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_allocator_is_glibc_without_a_preload():
    from cgar_interp.heap import allocator

    if "LD_PRELOAD" in os.environ:
        pytest.skip("this test process runs with LD_PRELOAD")
    assert allocator() == "glibc"


@pytest.fixture
def on_glibc(monkeypatch):
    """A Linux process on glibc's malloc with tcmalloc and jemalloc installed (as seen by
    ``preload_for``; nothing is loaded)."""
    from cgar_interp import heap

    monkeypatch.setattr(heap.sys, "platform", "linux")
    monkeypatch.setattr(heap, "allocator", lambda: "glibc")
    libraries = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
    monkeypatch.setattr(heap, "find_library", libraries.get)
    return heap


def test_preload_for_picks_tcmalloc_by_default_and_obeys_the_variable(on_glibc, monkeypatch):
    heap = on_glibc
    assert heap.preload_for({}) == "libtcmalloc_minimal.so.4"
    assert heap.preload_for({"CGAR_ALLOCATOR": "auto"}) == "libtcmalloc_minimal.so.4"
    assert heap.preload_for({"CGAR_ALLOCATOR": "JEmalloc"}) == "libjemalloc.so.2"
    assert heap.preload_for({"CGAR_ALLOCATOR": "glibc"}) is None
    monkeypatch.setattr(heap, "allocator", lambda: "jemalloc")  # the user preloaded one
    assert heap.preload_for({}) is None
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.preload_for({"CGAR_ALLOCATOR": "tcmalloc"}) is None


def test_preload_for_refuses_a_bad_or_missing_allocator(on_glibc, monkeypatch):
    heap = on_glibc
    with pytest.raises(ValueError, match=r"CGAR_ALLOCATOR='tcmaloc' is not valid; valid: auto"):
        heap.preload_for({"CGAR_ALLOCATOR": "tcmaloc"})
    monkeypatch.setattr(heap, "find_library", lambda name: None)
    assert heap.preload_for({}) is None  # auto: stays on glibc
    with pytest.raises(ValueError, match="jemalloc is not installed .*libjemalloc2"):
        heap.preload_for({"CGAR_ALLOCATOR": "jemalloc"})


def test_reexec_restarts_once_with_the_library_in_front(on_glibc, monkeypatch):
    heap = on_glibc
    calls = []
    monkeypatch.setattr(heap.os, "execve", lambda *args: calls.append(args))
    monkeypatch.delenv("CGAR_ALLOCATOR", raising=False)
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    monkeypatch.delenv("CGAR_ALLOCATOR_REEXEC", raising=False)
    heap.reexec_under_allocator(["/venv/bin/cgar", "run", "paper"])
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == [sys.executable, "/venv/bin/cgar", "run", "paper"]
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libother.so"
    # the restarted process does not restart again, whatever it finds
    monkeypatch.setenv("CGAR_ALLOCATOR_REEXEC", "1")
    heap.reexec_under_allocator(["/venv/bin/cgar", "run", "paper"])
    assert len(calls) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD")
def test_the_cgar_command_runs_under_the_allocator_it_is_told(tmp_path):
    """``cgar sites`` as a command (an entry script calling ``main()``): restarted under tcmalloc by default where it is
    installed, left on glibc with ``CGAR_ALLOCATOR=glibc``, refused with a bad value."""
    from cgar_interp.heap import find_library

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "CGAR_ALLOCATOR")}

    def used(**extra):
        # the command's own process, restarted or not, reports the malloc it ended on
        code = (
            "import atexit, sys\n"
            "from cgar_interp.heap import allocator\n"
            "atexit.register(lambda: print('ALLOCATOR', allocator()))\n"
            "from cgar_interp.cli import main\n"
            "sys.argv = [sys.argv[0], 'sites', '--layers', '1']\n"
            "main()\n"
        )
        script = tmp_path / "entry.py"
        script.write_text(code)
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, env={**env, **extra}
        )
        return out

    bad = used(CGAR_ALLOCATOR="tcmaloc")
    assert bad.returncode == 2 and "CGAR_ALLOCATOR='tcmaloc' is not valid" in bad.stderr
    stay = used(CGAR_ALLOCATOR="glibc")
    assert stay.returncode == 0, stay.stderr
    assert "ALLOCATOR glibc" in stay.stdout
    default = used()
    assert default.returncode == 0, default.stderr
    expected = "tcmalloc" if find_library("tcmalloc") else "glibc"
    assert f"ALLOCATOR {expected}" in default.stdout

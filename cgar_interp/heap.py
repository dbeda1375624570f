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
"""

from __future__ import annotations

import ctypes
import functools
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS; ``True`` where glibc did it, ``False`` where
    there is no ``malloc_trim`` (nothing happens)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""trim_heap: freed host memory goes back to the OS (glibc), a no-op elsewhere."""

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
    assert heap.trim_heap() is False

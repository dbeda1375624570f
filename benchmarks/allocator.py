"""The paper suite under each memory allocator this machine has, side by side (issue 28).

Run: ``.venv/bin/python benchmarks/allocator.py [--quick] [--allocators glibc,tcmalloc,...]``.
Linux only (allocators are put in front of glibc's with ``LD_PRELOAD``). Not part of
``make bench``: each allocator runs the whole paper suite once (~5 min each on 2 CPU cores).

For each allocator, in its own fresh child processes and in turn:

- ``probes/paper.toml`` as shipped (``run_suite``, report included): wall seconds and peak
  resident memory (the kernel's high-water mark);
- the memory row's floor as ``benchmarks/limits.py`` takes it: a bare forward of the suite's
  widest batch in a fresh child, the median of three children;
- every result table of the run compared with the first allocator's (``glibc``): an allocator
  may change time and memory, never a value.

What it shows: which allocator to run the toolkit with (``cgar_interp.heap.allocator`` names
the one a run used, in its manifest), and the memory row's ratio on each (the floor child's
peak moves with the allocator as the suite's does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# glibc's own malloc, then those LD_PRELOAD puts in front of it (cgar_interp.heap.find_library)
ALLOCATORS = ("glibc", "tcmalloc", "jemalloc")
FLOOR_RUNS = 3

SUITE = """
from cgar_interp.runner import run_suite
from cgar_interp.suite import load_suite
suite = load_suite('paper', {overrides})
run_suite(suite, {out!r}, report=True)
"""
FLOOR = """
import torch, transformers
from cgar_interp.embedded import ensure_embedded
m = transformers.AutoModelForCausalLM.from_pretrained(ensure_embedded().path,
    attn_implementation='eager').eval()
ids = torch.randint(3, 1000, (16, {width}))
with torch.no_grad(): m(ids, logits_to_keep=1)
"""
REPORT = """
from cgar_interp.heap import allocator
from cgar_interp.runner import peak_rss_mib
print('CHILD', allocator(), peak_rss_mib())
"""


def child(code: str, name: str) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of ``python -c code`` in a fresh process under
    allocator ``name``; refuses a child that did not run on it (a library the loader could not
    preload is only a warning to ``ld.so``)."""
    from cgar_interp.heap import find_library

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if name != "glibc":
        env["LD_PRELOAD"] = find_library(name) or name
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code + REPORT], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{name} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    _, used, peak = [x for x in done.stdout.splitlines() if x.startswith("CHILD ")][-1].split()
    if used != name:
        raise RuntimeError(f"the {name} child ran on {used}: is {name} installed?")
    return seconds, float(peak)


def available(name: str) -> bool:
    """Whether this machine has allocator ``name`` (:func:`child` still checks each child ran
    on it)."""
    from cgar_interp.heap import find_library

    if not sys.platform.startswith("linux"):
        return False
    return name == "glibc" or find_library(name) is not None


def compare_tables(first: Path, other: Path) -> list[str]:
    """Names of the tables of run ``other`` that differ from run ``first``'s (values compared
    exactly; a table only one run has counts as different)."""
    import pandas as pd

    names = sorted({p.name for p in (first / "tables").glob("*.parquet")})
    names += sorted({p.name for p in (other / "tables").glob("*.parquet")} - set(names))
    differ = []
    for table in names:
        a, b = first / "tables" / table, other / "tables" / table
        if not (a.exists() and b.exists()):
            differ.append(table)
            continue
        try:
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True)
        except AssertionError:
            differ.append(table)
    return differ


def widest(out: Path) -> int:
    """The widest prompt row the run recorded (tokens), as ``benchmarks/limits.py`` reads it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from limits import prompt_batches

    return max(int(b.lengths.max()) for b in prompt_batches(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer queries (a smoke run)")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS))
    args = parser.parse_args()
    names = args.allocators.split(",")
    for name in names:
        if name not in ALLOCATORS:
            raise SystemExit(f"unknown allocator {name!r}; valid: {', '.join(ALLOCATORS)}")
    missing = [n for n in names if not available(n)]
    for name in missing:
        print(f"{name}: not installed here; skipped")
    names = [n for n in names if n not in missing]
    if not names:
        raise SystemExit("no allocator to compare")
    overrides = "n_eval=32, n_fit=8, n_boot=50" if args.quick else ""
    print(
        "probes/paper.toml as shipped (embedded model, cpu, float32), each allocator in fresh "
        f"children, in turn: {', '.join(names)}\n",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = Path(tmp) / name
            seconds, peak = child(SUITE.format(overrides=overrides, out=str(out)), name)
            floor_code = FLOOR.format(width=widest(out))
            floors = [child(floor_code, name)[1] for _ in range(FLOOR_RUNS)]
            manifest = json.loads((out / "manifest.json").read_text())
            recorded = manifest.get("allocator", "?")
            differ = compare_tables(Path(tmp) / names[0], out)
            rows.append((name, seconds, peak, floors, differ))
            print(
                f"{name}: suite {seconds:.1f} s, peak {peak:.0f} MiB; floor children "
                f"{', '.join(f'{f:.0f}' for f in floors)} MiB; manifest says {recorded}",
                flush=True,
            )
    base_s, base_peak = rows[0][1], rows[0][2]
    print(
        f"\n{'allocator':<11}{'suite time':>12}{'vs ' + names[0]:>10}{'peak':>10}"
        f"{'vs ' + names[0]:>10}{'floor':>9}{'peak/floor':>12}  tables vs {names[0]}"
    )
    for name, seconds, peak, floors, differ in rows:
        floor = statistics.median(floors)
        same = "identical" if not differ else f"DIFFER: {', '.join(differ)}"
        print(
            f"{name:<11}{seconds:>10.1f} s{seconds / base_s:>9.2f}x{peak:>6.0f} MiB"
            f"{peak / base_peak:>9.2f}x{floor:>5.0f} MiB{peak / floor:>11.2f}x  {same}"
        )


if __name__ == "__main__":
    main()

"""How much resident memory one capture pass adds while it runs, by heap policy (issue 28).

Run: ``.venv/bin/python benchmarks/heap_transient.py [--quick]``. Embedded model on CPU, fp32,
TransformerLens backend (the paper suite's). Each policy runs in its own fresh child process
(glibc's ``mallopt`` has to be set before the first allocation): the same seeded sequence of
capture passes the paper suite's agnews-mini shared pass makes (batches of 16 or 8 prompts,
widths 39-51 and 187-209 tokens, the KV caches of some kept until the end, every site
``resid.*`` read, the heap trimmed after each batch as the engine does). For each batch it
records the *transient*: the peak resident memory during the pass (the kernel's high-water
mark, reset before each pass) less the resident memory before it.

Policies, side by side in one run:

- ``plain``: glibc's defaults (what the suite runs with);
- ``consolidated``: each kept KV cache copied into one contiguous block after its pass, so
  no kept tensor sits between the heap's free chunks (tests whether the kept caches fragment
  the heap the later passes allocate from);
- ``mmap16``: ``M_MMAP_THRESHOLD`` fixed at 16 MiB at process start, so every attention and
  MLP temporary of a wide pass is its own mapping, returned when freed (at the cost of page
  faults on every such allocation);
- ``mmap128k``: the same at 128 KiB, glibc's starting value, held fixed: every tensor but the
  smallest is its own mapping, so the transient is close to the bytes of the tensors the
  pass holds at once (the pass's own need, without the heap's slack; slow);
- ``tcmalloc``, ``jemalloc``: another allocator in front of glibc's (``LD_PRELOAD``; skipped
  where the library is not installed). Their transients are not comparable with glibc's one
  for one: they keep freed memory for reuse between the engine's trims, so read the last
  column, the child's peak resident memory over the whole sequence.

Reading it: the first wide pass runs on a fresh heap; the later ones show what a long-lived
process pays. The suite's peak is the kept tensors plus the transient of its widest pass, so
this is the part of the memory row (``benchmarks/limits.py``) that the engine's own bytes do
not explain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

POLICIES = ("plain", "consolidated", "mmap16", "mmap128k", "jemalloc", "tcmalloc")
PRELOADED = ("jemalloc", "tcmalloc")  # cgar_interp.heap.find_library names their libraries
MMAP_THRESHOLD = {"mmap16": 16 << 20, "mmap128k": 128 << 10}  # fixed at process start
# (width, rows, keep the KV cache): the order of the paper suite's agnews-mini shared pass
SEQUENCE = (
    [(47, 16, True), (40, 16, True), (49, 8, True), (39, 16, True), (51, 8, True)]
    + [(208, 16, False), (189, 16, True), (203, 8, True)]
    + [(187, 16, False), (209, 8, False), (208, 16, False), (208, 16, False)]
    + [(189, 16, False), (203, 8, False), (187, 16, False), (209, 8, False)]
    + [(208, 16, True), (189, 16, True), (203, 8, True)]
)
WIDE = 150  # a pass over prompts wider than this is a wide pass


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux ``VmRSS``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status: this benchmark needs Linux")


def consolidate(run) -> None:
    """Copy every kept KV cache of ``run`` (``RunResult.states``) into one contiguous block per
    state, its layers' keys and values becoming views into it (the originals are freed)."""
    import torch

    for _, state in run.states:
        layers = state.cache.layers
        parts = [t for layer in layers for t in (layer.keys, layer.values)]
        block = torch.empty(sum(t.numel() for t in parts), dtype=parts[0].dtype)
        views, at = [], 0
        for t in parts:
            views.append(block[at : at + t.numel()].view(t.shape))
            views[-1].copy_(t)
            at += t.numel()
        for i, layer in enumerate(layers):
            layer.keys, layer.values = views[2 * i], views[2 * i + 1]


def child(policy: str, sequence) -> list[dict]:
    """The passes of ``sequence`` under ``policy`` in this (fresh) process; per batch its
    transient, seconds and resident memory before and after."""
    import ctypes
    import gc
    import time

    # M_MMAP_THRESHOLD (-3), before the first large allocation
    threshold = MMAP_THRESHOLD.get(policy)
    if threshold and ctypes.CDLL("libc.so.6").mallopt(-3, threshold) != 1:
        raise RuntimeError(f"mallopt(M_MMAP_THRESHOLD, {threshold}) failed")
    import torch

    from cgar_interp import load_model
    from cgar_interp.heap import allocator

    if policy in PRELOADED and allocator() != policy:
        raise RuntimeError(f"the {policy} child runs on {allocator()}: is {policy} installed?")
    from cgar_interp.capture import capture_many
    from cgar_interp.heap import trim_heap
    from cgar_interp.runner import peak_rss_mib
    from cgar_interp.tokens import TokenBatch

    handle = load_model("embedded", backend="transformer_lens")
    sites = [f"resid.{layer}" for layer in range(handle.n_layers + 1)]
    gen = torch.Generator().manual_seed(0)
    kept, out = [], []
    for width, rows, keep in sequence:
        ids = torch.randint(3, 1000, (rows, width), generator=gen)
        batch = TokenBatch.from_sequences(ids.tolist())
        gc.collect()
        trim_heap()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the kernel's high-water mark (VmHWM) restarts from now
        before = rss_mib()
        start = time.perf_counter()
        with torch.no_grad():
            run = capture_many(handle, batch, sites, -1, batch_size=16, keep_states=keep)
        seconds = time.perf_counter() - start
        peak = peak_rss_mib()
        if keep and policy == "consolidated":
            consolidate(run)
        if keep:
            kept.append(run)
        del run
        gc.collect()
        trim_heap()
        out.append(
            {
                "width": width,
                "rows": rows,
                "keep": keep,
                "before": before,
                "transient": peak - before,
                "seconds": seconds,
                "after": rss_mib(),
            }
        )
    return out


def run_policy(policy: str, sequence) -> list[dict]:
    from cgar_interp.heap import find_library

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if policy in PRELOADED:
        env["LD_PRELOAD"] = find_library(policy) or policy
    done = subprocess.run(
        [sys.executable, __file__, "--child", policy, "--sequence", json.dumps(sequence)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(f"{policy} child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a shorter sequence (a smoke run)")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--sequence", help=argparse.SUPPRESS)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated")
    args = parser.parse_args()
    policies = args.policies.split(",")
    for policy in policies:
        if policy not in POLICIES:
            parser.error(f"unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
    if args.child:
        print("RESULT " + json.dumps(child(args.child, json.loads(args.sequence))), flush=True)
        return
    sequence = SEQUENCE[:8] if args.quick else SEQUENCE
    print(
        "embedded model, transformer_lens, float32, cpu; capture passes of every resid site "
        f"in the order of the paper suite's agnews-mini shared pass ({len(sequence)} batches), "
        "each policy in a fresh child\n",
        flush=True,
    )
    from cgar_interp.heap import find_library

    missing = [p for p in policies if p in PRELOADED and find_library(p) is None]
    for policy in missing:
        print(f"{policy}: not installed here; skipped")
    policies = [p for p in policies if p not in missing]
    results = {policy: run_policy(policy, sequence) for policy in policies}
    base = None
    print(
        f"{'policy':<14}{'first wide pass':>16}{'later wide (median)':>21}{'(max)':>8}"
        f"{'s per wide pass':>17}{'time vs plain':>15}{'resident at end':>17}{'peak':>10}"
    )
    for policy, rows in results.items():
        wide = [r for r in rows if r["width"] > WIDE]
        later = [r["transient"] for r in wide[1:]]
        seconds = statistics.median(r["seconds"] for r in wide)
        base = base or seconds
        print(
            f"{policy:<14}{wide[0]['transient']:>12.0f} MiB{statistics.median(later):>17.0f} MiB"
            f"{max(later):>8.0f}{seconds:>17.2f}{seconds / base:>14.2f}x"
            f"{rows[-1]['after']:>13.0f} MiB"
            f"{max(r['before'] + r['transient'] for r in rows):>6.0f} MiB",
            flush=True,
        )


if __name__ == "__main__":
    main()

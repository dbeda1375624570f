"""Each probe as a ratio to the forward passes it cannot avoid, timed in the same run (issue 19).

Run: ``make bench`` (or ``.venv/bin/python benchmarks/limits.py [--quick]``). Embedded model on
CPU, fp32, nnsight backend, the data of ``benchmarks/sweep.py`` (agnews-mini, one demonstration
per class shared by every query, 8 fit + 40 eval queries, batch 16). Every ratio alternates the
probe and its floor (median of ``--repeat``), so drift hits both alike.

Rows (issue 19's targets):

- decode mode, paper grid: the context-gate probe / its two capture passes (zero-shot, and ICL
  over the shared prefix's KV cache) timed alone, the same sites: <= 1.10;
- decode mode, all-layers grid: the same: <= 1.25;
- patch mode, paper grid: the probe / (the two passes + the one-token suffix rows it runs, the
  same variants through :func:`~cgar_interp.prefix.resume_last_token`, unscored): <= 1.2;
- Hopfield heads (every block, zero-shot, ICL and random-label prompts of the first 24 eval
  queries of the paper suite's agnews-mini prompts and the ICL prompts of the 16 fit queries
  it selects heads on, as that suite runs it) / the eager-attention forward passes of those
  prompts, timed bare (plain transformers, ``output_attentions=True``, the same batches):
  <= 1.3;
- subspace (every layer, the paper suite's 1000 resamples, its agnews-mini prompts) / the
  forward passes it needs (zero-shot and ICL prompts of every query, and the random-label
  prompts of the eval queries, its declared read), timed bare (plain transformers,
  ``output_hidden_states=True``, the same batches): <= 1.3;
- ``probes/paper.toml`` as shipped (every probe, head_mediation included; report too; a child
  process) / a bare forward of the prompt rows it recorded: <= 1.5; the same suite without
  head_mediation beside it for information; its peak resident memory / that of a child
  running a bare forward of the widest batch (the median of ``FLOOR_RUNS`` children): <= 2.0.

Every bare forward (:func:`bare_forwards`) unembeds the last position only
(``logits_to_keep=1``): no probe reads the logits of any other position, so that is the
cheapest forward that yields what the probes read.

The script first restarts itself under the allocator the ``cgar`` command would run on
(:func:`cgar_interp.heap.reexec_under_allocator`: tcmalloc where it is installed, or what
``CGAR_ALLOCATOR`` says), so every row, its floor and every child run on the same one, which
the header names.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from cgar_interp import load_model  # noqa: E402
from cgar_interp.capture import capture_many, iter_batches  # noqa: E402
from cgar_interp.layers import resolve_layers  # noqa: E402
from cgar_interp.prefix import resume_last_token  # noqa: E402
from cgar_interp.probes import ProbeContext, get_probe  # noqa: E402
from cgar_interp.probes.context_gate import ContextGateConfig  # noqa: E402
from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig  # noqa: E402
from cgar_interp.probes.subspace import SubspaceConfig  # noqa: E402
from cgar_interp.suite import load_suite  # noqa: E402
from cgar_interp.tasks_bridge import prepare_task  # noqa: E402
from cgar_interp.tokens import TokenBatch  # noqa: E402

ROWS: list[tuple[str, str, str, bool]] = []
from sweep import LAMBDAS  # noqa: E402  (the grid of both benchmarks)

INFO_TARGETS = ("none", "reported")  # information rows: printed, not counted
FLOOR_RUNS = 3  # fresh children whose median peak is the memory row's floor


def report(name: str, value: str, target: str, ok: bool) -> None:
    if target in INFO_TARGETS:
        print(f"INFO  {name}: {value}  (target {target})", flush=True)
        return
    ROWS.append((name, value, target, ok))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}  (target {target})", flush=True)


def alternate(fns: dict, repeat: int) -> dict[str, float]:
    """Median seconds of each function, run in turn ``repeat`` times."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bare_forwards(handle, batches, bs: int, **outputs) -> None:
    """Plain transformers over each batch, cut as the engine cuts it (sorted by length).

    Logits at the last position only (``logits_to_keep=1`` unless ``outputs`` says otherwise):
    the probes read each row's last-token logits and no other, so this is the cheapest forward
    that yields them (each right-padded batch's last slot is unembedded: the same work as each
    row's own last token). ``outputs`` adds what a probe reads besides (e.g.
    ``output_attentions=True`` for the Hopfield row, ``output_hidden_states=True`` for the
    subspace row).
    """
    model = handle.backend.hf_model
    outputs = {"logits_to_keep": 1, **outputs}
    with torch.no_grad():
        for batch in batches:
            for sub in iter_batches(batch, bs):
                ids = sub.batch.ids
                mask = (torch.arange(ids.shape[1])[None] < sub.batch.lengths[:, None]).long()
                model(input_ids=ids, attention_mask=mask, **outputs)


def main() -> None:
    from sweep import inputs_for, run_gate

    from cgar_interp.heap import allocator, reexec_under_allocator

    reexec_under_allocator(sys.orig_argv[1:])  # the cgar command's malloc; children inherit it
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", help="comma-separated row groups: decode, patch, heads, subspace")
    args = parser.parse_args()
    n_fit, n_eval = (4, 12) if args.quick else (8, 40)
    repeat = 1 if args.quick else args.repeat
    bs = 16
    nn = load_model("embedded", backend="nnsight")
    L = nn.n_layers
    inputs = inputs_for(nn, "agnews-mini", n_fit, n_eval, pinned=True)
    print(
        f"model {nn.name} (sha256 {nn.model_hash[:12]}), nnsight, float32, cpu, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, malloc {allocator()}; "
        f"agnews-mini, {n_fit} fit + {n_eval} eval queries, batch {bs}, median of {repeat}\n",
        flush=True,
    )

    def config(spec, modes):
        return ContextGateConfig(
            context_layers=spec, lambdas=LAMBDAS, modes=modes, vectors=("context",)
        )

    def probe(cfg):
        return run_gate(nn, inputs, cfg.context_layers, cfg.modes, bs)[1]

    def passes(cfg, keep_states: bool):
        """The probe's captures alone: what ProbeContext.captures runs, the same sites."""
        sites = [f"resid.{layer}" for layer in cfg.needed_layers(L)]
        every = torch.arange(len(inputs.gold))
        rest = every[~torch.isin(every, inputs.eval)]
        zero = capture_many(
            nn,
            inputs.zero.select(inputs.eval),
            sites,
            -1,
            batch_size=bs,
            keep_states=keep_states,
        )
        capture_many(nn, inputs.zero.select(rest), sites, -1, batch_size=bs)
        capture_many(nn, inputs.icl, sites, -1, batch_size=bs)
        return zero

    groups = (
        set(args.only.split(","))
        if args.only
        else {"decode", "patch", "heads", "subspace", "suite"}
    )
    for name, spec, target in (
        (("paper grid", "paper", 1.10), ("all-layers grid", "all", 1.25))
        if "decode" in groups
        else ()
    ):
        cfg = config(spec, ("decode",))
        t = alternate(
            {"probe": lambda cfg=cfg: probe(cfg), "passes": lambda cfg=cfg: passes(cfg, False)},
            repeat,
        )
        ratio = t["probe"] / t["passes"]
        report(
            f"decode mode, {name}: probe / its two forward passes timed alone",
            f"{ratio:.2f}x ({t['probe']:.2f} s vs {t['passes']:.2f} s)",
            f"<= {target}",
            ratio <= target,
        )

    if "patch" in groups:
        patch_row(nn, config("paper", ("patch",)), passes, probe, repeat)

    # the Hopfield and subspace rows on the paper suite's own prompts (a demonstration set per
    # query, so no shared prefix: a bare forward of each prompt is the pass the probe needs)
    paper = prepare_task(nn, load_suite("paper"), "agnews-mini").inputs
    # the label controls feed other probes only
    paper = replace(paper, icl_flipped=None, icl_random=None, icl_permuted=None)

    def fresh_ctx(layers=()):
        return ProbeContext(nn, paper, tuple(layers), n_boot=1000, batch_size=bs)

    if "heads" in groups:
        heads_row(nn, paper, fresh_ctx, repeat, bs)
    if "subspace" in groups:
        subspace_row(nn, paper, fresh_ctx, repeat, bs)
    if "suite" in groups:
        suite_rows(nn, quick=args.quick)
    print(f"\n{sum(ok for *_, ok in ROWS)} of {len(ROWS)} rows with a target pass.")


def patch_row(nn, cfg, passes, probe, repeat: int) -> None:
    c_layers = resolve_layers(cfg.context_layers, nn.n_layers, "context_layers")
    vec = torch.randn(nn.arch.d_model, generator=torch.Generator().manual_seed(0))
    lam = torch.tensor(LAMBDAS)

    def floor():  # the captures, then the same suffix variants, unscored
        zero = passes(cfg, True)
        for _, state in zero.states:
            for c in c_layers:
                h = state.resid[c][None].float() + lam[:, None, None] * vec
                resume_last_token(nn, state, c, h)

    t = alternate({"probe": lambda: probe(cfg), "floor": floor}, repeat)
    ratio = t["probe"] / t["floor"]
    report(
        "patch mode, paper grid: probe / (two passes + its one-token suffix rows, timed bare)",
        f"{ratio:.2f}x ({t['probe']:.2f} s vs {t['floor']:.2f} s)",
        "<= 1.2",
        ratio <= 1.2,
    )


def heads_row(nn, inputs, fresh_ctx, repeat: int, bs: int) -> None:
    hop = HopfieldHeadsConfig(layers="all", max_queries=24)
    rows = inputs.eval[:24]
    # every prompt the probe reads: zero-shot and ICL of its queries, the random-label
    # prompts of its length control, and the fit queries' ICL prompts it selects heads on
    batches = [
        getattr(inputs, kind).select(hop.rows_of(kind, inputs)) for kind in hop.kinds_read(inputs)
    ]
    t = alternate(
        {
            "probe": lambda: get_probe("hopfield_heads").run(hop, fresh_ctx()),
            "bare": lambda: bare_forwards(nn, batches, bs, output_attentions=True),
        },
        repeat,
    )
    ratio = t["probe"] / t["bare"]
    n_prompts = sum(b.batch_size for b in batches)
    report(
        f"Hopfield heads (all blocks, {len(rows)} queries x zero-shot + ICL + random-label "
        f"control, + the fit ICL prompts it selects on: {n_prompts} prompts) / its "
        "eager-attention forwards timed bare",
        f"{ratio:.2f}x ({t['probe']:.2f} s vs {t['bare']:.2f} s)",
        "<= 1.3",
        ratio <= 1.3,
    )


def subspace_row(nn, inputs, fresh_ctx, repeat: int, bs: int) -> None:
    cfg = SubspaceConfig(layers="all")
    # zero-shot and ICL prompts of every query, and the random-label prompts of the eval
    # queries it reads for claim 4's control (its declared read)
    batches = [inputs.zero, inputs.icl] + [
        getattr(inputs, read.kind).select(torch.tensor(read.rows))
        for read in cfg.shared_reads(inputs, nn.n_layers)
    ]
    t = alternate(
        {
            "probe": lambda: get_probe("subspace").run(
                cfg, fresh_ctx(cfg.needed_layers(nn.n_layers))
            ),
            "bare": lambda: bare_forwards(nn, batches, bs, output_hidden_states=True),
        },
        repeat,
    )
    ratio = t["probe"] / t["bare"]
    report(
        "subspace (all layers, 1000 resamples) / its forward passes timed bare (zero-shot and "
        f"ICL prompts of every query + the eval queries' random-label prompts: "
        f"{sum(b.batch_size for b in batches)} prompts)",
        f"{ratio:.2f}x ({t['probe']:.2f} s vs {t['bare']:.2f} s)",
        "<= 1.3",
        ratio <= 1.3,
    )


def prompt_batches(run_dir: Path) -> list[TokenBatch]:
    """Every prompt row a run recorded, one batch per (task, kind)."""
    import pandas as pd

    frame = pd.read_parquet(run_dir / "prompts.parquet")
    keys = [c for c in ("task", "shots", "kind") if c in frame]
    return [
        TokenBatch.from_sequences([list(ids) for ids in group.token_ids])
        for _, group in frame.groupby(keys, sort=False)
    ]


def child_peak_mib(code: str) -> tuple[float, float]:
    """Wall seconds and peak resident MiB of ``python -c code`` in a fresh process (the child
    reports its own high-water mark as it exits)."""
    import subprocess

    code += "\nfrom cgar_interp.runner import peak_rss_mib\nprint('PEAK_MIB', peak_rss_mib())\n"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = [line for line in done.stdout.splitlines() if line.startswith("PEAK_MIB ")]
    return seconds, float(peak[-1].split()[1])


def suite_child(out: Path, overrides: str, drop: tuple[str, ...]) -> tuple[float, float, dict]:
    """Run ``cgar run paper`` (report included) in a child process, without the probes of kinds
    ``drop``; returns its wall seconds, peak resident MiB and manifest."""
    import json

    t_suite, peak = child_peak_mib(
        "import dataclasses\n"
        "from cgar_interp.runner import run_suite\n"
        "from cgar_interp.suite import load_suite\n"
        f"suite = load_suite('paper', {overrides})\n"
        f"suite = dataclasses.replace(suite, probes=tuple(p for p in suite.probes if p.kind "
        f"not in {drop!r}))\n"
        f"run_suite(suite, {str(out)!r}, report=True)\n"
    )
    return t_suite, peak, json.loads((out / "manifest.json").read_text())


def print_stages(out: Path, manifest: dict, t_suite: float, t_bare: float) -> None:
    """Where a suite's time went, as a share of the bare forward's time (manifest stages)."""
    import json

    units: dict[str, float] = {}
    for done in sorted(out.glob("units/**/done.json")):
        kind = done.parent.name.split("-", 1)[1]
        units[kind] = units.get(kind, 0.0) + json.loads(done.read_text())["seconds"]
    stages = manifest.get("stages", [])
    print("      where the suite's time goes (share of the bare forward's time):")
    for entry in stages:
        name = entry["stage"]
        extra = ""
        if name.startswith("probe:"):
            extra = f" (units {units.get(name.split(':', 1)[1], 0.0):.1f} s)"
        print(
            f"        {name:<24} {entry['seconds']:7.1f} s  {entry['seconds'] / t_bare:5.2f}x"
            f"  peak {entry['peak_rss_mib']:7.0f} MiB{extra}"
        )
    rest = t_suite - sum(e["seconds"] for e in stages)
    print(f"        {'interpreter + imports':<24} {rest:7.1f} s  {rest / t_bare:5.2f}x")


def suite_rows(nn, quick: bool) -> None:
    """Two runs of the paper suite in child processes. The row with a target is
    ``probes/paper.toml`` as shipped: every probe (context gate, task vectors, Hopfield heads,
    subspace, head_mediation), theory, tables and report, against a bare forward of its
    recorded prompt rows (last-position logits). Head mediation carries the target with the
    rest now that it can run as attribution (``method = "attribution"`` or
    ``"attribution+verify"``: one forward and one backward per batch of the corrupted prompts
    estimates every head, and the exact AIE of a few verified heads runs as one-token suffix
    passes; benchmarks/heads.py times both against the same floor), where the exact AIE of
    every head is a one-token pass per head through every block above it. The suite without
    head_mediation is the information row beside it; the peak resident memory of the shipped
    suite over a bare forward of its widest batch is the last row (<= 2.0)."""
    import tempfile

    method = next(
        (p.config.method for p in load_suite("paper").probes if p.kind == "head_mediation"),
        None,
    )

    with tempfile.TemporaryDirectory() as tmp:
        overrides = "n_eval=32, n_fit=8, n_boot=50" if quick else ""
        widest = (
            "import torch, transformers\n"
            "from cgar_interp.embedded import ensure_embedded\n"
            "m = transformers.AutoModelForCausalLM.from_pretrained(ensure_embedded().path, "
            "attn_implementation='eager').eval()\n"
            "ids = torch.randint(3, 1000, (16, {width}))\n"
            "with torch.no_grad(): m(ids, logits_to_keep=1)\n"
        )
        core_out, full_out = Path(tmp) / "core", Path(tmp) / "paper"
        t_core, _, core_manifest = suite_child(core_out, overrides, ("head_mediation",))
        t_full, peak_full, full_manifest = suite_child(full_out, overrides, ())
        batches = prompt_batches(full_out)
        core_batches = prompt_batches(core_out)
        # the suite without head mediation prepares no corrupted (permuted-label) prompts:
        # its rows are the shipped suite's less those
        full_rows = {tuple(row) for b in batches for row in b.ids.tolist()}
        assert all(tuple(r) in full_rows for b in core_batches for r in b.ids.tolist()), (
            "the suite without head_mediation recorded rows the shipped suite did not"
        )
        width = max(int(b.lengths.max()) for b in batches)

        def bare_seconds(which) -> float:
            times = []
            for _ in range(3):
                gc.collect()
                start = time.perf_counter()
                bare_forwards(nn, which, 16)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        t_bare, t_bare_core = bare_seconds(batches), bare_seconds(core_batches)
        n_rows = sum(b.batch_size for b in batches)
        n_core = sum(b.batch_size for b in core_batches)
        ratio = t_full / t_bare
        report(
            "probes/paper.toml as shipped (context gate, task vectors, Hopfield heads, subspace, "
            f"head_mediation with method = {method!r}, theory, tables, report; child process) / "
            f"a bare forward of its {n_rows} recorded prompt rows (last-position logits)",
            f"{ratio:.2f}x ({t_full:.1f} s vs {t_bare:.1f} s)",
            "<= 1.5",
            ratio <= 1.5,
        )
        print_stages(full_out, full_manifest, t_full, t_bare)
        report(
            "the same suite without head_mediation / a bare forward of its own "
            f"{n_core} recorded prompt rows",
            f"{t_core / t_bare_core:.2f}x ({t_core:.1f} s vs {t_bare_core:.1f} s)",
            "none",
            True,
        )
        print_stages(core_out, core_manifest, t_core, t_bare_core)
        # the floor child's own peak moves by a few hundred MiB from run to run on the same
        # code (glibc's heap, see benchmarks/heap_transient.py): its median of FLOOR_RUNS
        floors = [
            child_peak_mib(widest.replace("{width}", str(width)))[1] for _ in range(FLOOR_RUNS)
        ]
        peak_floor = statistics.median(floors)
        rises, last = [], 0.0
        for entry in full_manifest.get("stages", []):
            rises.append((entry["peak_rss_mib"] - last, entry["stage"]))
            last = max(last, entry["peak_rss_mib"])
        rise, stage = max(rises)
        ratio = peak_full / peak_floor
        report(
            "peak resident memory of probes/paper.toml as shipped / weights + one batch's "
            f"activations (a child running a bare forward of the widest batch, 16 x {width} "
            "tokens, logits at the last position)",
            f"{ratio:.2f}x ({peak_full:.0f} MiB vs {peak_floor:.0f} MiB, the median of "
            f"{', '.join(f'{f:.0f}' for f in floors)}); the peak rose most in {stage} "
            f"(+{rise:.0f} MiB)",
            "<= 2.0",
            ratio <= 2.0,
        )


if __name__ == "__main__":
    main()

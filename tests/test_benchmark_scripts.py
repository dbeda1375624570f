"""The benchmark scripts stay runnable, and the naive baseline computes the probe's numbers."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cgar_interp.probes import ProbeContext, get_probe
from cgar_interp.probes.context_gate import ContextGateConfig

from .probe_helpers import synthetic_inputs

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def sweep_module():
    sys.path.insert(0, str(BENCH))
    try:
        import sweep

        yield sweep
    finally:
        sys.path.remove(str(BENCH))


def test_naive_nnsight_loop_computes_the_decode_sweep(tiny_handles, sweep_module):
    """The baseline the speed-up is measured against gives the same label masses as the probe."""
    inputs = synthetic_inputs(n=12, controls=False)
    handle = tiny_handles["nnsight"]
    config = ContextGateConfig(
        context_layers=(0, 1, 2),
        lambdas=sweep_module.LAMBDAS,
        modes=("decode",),
        vectors=("context",),
    )
    ctx = ProbeContext(handle, inputs, config.needed_layers(2), n_boot=0, batch_size=4)
    table = get_probe("context_gate").run(config, ctx)["context_gate"]
    ours = sweep_module.ours_table_masses(table, inputs)
    naive = sweep_module.naive_nnsight_sweep(handle.backend.engine, inputs, (0, 1, 2), 4, 2)
    assert set(naive) == set(ours) and len(naive) == 3 * len(sweep_module.LAMBDAS) + 1
    for key, masses in naive.items():
        assert masses.shape == (len(inputs.eval),)
        assert float(masses.mean()) == pytest.approx(ours[key], abs=1e-6), key
    assert not torch.allclose(naive[(2, 0.0)], naive[(2, 10.0)])  # the gate does something


def test_gpu_shape_script_runs_on_cpu_at_tiny_shape():
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "gpu_shape.py"),
            "--shape=tiny",
            "--device=cpu",
            "--dtype=float32",
            "--queries=12",
            "--fit=4",
            "--prefix=20",
            "--query-len=6",
            "--repeat=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert any("queries/s" in line for line in lines)
    assert any("vs bare forward" in line for line in lines)


def test_naive_nnsight_head_loop_computes_the_aies(tiny_handles):
    """The per-head baseline of benchmarks/heads.py gives head_effects' AIEs on every head."""
    from cgar_interp.probes.head_mediation import head_effects, head_means
    from tests.test_head_mediation import labelled_inputs

    sys.path.insert(0, str(BENCH))
    try:
        import heads as bench
    finally:
        sys.path.remove(str(BENCH))
    handle = tiny_handles["nnsight"]
    inputs = labelled_inputs()
    ev = inputs.eval[:6]
    fit = inputs.icl.select(inputs.fit)
    a, _ = head_means(handle, fit, (0, 1), "head_out", 4)
    z, _ = head_means(handle, fit, (0, 1), "z", 4)
    ours, _ = head_effects(
        handle, inputs.icl_permuted.select(ev), ev, (0, 1), a, bench.gold_probability(inputs), 4
    )
    arch = handle.arch
    naive = bench.naive_nnsight_aie(
        handle.backend.engine, inputs, ev, z, (0, 1), arch.n_heads, arch.d_head, 4
    )
    assert len(naive) == 2 * arch.n_heads
    for (b, h), value in naive.items():
        assert value == pytest.approx(float(ours[b][h].mean()), abs=1e-6), (b, h)
    assert max(abs(v) for v in naive.values()) > 1e-4  # the patches do something


def bench_module(name: str):
    """A script of benchmarks/ imported as a module."""
    import importlib

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


class RecordingModel:
    """Calls the model it wraps and records each call's keyword arguments and logits."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, **kwargs):
        out = self.model(**kwargs)
        self.calls.append((kwargs, out.logits.shape))
        return out


def recording_handle(handle):
    from types import SimpleNamespace

    model = RecordingModel(handle.backend.hf_model)
    return SimpleNamespace(backend=SimpleNamespace(hf_model=model)), model


def test_heads_attribution_rows_run_on_the_tiny_model(tiny_handles):
    """The timed functions of benchmarks/heads.py's attribution rows give a finite estimate of
    every head; attribution+verify the exact AIE of the verified heads (head_effects' own)."""
    from cgar_interp.probes.head_mediation import head_effects, head_means
    from tests.test_head_mediation import labelled_inputs

    bench = bench_module("heads")
    handle = tiny_handles["transformer_lens"]  # the benchmark's backend
    inputs = labelled_inputs()
    ev = inputs.eval[:6]
    corrupted = inputs.icl_permuted.select(ev)
    fit = inputs.icl.select(inputs.fit)
    blocks, n_heads = (0, 1), handle.arch.n_heads
    a, _ = head_means(handle, fit, blocks, "head_out", 4)
    z, _ = head_means(handle, fit, blocks, "z", 4)
    score = bench.gold_probability(inputs)
    estimate = bench.attribution_estimate(handle, corrupted, ev, blocks, z, score, 4)
    assert set(estimate) == set(blocks)
    for b in blocks:
        assert estimate[b].shape == (n_heads, len(ev)) and torch.isfinite(estimate[b]).all()
    assert max(float(v.abs().max()) for v in estimate.values()) > 0

    est2, verified, exact = bench.attribution_verify(
        handle, corrupted, ev, blocks, z, a, score, 4, n_top=3, n_random=2
    )
    assert sorted(verified.values()) == ["random"] * 2 + ["top"] * 3
    full, _ = head_effects(handle, corrupted, ev, blocks, a, score, 4)
    for b in blocks:
        assert torch.allclose(est2[b], estimate[b], atol=1e-6)
        for h in range(n_heads):
            if (b, h) in verified:
                assert torch.allclose(exact[b][h], full[b][h], atol=1e-6), (b, h)
            else:
                assert torch.isnan(exact[b][h]).all(), (b, h)
    every = [(b, h) for b in blocks for h in range(n_heads)]
    assert -1 <= bench.spearman(estimate, full, every) <= 1

    fake, model = recording_handle(handle)
    bench.bare_forward(fake, corrupted, 4)
    assert model.calls and all(
        kwargs["logits_to_keep"] == 1 and shape[1] == 1 for kwargs, shape in model.calls
    )


def test_limits_bare_forwards_unembed_the_last_position_only(tiny_handles):
    from tests.test_head_mediation import labelled_inputs

    limits = bench_module("limits")
    inputs = labelled_inputs()
    fake, model = recording_handle(tiny_handles["hf"])
    limits.bare_forwards(fake, [inputs.zero, inputs.icl], 4)
    limits.bare_forwards(fake, [inputs.icl], 4, output_attentions=True)
    assert len(model.calls) == 3 + 3 + 3
    for kwargs, shape in model.calls:
        assert kwargs["logits_to_keep"] == 1 and shape[1] == 1
        assert shape[2] == tiny_handles["hf"].arch.vocab_size
    assert all(kwargs.get("output_attentions") for kwargs, _ in model.calls[6:])


def test_heap_transient_consolidates_kept_caches_without_changing_them(tiny_handles):
    """The ``consolidated`` policy of benchmarks/heap_transient.py moves every kept key and
    value of a batch into one block and leaves their values as they were."""
    from cgar_interp.capture import capture_many

    heap_transient = bench_module("heap_transient")
    inputs = synthetic_inputs(n=6, controls=False)
    run = capture_many(tiny_handles["hf"], inputs.icl, [], -1, batch_size=4, keep_states=True)
    before = [
        [(layer.keys.clone(), layer.values.clone()) for layer in state.cache.layers]
        for _, state in run.states
    ]
    heap_transient.consolidate(run)
    assert len(run.states) == 2
    for (_, state), kept in zip(run.states, before, strict=True):
        storages = {
            t.untyped_storage().data_ptr()
            for layer in state.cache.layers
            for t in (layer.keys, layer.values)
        }
        assert len(storages) == 1
        for layer, (keys, values) in zip(state.cache.layers, kept, strict=True):
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_allocator_benchmark_finds_a_table_that_differs(tmp_path):
    """benchmarks/allocator.py's check that an allocator changed no value: identical tables
    pass, one changed value, a missing table and an extra one are each named."""
    import pandas as pd

    allocator = bench_module("allocator")
    first, same, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    frame = pd.DataFrame({"metric": ["m", "n"], "value": [0.25, 1 / 3]})
    for run in (first, same, other):
        (run / "tables").mkdir(parents=True)
    for run in (first, same):
        frame.to_parquet(run / "tables" / "x.parquet")
        frame.to_parquet(run / "tables" / "y.parquet")
    assert allocator.compare_tables(first, same) == []
    changed = frame.assign(value=[0.25, 1 / 3 + 1e-12])
    changed.to_parquet(other / "tables" / "x.parquet")
    frame.to_parquet(other / "tables" / "z.parquet")
    assert allocator.compare_tables(first, other) == ["x.parquet", "y.parquet", "z.parquet"]

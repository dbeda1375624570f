"""The suite's shared capture pass: probes declare what they read (SharedRead), every prompt runs
once, and the tables equal those of probes that run their own capture passes."""

import numpy as np
import pandas as pd
import pytest
import torch

from cgar_interp.probes import ProbeContext, get_probe
from cgar_interp.probes.base import SharedRead
from cgar_interp.probes.context_gate import ContextGateConfig
from cgar_interp.probes.head_mediation import HeadMediationConfig
from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig, head_sites
from tests.test_head_mediation import labelled_inputs

CONFIGS = (
    ContextGateConfig(
        query_layers="last", context_layers=[1], lambdas=[0.0, 1.0], modes=["decode", "patch"]
    ),
    HopfieldHeadsConfig(max_queries=4),
    HeadMediationConfig(top_k=2, n_random=2, max_queries=4, n_permutations=50),
)
KEYS = ("context_gate", "hopfield_heads", "head_mediation", "head_mediation_heads")


def _run_suite(ctx) -> dict[str, pd.DataFrame]:
    for config in CONFIGS:
        kind = {
            ContextGateConfig: "context_gate",
            HopfieldHeadsConfig: "hopfield_heads",
            HeadMediationConfig: "head_mediation",
        }[type(config)]
        out = get_probe(kind).run(config, ctx)
        ctx.tables.update(out if isinstance(out, dict) else {kind: out})
    return dict(ctx.tables)


@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_shared_pass_runs_each_prompt_once_and_gives_the_same_tables(tiny_handles, backend):
    handle = tiny_handles[backend]
    inputs = labelled_inputs(n=12)
    n, n_fit, n_ev = 12, len(inputs.fit), min(4, len(inputs.eval))
    layers = tuple(sorted({x for c in CONFIGS for x in c.needed_layers(handle.n_layers)}))

    handle.stats.reset()
    own = _run_suite(ProbeContext(handle, inputs, layers, n_boot=20, keep_states=True))
    rows_own = handle.stats.forward_rows

    handle.stats.reset()
    ctx = ProbeContext.for_probes(handle, inputs, CONFIGS, n_boot=20)
    assert ctx.keep_states and ctx.layers == layers
    shared = _run_suite(ctx)
    rows_shared = handle.stats.forward_rows

    # zero-shot and ICL prompts of every query, the flipped- and random-label prompts of the fit
    # queries (the gate's flipped and random_labels vectors), the permuted-label prompts of the
    # AIE's fit queries (where it chooses the top-AIE heads; also every label control's base
    # rows) and eval queries, and the random-label prompts of the Hopfield probe's eval queries
    # (its length-matched control): each once, nothing else
    assert rows_shared == 2 * n + 3 * n_fit + n_ev + n_ev
    # on their own: Hopfield's 2 x 4 prompts, the mediation probe's fit ICL + fit zero-shot +
    # fit permuted-label prompts and the clean eval ICL prompts once per ablation (zero-shot
    # mean, ICL mean), Hopfield's fit ICL prompts (where it selects heads) and the gate's fit
    # zero-shot prompts (where it scores lambda for the claims' choice)
    assert rows_own == rows_shared + 2 * n_ev + 3 * n_fit + 2 * n_ev + n_fit + n_fit

    for name in KEYS:
        a, b = own[name], shared[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for column in a.columns:
            if column in (
                *("value", "ci_low", "ci_high", "aie", "aie_ci_low", "aie_ci_high"),
                *("aie_fit", "label_attention", "label_attention_fit"),
            ):
                np.testing.assert_allclose(
                    a[column].to_numpy(float), b[column].to_numpy(float), atol=2e-5, err_msg=name
                )
            elif column not in ("rank_aie", "rank_label", "top_aie", "top_label"):  # near-ties
                assert a[column].tolist() == b[column].tolist(), (name, column)


def test_read_returns_the_declared_rows_in_order_with_states(tiny_handles):
    handle = tiny_handles["hf"]
    inputs = labelled_inputs(n=12)
    rows = inputs.eval.flip(0)[:5]  # not sorted: the read keeps the caller's order
    sites = head_sites((0, 1))
    ctx = ProbeContext(
        handle, inputs, (1,), reads=(SharedRead.of("icl", rows, sites, keep_states=True),)
    )
    shared = ctx.read("icl", rows, sites[:1], keep_states=True)
    alone = ProbeContext(handle, inputs, ()).read("icl", rows, sites[:1], keep_states=True)
    assert set(shared.captures) == {sites[0]}
    torch.testing.assert_close(shared[sites[0]], alone[sites[0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared.logits, alone.logits, atol=1e-4, rtol=0)
    covered = sorted(torch.cat([idx for idx, _ in shared.states]).tolist())
    assert covered == list(range(len(rows)))
    for idx, state in shared.states:  # each kept state's rows are the read's, at its positions
        lengths = inputs.icl.lengths[rows[idx]]
        assert torch.equal(state.lengths.cpu(), lengths.cpu())


def test_an_undeclared_read_runs_its_own_pass(tiny_handles):
    handle = tiny_handles["hf"]
    inputs = labelled_inputs(n=12)
    ctx = ProbeContext(handle, inputs, (1,))
    handle.stats.reset()
    ctx.read("zero", inputs.fit, ["resid.1"])  # nothing declared: no shared pass at all
    assert handle.stats.forward_rows == len(inputs.fit)
    assert ctx._groups is None


def test_shared_read_refuses_bad_values():
    with pytest.raises(
        ValueError, match="'few_shot'.*zero, icl, icl_flipped, icl_random, icl_permuted"
    ):
        SharedRead.of("few_shot", [0], ["resid.0"])
    with pytest.raises(ValueError, match="distinct"):
        SharedRead.of("icl", [1, 1], ["resid.0"])


def test_release_frees_what_only_finished_probes_read_and_tables_stay_the_same(tiny_handles):
    """After each probe the context drops the kept KV caches and sites no later probe
    declared; the suite's tables are those of a context that keeps everything, each prompt
    still runs once, and a late read of something released runs its own pass."""
    handle = tiny_handles["hf"]
    inputs = labelled_inputs(n=12)
    kinds = ("context_gate", "hopfield_heads", "head_mediation")

    def run(release: bool):
        ctx = ProbeContext.for_probes(handle, inputs, CONFIGS, n_boot=20)
        handle.stats.reset()
        kept_after = []
        for i, (kind, config) in enumerate(zip(kinds, CONFIGS, strict=True)):
            out = get_probe(kind).run(config, ctx)
            ctx.tables.update(out if isinstance(out, dict) else {kind: out})
            if release:
                ctx.release(list(CONFIGS[i + 1 :]))
            kept_after.append(
                sum(len(g.run.states or ()) for gs in ctx._groups.values() for g in gs)
            )
        return ctx, dict(ctx.tables), handle.stats.forward_rows, kept_after

    ctx_all, keep_all, rows_all, kept_all = run(release=False)
    held = {name for gs in ctx_all._groups.values() for g in gs for name in g.run.captures}
    assert any(name.startswith("head_scores.") for name in held)
    ctx, released, rows_released, kept = run(release=True)
    assert rows_released == rows_all
    assert kept[-1] == 0 and ctx.reads == () and not ctx.keep_states
    # Hopfield keeps no cache (its scores are computed in the pass): what release drops after
    # it are its patterns, queries and scores, not states
    assert kept[0] <= kept_all[0] and kept[1] <= kept_all[1], (kept, kept_all)
    left = {name for gs in ctx._groups.values() for g in gs for name in g.run.captures}
    assert not any(name.startswith(("head_scores.", "key_norm_max.")) for name in left)
    for name in KEYS:
        pd.testing.assert_frame_equal(keep_all[name], released[name])
    # Hopfield's sites were released with its caches: a read of them now runs its own pass
    rows = HopfieldHeadsConfig(max_queries=4).query_rows(inputs)
    sites = head_sites(tuple(range(handle.n_layers)))
    handle.stats.reset()
    late = ctx.read("icl", rows, sites, keep_states=True)
    assert handle.stats.forward_rows == len(rows) and late.states is not None

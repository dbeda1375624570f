"""Hopfield-heads and subspace probes: hand-built closed forms, the tiny Llama, the embedded model.

Attention patterns are checked against two independent computations: ``softmax(q k^T / sqrt(d))``
from separately captured ``q`` and ``k_rep``, and plain transformers' eager
``output_attentions``.
"""

import math

import numpy as np
import pytest
import torch

from cgar_interp.config import ConfigError, build
from cgar_interp.figures import FIGURES, figures_for
from cgar_interp.probes import ProbeContext, TaskInputs, get_probe
from cgar_interp.probes.hopfield_heads import (
    QUERY_METRICS,
    HeadReads,
    HopfieldHeadsConfig,
    head_metrics,
    label_positions,
    read_heads,
)
from cgar_interp.probes.subspace import SubspaceConfig
from cgar_interp.suite import load_suite
from cgar_interp.tokens import TokenBatch

from .probe_helpers import synthetic_inputs

CUE = [5, 6]  # the answer cue every label follows ("Sentiment:")
LABELS = [10, 11]


def cue_inputs(n: int = 10, seed: int = 0) -> TaskInputs:
    """Prompts with two demonstrations whose labels follow the cue, plus a decoy label token."""
    gen = torch.Generator().manual_seed(seed)

    def words(k):
        return torch.randint(20, 128, (k,), generator=gen).tolist()

    demo = [*words(3), 10, *words(2), *CUE, 10, *words(4), *CUE, 11]  # first 10 is no label
    zero, icl = [], []
    for i in range(n):
        query = [*words(2 + i % 3), *CUE]
        zero.append([1, *query])
        icl.append([1, *demo, *query])
    gold = torch.arange(n) % 2
    return TaskInputs(
        task="cue-tiny",
        classes=("neg", "pos"),
        label_ids=torch.tensor(LABELS),
        gold=gold,
        fit=torch.arange(0, n, 2),
        eval=torch.arange(n),
        zero=TokenBatch.from_sequences(zero),
        icl=TokenBatch.from_sequences(icl),
    )


def eager_last_row_attention(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """``[n_heads, L]`` attention of the last position, plain transformers (eager)."""
    with torch.no_grad():
        out = model(ids[None], output_attentions=True, use_cache=False)
    return out.attentions[layer][0, :, -1, :].float()


# --------------------------------------------------------------------------------------------
# closed forms on hand-built heads


def hand_reads(pattern_or_scores: torch.Tensor, *, scores: bool, scale=1.0, key_norm=1.0):
    """HeadReads of one prompt with one head from a pattern (scores = log p) or from scores."""
    if scores:
        s = pattern_or_scores.double()
        p = torch.softmax(s, -1)
    else:
        p = pattern_or_scores.double()
        s = p.log()
    length = p.shape[-1]
    return HeadReads(
        pattern=p.float()[None, None],
        scores=s.float()[None, None],
        key_norm_max=torch.tensor([[key_norm]]),
        lengths=torch.tensor([length]),
        scale=scale,
    )


def metrics_of(reads, config=None, ids=None):
    length = int(reads.lengths[0])
    batch = TokenBatch.from_sequences([ids or list(range(20, 20 + length))])
    return head_metrics(
        reads, batch, torch.tensor(LABELS), torch.tensor([0]), config or HopfieldHeadsConfig()
    )


def test_hand_built_pattern_entropy_and_mass_count():
    reads = hand_reads(torch.tensor([0.5, 0.25, 0.125, 0.125]), scores=False)
    out = metrics_of(reads)
    h = 0.5 * math.log(2) + 0.25 * math.log(4) + 2 * 0.125 * math.log(8)  # = 1.75 ln 2
    assert out["entropy"][0, 0] == pytest.approx(h, rel=1e-6)
    assert out["n_eff"][0, 0] == pytest.approx(2**1.75, rel=1e-6)
    assert out["k90"][0, 0] == 4  # 0.5, 0.75, 0.875 < 0.9 <= 1.0
    assert out["k90_frac"][0, 0] == 1.0
    assert out["regime"][0, 0] == "global"
    assert out["top_mass"][0, 0] == pytest.approx(0.5)
    assert out["sink_mass"][0, 0] == pytest.approx(0.5)
    assert out["delta_scaled"][0, 0] == pytest.approx(math.log(2), rel=1e-6)
    three_quarters = metrics_of(reads, HopfieldHeadsConfig(mass=0.75))
    assert three_quarters["k90"][0, 0] == 2
    assert three_quarters["regime"][0, 0] == "global"  # 2 >= 0.5 * 4
    half = metrics_of(reads, HopfieldHeadsConfig(mass=0.5))
    assert half["k90"][0, 0] == 1 and half["regime"][0, 0] == "single"
    mid = metrics_of(reads, HopfieldHeadsConfig(mass=0.75, global_min_fraction=0.75))
    assert mid["regime"][0, 0] == "metastable"


@pytest.mark.parametrize("q_scale, separated", [(1.0, False), (10.0, True)])
def test_delta_and_well_separated_on_hand_built_keys(q_scale, separated):
    beta = 0.5
    keys = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])
    q = torch.tensor([2.0, 0.0]) * q_scale
    dots = keys @ q  # q.k_j
    reads = hand_reads(beta * dots, scores=True, scale=beta, key_norm=float(keys.norm(dim=1).max()))
    out = metrics_of(reads)
    delta = float(dots[0] - dots[1])  # top key k0, runner-up k1
    assert out["delta"][0, 0] == pytest.approx(delta, rel=1e-6)
    assert out["delta_scaled"][0, 0] == pytest.approx(beta * delta, rel=1e-6)
    n, big_m = 4, 3.0  # Ramsauer: 2/(beta N) + ln(2 (N-1) N beta M^2) / beta
    threshold = 2 / (beta * n) + math.log(2 * (n - 1) * n * beta * big_m**2) / beta
    assert (delta >= threshold) == separated
    assert bool(out["well_separated"][0, 0]) == separated
    assert out["beta_eff"][0, 0] == pytest.approx(
        float((beta * dots).std(unbiased=False)), rel=1e-6
    )


def test_label_positions_follow_the_cue():
    ids = torch.tensor([1, 10, 3, *CUE, 10, 4, *CUE, 11, 7, *CUE])
    found = label_positions(ids, torch.tensor(LABELS), cue_tokens=2)
    assert {j: int(k) for j, k in enumerate(found) if k >= 0} == {5: 0, 9: 1}
    every = label_positions(ids, torch.tensor(LABELS), cue_tokens=0)
    assert {j for j, k in enumerate(every) if k >= 0} == {1, 5, 9}
    ends_in_label = torch.tensor([1, *CUE, 10, *CUE, 11])
    assert label_positions(ends_in_label, torch.tensor(LABELS), 2).tolist()[-1] == -1


# --------------------------------------------------------------------------------------------
# the tiny Llama


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_patterns_equal_softmax_of_captured_q_and_k_and_eager_attention(tiny_handles, backend):
    handle = tiny_handles[backend]
    model = tiny_handles["hf"].backend.hf_model
    inputs = cue_inputs(n=5)
    d_head = handle.arch.d_head
    reads = read_heads(handle, inputs.icl, (0, 1), batch_size=2)
    for layer in (0, 1):
        r = reads[layer]
        for i in range(inputs.icl.batch_size):
            length = int(inputs.icl.lengths[i])
            ids = inputs.icl.ids[i, :length]
            cap = handle.capture(ids[None], [f"q.{layer}", f"k_rep.{layer}"], positions=None)
            q, k = cap[f"q.{layer}"][0, -1].float(), cap[f"k_rep.{layer}"][0].float()
            recomputed = torch.softmax(torch.einsum("hd,khd->hk", q, k) / math.sqrt(d_head), -1)
            torch.testing.assert_close(r.pattern[i, :, :length], recomputed, atol=1e-5, rtol=0)
            eager = eager_last_row_attention(model, ids, layer)
            torch.testing.assert_close(r.pattern[i, :, :length], eager, atol=1e-5, rtol=0)
            assert float(r.pattern[i, :, length:].abs().sum()) == 0.0
            # scores and key norms come from the KV cache of the same pass: they equal the
            # keys captured at every position of a pass over this row alone
            scores = torch.einsum("hd,khd->hk", q, k) / math.sqrt(d_head)
            torch.testing.assert_close(r.scores[i, :, :length], scores, atol=1e-5, rtol=1e-5)
            assert bool(torch.isinf(r.scores[i, :, length:]).all())
            torch.testing.assert_close(
                r.key_norm_max[i], k.norm(dim=-1).amax(0), atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_key_scores_of_the_pass_equal_those_of_kept_caches_and_of_k_sites(tiny_handles, backend):
    """The cache read ``head_keys`` (scores and key norms computed from each batch's KV cache
    as the pass fills it, no cache kept) gives what the kept caches give afterwards, and what
    a pass of ``k`` at every position gives (a remote model's path)."""
    from cgar_interp.capture import cache_read_outputs, capture_many
    from cgar_interp.probes.hopfield_heads import head_sites, key_reads

    handle = tiny_handles[backend]
    batch = cue_inputs(n=5).icl
    blocks = (0, 1)
    in_pass = capture_many(
        handle, batch, head_sites(blocks), -1, batch_size=2, cache_reads=key_reads(blocks)
    )
    assert in_pass.states is None  # nothing of the cache outlives its batch
    assert set(cache_read_outputs(key_reads(blocks))) <= set(in_pass.captures)
    kept = capture_many(handle, batch, head_sites(blocks), -1, batch_size=2, keep_states=True)
    plain = capture_many(handle, batch, head_sites(blocks), -1, batch_size=2)
    assert plain.states is None and "head_scores.0" not in plain.captures
    paths = {
        "pass": read_heads(handle, batch, blocks, run=in_pass),
        "cache": read_heads(handle, batch, blocks, run=kept),
        "k sites": read_heads(handle, batch, blocks, run=plain),
    }
    for b in blocks:
        ref = paths["cache"][b]
        for name, got in paths.items():
            assert torch.equal(torch.isinf(got[b].scores), torch.isinf(ref.scores)), name
            finite = torch.isfinite(ref.scores)
            torch.testing.assert_close(got[b].scores[finite], ref.scores[finite], atol=1e-5, rtol=0)
            torch.testing.assert_close(got[b].key_norm_max, ref.key_norm_max, atol=1e-5, rtol=0)


def test_an_unknown_cache_read_is_refused_by_name(tiny_handles):
    from cgar_interp.capture import capture_many

    with pytest.raises(ValueError, match="unknown cache read 'head_kyes.0'.*head_keys"):
        capture_many(tiny_handles["hf"], cue_inputs(n=2).icl, [], -1, cache_reads=["head_kyes.0"])


@pytest.fixture(scope="module")
def hop_tables(tiny_handles):
    inputs = cue_inputs(n=10)
    ctx = ProbeContext(tiny_handles["transformer_lens"], inputs, (), n_boot=50)
    return inputs, get_probe("hopfield_heads").run(HopfieldHeadsConfig(), ctx)


def test_hopfield_table_is_tidy_and_consistent(hop_tables):
    _, tables = hop_tables
    table, regimes = tables["hopfield_heads"], tables["hopfield_regimes"]
    assert set(table.prompt_kind) == {"zero_shot", "icl", "icl_minus_zero"}
    assert set(table.layer) == {0, 1} and set(table["head"]) == {0, 1, 2, 3}
    assert (table.groupby("head").kv_head.nunique() == 1).all()
    assert table.groupby(["layer", "head", "prompt_kind", "metric"]).size().max() == 1
    assert table[table.metric == "recompute_err"].value.max() < 1e-5
    assert len(regimes) == 8
    assert (regimes.changed == (regimes.regime_zero != regimes.regime_icl)).all()
    fr = table[table.metric.str.startswith("frac_")].groupby(["layer", "head", "prompt_kind"])
    np.testing.assert_allclose(fr.value.sum(), 1.0)
    n_eff = table[(table.metric == "n_eff") & (table.prompt_kind != "icl_minus_zero")]
    keys = table[(table.metric == "n_keys") & (table.prompt_kind != "icl_minus_zero")]
    assert (n_eff.value.to_numpy() >= 1 - 1e-9).all()
    assert (n_eff.value.to_numpy() <= keys.value.to_numpy() + 1e-9).all()


def test_label_masses_match_eager_attention(hop_tables, tiny_handles):
    inputs, tables = hop_tables
    table = tables["hopfield_heads"]
    model = tiny_handles["hf"].backend.hf_model
    positions = {0: [9], 1: [16]}  # where the cue-following labels sit in every ICL prompt
    for layer in (0, 1):
        per_query, own = [], []
        for i in inputs.eval.tolist():
            ids = inputs.icl.ids[i, : inputs.icl.lengths[i]]
            att = eager_last_row_attention(model, ids, layer)  # [H, L]
            per_query.append(att[:, positions[0] + positions[1]].sum(-1))
            own.append(att[:, positions[int(inputs.gold[i])]].sum(-1))
        expected, expected_own = torch.stack(per_query).mean(0), torch.stack(own).mean(0)
        sel = table[(table.layer == layer) & (table.prompt_kind == "icl")]
        for h in range(4):
            row = sel[sel["head"] == h].set_index("metric").value
            assert row["label_mass"] == pytest.approx(float(expected[h]), abs=1e-5)
            assert row["gold_label_mass"] == pytest.approx(float(expected_own[h]), abs=1e-5)
            assert row["n_label_positions"] == 2
    zero = table[(table.prompt_kind == "zero_shot") & (table.metric == "label_mass")]
    assert (zero.value == 0).all()


def test_hopfield_reads_only_the_requested_blocks(tiny_handles):
    inputs = cue_inputs(n=4)
    ctx = ProbeContext(tiny_handles["hf"], inputs, (), n_boot=10)
    config = HopfieldHeadsConfig(layers=(-1,), max_queries=3)
    tables = get_probe("hopfield_heads").run(config, ctx)
    assert set(tables["hopfield_heads"].layer) == {1}
    assert set(tables["hopfield_heads"].n) == {3} and set(tables["hopfield_regimes"].n) == {3}
    with pytest.raises(ValueError, match=r"layers entry 2 is out of range .* 0\.\.1"):
        get_probe("hopfield_heads").run(HopfieldHeadsConfig(layers=(2,)), ctx)


def control_inputs(n: int = 12, seed: int = 1) -> TaskInputs:
    """:func:`cue_inputs`' prompts with disjoint fit (the first third) and eval queries, and the
    random-label control: the same demonstrations, each label drawn anew (here 11, 10)."""
    base = cue_inputs(n, seed)
    rand = []
    for i in range(n):
        ids = base.icl.ids[i, : base.icl.lengths[i]].tolist()
        ids[9], ids[16] = 11, 10  # the two cue-following labels (BOS at 0)
        rand.append(ids)
    return TaskInputs(
        task="cue-tiny",
        classes=base.classes,
        label_ids=base.label_ids,
        gold=base.gold,
        fit=torch.arange(n // 3),
        eval=torch.arange(n // 3, n),
        zero=base.zero,
        icl=base.icl,
        icl_random=TokenBatch.from_sequences(rand),
    )


@pytest.fixture(scope="module")
def control_run(tiny_handles):
    inputs = control_inputs()
    ctx = ProbeContext(tiny_handles["hf"], inputs, (), n_boot=40)
    config = HopfieldHeadsConfig(select_queries=3)
    tables = get_probe("hopfield_heads").run(config, ctx)
    return inputs, tables, ctx.take_query_table()


def test_hopfield_keeps_eval_and_fit_queries_apart(control_run):
    inputs, tables, per_query = control_run
    assert set(tables["hopfield_heads"].prompt_kind) == {
        "zero_shot",
        "icl",
        "icl_random_labels",
        "icl_minus_zero",
    }
    ev, fit = per_query[per_query.split == "eval"], per_query[per_query.split == "fit"]
    assert set(per_query.split) == {"eval", "fit"}
    for kind in ("zero_shot", "icl", "icl_random_labels"):
        part = ev[ev.prompt_kind == kind]
        assert set(part.metric) == set(QUERY_METRICS)
        assert set(part["query"]) == set(inputs.eval.tolist())
    # the fit queries: the first select_queries of them, ICL label masses only
    assert set(fit.prompt_kind) == {"icl"}
    assert set(fit.metric) == {"label_mass", "gold_label_mass"}
    assert set(fit["query"]) == set(inputs.fit[:3].tolist())
    assert len(fit) == 2 * 3 * 2 * 4  # metrics x queries x layers x heads
    assert tables["hopfield_heads"].n.max() == len(inputs.eval)


def test_hopfield_per_query_values_recompute_the_tidy_means(control_run):
    _, tables, per_query = control_run
    tidy = tables["hopfield_heads"].set_index(["layer", "head", "prompt_kind", "metric"]).value
    ev = per_query[per_query.split == "eval"]
    means = ev.groupby(["layer", "head", "prompt_kind", "metric"]).value.apply(
        lambda v: float(np.mean(v.to_numpy()))
    )
    assert len(means) == 2 * 4 * 3 * len(QUERY_METRICS)
    for key, value in means.items():
        assert tidy[key] == pytest.approx(value, abs=1e-12), key
    fr = ev[ev.metric.str.startswith("frac_")].groupby(["layer", "head", "prompt_kind", "query"])
    np.testing.assert_allclose(fr.value.sum(), 1.0)  # one regime per (head, query)


def test_hopfield_fit_label_masses_match_eager_attention(control_run, tiny_handles):
    inputs, _, per_query = control_run
    model = tiny_handles["hf"].backend.hf_model
    positions = {0: 9, 1: 16}  # class -> the cue-following label position in every ICL prompt
    fit = per_query[per_query.split == "fit"].set_index(["layer", "head", "metric", "query"])
    for i in inputs.fit[:3].tolist():
        ids = inputs.icl.ids[i, : inputs.icl.lengths[i]]
        for layer in (0, 1):
            att = eager_last_row_attention(model, ids, layer)  # [H, L]
            for h in range(4):
                label = float(att[h, [9, 16]].sum())
                gold = float(att[h, positions[int(inputs.gold[i])]])
                assert fit.value[(layer, h, "label_mass", i)] == pytest.approx(label, abs=1e-5)
                assert fit.value[(layer, h, "gold_label_mass", i)] == pytest.approx(gold, abs=1e-5)


def test_the_length_matched_control_has_the_icl_context_length(control_run, tiny_handles):
    inputs, _, per_query = control_run
    ev = per_query[(per_query.split == "eval") & (per_query.metric == "n_keys")]
    keys = ev.groupby(["prompt_kind", "query"]).value.first()
    np.testing.assert_array_equal(keys["icl"].to_numpy(), keys["icl_random_labels"].to_numpy())
    assert (keys["zero_shot"].to_numpy() < keys["icl"].to_numpy()).all()
    # its label masses are read on its own labels: class 1 at position 9, class 0 at 16
    model = tiny_handles["hf"].backend.hf_model
    ctl = per_query[(per_query.prompt_kind == "icl_random_labels") & (per_query.split == "eval")]
    ctl = ctl.set_index(["layer", "head", "metric", "query"]).value
    i = int(inputs.eval[0])
    att = eager_last_row_attention(
        model, inputs.icl_random.ids[i, : inputs.icl_random.lengths[i]], 1
    )
    own = {1: 9, 0: 16}[int(inputs.gold[i])]
    for h in range(4):
        assert ctl[(1, h, "gold_label_mass", i)] == pytest.approx(float(att[h, own]), abs=1e-5)


def test_hopfield_without_the_control_prompts_reads_two_kinds(tiny_handles):
    inputs = cue_inputs(n=4)  # no icl_random prompts
    config = HopfieldHeadsConfig(select_queries=0)
    assert config.kinds_read(inputs) == ("zero", "icl")
    assert "icl_random" in config.prompt_kinds()
    assert "icl_random" not in HopfieldHeadsConfig(length_control=False).prompt_kinds()
    ctx = ProbeContext(tiny_handles["hf"], inputs, (), n_boot=10)
    table = get_probe("hopfield_heads").run(config, ctx)["hopfield_heads"]
    assert set(table.prompt_kind) == {"zero_shot", "icl", "icl_minus_zero"}
    assert set(ctx.take_query_table().split) <= {"eval", "fit"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mass": 1.5}, r"mass=1\.5 is not valid: it must be in \(0, 1\]"),
        ({"mass": 0.0}, r"mass=0\.0 is not valid"),
        ({"single_max_keys": 0}, r"single_max_keys=0 is not valid: .* >= 1"),
        ({"global_min_fraction": 0.0}, r"global_min_fraction=0\.0 is not valid"),
        ({"label_cue_tokens": -1}, r"label_cue_tokens=-1 is not valid"),
        ({"queries": "test"}, r"queries='test' is not valid: use one of eval, all"),
        ({"layers": "paper"}, r"layers 'paper' is not valid: use all or upper_half"),
        ({"layers": ()}, r"layers is empty"),
        ({"max_queries": 0}, r"max_queries=0 is not valid: it must be an int >= 1 or None"),
        ({"select_queries": -1}, r"select_queries=-1 is not valid: it must be an int >= 0"),
        ({"length_control": "yes"}, r"length_control='yes' is not valid: it must be true"),
    ],
)
def test_hopfield_config_errors_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HopfieldHeadsConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 0}, r"top_k=0 is not valid"),
        ({"queries": "test"}, r"queries='test' is not valid: use one of all, eval, fit"),
        ({"readout": "embed"}, r"readout='embed' is not valid"),
        ({"n_random": 1}, r"n_random=1 is not valid: it must be an int >= 2"),
        ({"cv_folds": 1}, r"cv_folds=1 is not valid"),
        ({"probe_c": 0.0}, r"probe_c=0\.0 is not valid: it must be finite and > 0"),
        ({"n_resamples": 1}, r"n_resamples=1 is not valid"),
        ({"layers": "middle"}, r"layers='middle' is not valid"),
    ],
)
def test_subspace_config_errors_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SubspaceConfig(**kwargs)


def test_toml_keys_are_strict():
    with pytest.raises(ConfigError, match=r"mass=2\.0 is not valid"):
        build(HopfieldHeadsConfig, {"mass": 2})
    with pytest.raises(ConfigError, match="unknown key 'topk'.*did you mean 'top_k'"):
        build(SubspaceConfig, {"topk": 2})


@pytest.fixture(scope="module")
def sub_tables(tiny_handles):
    inputs = synthetic_inputs(n=12, controls=False)
    ctx = ProbeContext(tiny_handles["hf"], inputs, (0, 1, 2), n_boot=60)
    config = SubspaceConfig(cv_folds=2, n_random=50)
    return inputs, get_probe("subspace").run(config, ctx)["subspace"]


def test_subspace_table_shape_and_baselines(sub_tables):
    inputs, table = sub_tables
    assert table.groupby(["layer", "subject", "metric"]).size().max() == 1
    assert "shift" not in set(table[table.layer == 0].subject)  # zero shift at the embedding
    shift = table[(table.subject == "shift") & (table.layer == 1)].set_index("metric")
    for metric in ("participation_ratio", "effective_rank", "angle_min_deg", "var_top_k"):
        assert shift.loc[metric, "ci_low"] <= shift.loc[metric, "value"] + 1e-12
        assert shift.loc[metric, "value"] <= shift.loc[metric, "ci_high"] + 1e-12
    assert 1 <= shift.loc["participation_ratio", "value"] <= 12
    assert 0 <= shift.loc["angle_min_deg", "value"] <= shift.loc["angle_mean_deg", "value"] <= 90
    acc = table[table.metric == "probe_acc"]
    assert acc.value.between(0, 1).all()
    chance = acc[acc.subject == "chance"].value
    np.testing.assert_allclose(chance, 1 / 3)
    energy = table[(table.subject == "random") & (table.metric == "cbar_label_energy")]
    assert energy.value.iloc[0] == pytest.approx(3 / 64, abs=0.03)  # E = K / d_model


def test_cbar_label_energy_matches_an_independent_projection(sub_tables, tiny_handles):
    inputs, table = sub_tables
    model = tiny_handles["hf"].backend.hf_model
    layer = 1  # hidden_states[1] is the residual after one block (the last one is normed)

    def last_hidden(batch, i):
        ids = batch.ids[i, : batch.lengths[i]][None]
        with torch.no_grad():
            return model(ids, output_hidden_states=True).hidden_states[layer][0, -1].double()

    n = inputs.gold.shape[0]
    cbar = torch.stack([last_hidden(inputs.icl, i) - last_hidden(inputs.zero, i) for i in range(n)])
    cbar = cbar.mean(0).numpy()
    w = model.lm_head.weight.detach()[inputs.label_ids].double().numpy().T  # [d, K]
    coef, *_ = np.linalg.lstsq(w, cbar, rcond=None)
    expected = float(np.sum((w @ coef) ** 2) / np.sum(cbar**2))
    got = table[(table.subject == "shift") & (table.layer == layer)]
    got = got.set_index("metric").loc["cbar_label_energy", "value"]
    assert got == pytest.approx(expected, rel=1e-6)


def test_figures_carry_the_numbers(hop_tables, sub_tables):
    _, tables = hop_tables
    _, sub = sub_tables
    figs = figures_for({**tables, "subspace": sub})
    assert {"hopfield_heads-cue-tiny", "hopfield_regimes-cue-tiny"} <= set(figs)
    assert "subspace-synthetic-tiny" in figs
    heat = figs["hopfield_heads-cue-tiny"]
    texts = [t for trace in heat.data for row in trace.text for t in row]
    assert any("N_eff=" in t and "[" in t and "n=10" in t for t in texts)
    assert any("label_mass=" in t for t in texts)
    lines = figs["subspace-synthetic-tiny"]
    names = {trace.name for trace in lines.data}
    assert {"random: angle_min_deg", "h_icl: probe_acc", "chance: probe_acc"} <= names
    assert all(t.startswith("shift") for t in lines.data[0].text)
    for kind in ("hopfield_heads", "hopfield_regimes", "subspace"):
        assert kind in FIGURES


def test_suites_parse_and_name_the_probes():
    assert [p.kind for p in load_suite("hopfield").probes] == ["hopfield_heads"]
    assert [p.kind for p in load_suite("subspace").probes] == ["subspace"]


# --------------------------------------------------------------------------------------------
# the embedded model


@pytest.mark.integration
def test_probes_on_the_embedded_model(embedded_handles):
    from cgar_interp.suite import ProbeEntry, SuiteConfig
    from cgar_interp.tasks_bridge import prepare_task

    handle = embedded_handles["transformer_lens"]
    hop_config = HopfieldHeadsConfig(layers=(0, 18, 29))
    sub_config = SubspaceConfig(layers=(10, 30), cv_folds=2, n_random=50, n_resamples=100)
    suite = SuiteConfig(
        tasks=("sst2-mini",),
        n_fit=4,
        n_eval=4,
        n_boot=100,
        probes=(ProbeEntry("hopfield_heads", hop_config), ProbeEntry("subspace", sub_config)),
    )
    inputs = prepare_task(handle, suite, "sst2-mini").inputs
    ctx = ProbeContext(handle, inputs, suite.needed_layers(handle.n_layers), n_boot=100)

    # the probe's patterns equal plain transformers' eager attention, for a few heads
    model = embedded_handles["hf"].backend.hf_model
    batch = inputs.icl.select(inputs.eval[:2])
    reads = read_heads(handle, batch, (0, 18), batch_size=4)
    for i in range(2):
        length = int(batch.lengths[i])
        with torch.no_grad():
            out = model(batch.ids[i, :length][None], output_attentions=True, use_cache=False)
        for layer in (0, 18):
            eager = out.attentions[layer][0, :, -1, :].float()
            for h in (0, 4, 8):
                torch.testing.assert_close(
                    reads[layer].pattern[i, h, :length], eager[h], atol=1e-4, rtol=0
                )

    table = get_probe("hopfield_heads").run(hop_config, ctx)["hopfield_heads"]
    by = table.set_index(["layer", "head", "prompt_kind", "metric"]).value
    assert table[table.metric == "recompute_err"].value.max() < 1e-4
    icl = table[table.prompt_kind == "icl"]
    # one demonstration per class: exactly K = 2 label positions in every ICL prompt
    assert (icl[icl.metric == "n_label_positions"].value == 2).all()
    masses = icl[icl.metric.isin(["label_mass", "gold_label_mass", "sink_mass", "top_mass"])]
    assert masses.value.between(0, 1).all()
    assert (
        by.xs("gold_label_mass", level="metric") <= by.xs("label_mass", level="metric") + 1e-9
    ).all()
    # some mid-depth head reads the demonstrations' labels (label-token attention under context)
    assert icl[(icl.metric == "label_mass") & (icl.layer == 18)].value.max() > 0.3

    sub = get_probe("subspace").run(sub_config, ctx)["subspace"]
    acc = sub[(sub.metric == "probe_acc") & (sub.layer == 30)].set_index("subject").value
    assert acc.between(0, 1).all() and acc["chance"] == 0.5  # 4 + 4 queries of two classes
    for layer in (10, 30):
        shift = sub[(sub.subject == "shift") & (sub.layer == layer)].set_index("metric").value
        assert 1 <= shift["participation_ratio"] <= shift["effective_rank"] <= 8
        assert 0 <= shift["cbar_label_energy"] <= 1
        assert 0 <= shift["angle_min_deg"] <= shift["angle_mean_deg"] <= 90

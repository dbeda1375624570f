"""Head mediation: the mid-block resume step, AIE against full forwards, the join statistics."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from cgar_interp.capture import capture_many
from cgar_interp.models import Patch
from cgar_interp.prefix import resume_from_mid
from cgar_interp.probes import ProbeContext, TaskInputs, get_probe
from cgar_interp.probes.head_mediation import (
    HeadMediationConfig,
    head_effects,
    head_means,
    spearman_permutation,
    top_overlap,
)
from cgar_interp.tokens import TokenBatch
from tests.probe_helpers import synthetic_inputs

BACKENDS = ("hf", "transformer_lens", "nnsight")


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 128, (18,), generator=gen).tolist()
    rows = [
        [1, *prefix, *torch.randint(3, 128, (2 + i % 3,), generator=gen).tolist()] for i in range(5)
    ]
    return TokenBatch.from_sequences(rows)


def _replace_z(heads, mean):
    def replace(z):
        out = z.clone()
        out[:, :, list(heads)] = mean[list(heads)].to(z.dtype)
        return out

    return replace


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", [0, 1])
def test_resume_from_mid_equals_a_full_forward_z_patch(tiny_handles, prompts, backend, layer):
    """Replacing head h's output at -1 by its mean, via the kept cache, equals a full z patch."""
    handle = tiny_handles[backend]
    run = capture_many(
        handle,
        prompts,
        [f"resid_mid.{layer}", f"z.{layer}", f"head_out.{layer}"],
        -1,
        batch_size=2,
        keep_states=True,
    )
    mean_z = run[f"z.{layer}"].float().mean(0)  # [H, d_head]
    mean_out = run[f"head_out.{layer}"].float().mean(0)  # [H, d_model]
    n_heads = handle.arch.n_heads
    got = torch.zeros(n_heads, prompts.batch_size, 128)
    for rows, state in run.states:
        mid = run[f"resid_mid.{layer}"][rows].float()
        out = run[f"head_out.{layer}"][rows].float().transpose(0, 1)
        got[:, rows] = resume_from_mid(handle, state, layer, mid[None] + mean_out[:, None] - out)
    for h in range(n_heads):
        full = handle.run_with_patches(
            prompts, [Patch(f"z.{layer}", -1, _replace_z([h], mean_z))], logits_positions=-1
        ).logits
        assert (got[h] - full.float()).abs().max() < 1e-5, (backend, layer, h)
    # the identity replacement gives the clean logits
    for rows, state in run.states:
        mid = run[f"resid_mid.{layer}"][rows].float()
        same = resume_from_mid(handle, state, layer, mid[None])[0]
        assert (same - run.logits[rows].float()).abs().max() < 1e-5


def labelled_inputs(n: int = 12, n_classes: int = 3, seed: int = 0) -> TaskInputs:
    """Random-token prompts whose demonstrations end in ``cue label`` like real ICL prompts."""
    gen = torch.Generator().manual_seed(seed)
    label_ids = torch.tensor([10 + k for k in range(n_classes)])
    cue = [5, 6]

    def demos(labels):
        out = []
        for label in labels:
            out += [*torch.randint(20, 128, (3,), generator=gen).tolist(), *cue, 10 + label]
        return out

    demo, relabelled = demos(range(n_classes)), demos([1, 2, 0][:n_classes])
    # wrong labels: [1, 2, 0] is both a derangement (flipped) and a permutation of the prompt's
    # labels (permuted); random labels, on the same tokens, may repeat or be right
    randomised = list(relabelled)
    for j, label in enumerate([0, 0, 2][:n_classes]):
        randomised[6 * j + 5] = 10 + label
    zero, icl, wrong, rand = [], [], [], []
    for i in range(n):
        query = [*torch.randint(20, 128, (2 + i % 3,), generator=gen).tolist(), *cue]
        zero.append([1, *query])
        icl.append([1, *demo, *query])
        wrong.append([1, *relabelled, *query])
        rand.append([1, *randomised, *query])
    perm = torch.randperm(n, generator=gen)
    return TaskInputs(
        task="labelled-tiny",
        classes=tuple(f"c{k}" for k in range(n_classes)),
        label_ids=label_ids,
        gold=torch.arange(n) % n_classes,
        fit=perm[: n // 3].sort().values,
        eval=perm[n // 3 :].sort().values,
        zero=TokenBatch.from_sequences(zero),
        icl=TokenBatch.from_sequences(icl),
        icl_flipped=TokenBatch.from_sequences(wrong),
        icl_random=TokenBatch.from_sequences(rand),
        icl_permuted=TokenBatch.from_sequences(wrong),
    )


def _run(handle, config, inputs=None, seed=0):
    inputs = inputs or labelled_inputs()
    ctx = ProbeContext(
        handle, inputs, config.needed_layers(2), n_boot=20, seed=seed, keep_states=True
    )
    return get_probe("head_mediation").run(config, ctx), inputs


@pytest.fixture(scope="module")
def tiny_result(tiny_handles):
    # top_k = 2: on 2 blocks x 4 heads the two tested sets leave heads for matched draws
    config = HeadMediationConfig(top_k=2, n_random=3, max_queries=6, n_permutations=200)
    return _run(tiny_handles["hf"], config)


def test_probe_tables_have_the_right_shapes(tiny_result):
    tables, inputs = tiny_result
    table, heads, join = (
        tables["head_mediation"],
        tables["head_mediation_heads"],
        tables["head_mediation_join"],
    )
    assert set(table.part) == {"aie", "function_vector", "ablation", "baseline"}
    assert np.isfinite(table.value).all()
    aie = table[table.part == "aie"]
    assert len(aie) == 2 * 4 and set(aie.n) == {6}
    assert len(heads) == 8 and sorted(heads.rank_aie) == list(range(1, 9))
    assert (heads.label_attention > 0).all() and (heads.label_attention <= 1 + 1e-6).all()
    fv = table[(table.part == "function_vector") & (table.metric == "vocab_correct")]
    assert sorted(fv.layer.unique()) == [0, 1, 2] and set(fv.set) == {"top_aie", "top_label"}
    assert set(fv.n) == {len(inputs.eval)}
    ablation = table[table.part == "ablation"]
    assert set(ablation.set) == {
        "clean",
        "top_aie",
        "top_label",
        "random_top_aie",
        "random_top_label",
    }
    assert set(ablation.ablation) == {"none", "zero_mean", "icl_mean"}
    draws = ablation[ablation.set == "random_top_label"]
    assert sorted(draws["draw"].unique()) == [-1, 0, 1, 2]  # the mean over draws, each draw
    assert len(join) == 1 and join.overlap_chance.iloc[0] == pytest.approx(8 * 8 / 8)
    assert join.selected_on.iloc[0] == "fit" and join.random_top_label_n_draws.iloc[0] == 3
    assert set(heads.selected_on) == {"fit"} and heads.top_aie.sum() == heads.top_label.sum() == 2
    assert -1 <= join.spearman_rho.iloc[0] <= 1 and 0 < join.spearman_p.iloc[0] <= 1
    assert join.corrupted.iloc[0] == "permuted" and set(heads.corrupted) == {"permuted"}


def test_aie_of_one_head_matches_full_forwards(tiny_handles, tiny_result):
    """Recompute one head's AIE with plain full-forward z patches, no KV cache."""
    tables, inputs = tiny_result
    handle = tiny_handles["hf"]
    layer, head = 1, 2
    ev = inputs.eval[:6]
    fit_z = handle.capture(inputs.icl.select(inputs.fit), [f"z.{layer}"], -1)[f"z.{layer}"]
    mean_z = fit_z.float().mean(0)
    corrupted = inputs.icl_permuted.select(ev)  # the default corrupted runs
    gold = inputs.label_ids[inputs.gold[ev]]
    rows = torch.arange(len(ev))
    clean = torch.softmax(handle.logits(corrupted, positions=-1).float(), -1)[rows, gold]
    patched_logits = handle.run_with_patches(
        corrupted, [Patch(f"z.{layer}", -1, _replace_z([head], mean_z))], logits_positions=-1
    ).logits
    patched = torch.softmax(patched_logits.float(), -1)[rows, gold]
    expected = float((patched - clean).mean())
    heads = tables["head_mediation_heads"].set_index(["layer", "head"])
    assert heads.loc[(layer, head), "aie"] == pytest.approx(expected, abs=1e-5)
    # the AIE that chooses the top-AIE heads: the same on the fit queries' corrupted prompts
    fit = inputs.fit[:6]
    corrupted = inputs.icl_permuted.select(fit)
    gold = inputs.label_ids[inputs.gold[fit]]
    rows = torch.arange(len(fit))
    clean = torch.softmax(handle.logits(corrupted, positions=-1).float(), -1)[rows, gold]
    patched_logits = handle.run_with_patches(
        corrupted, [Patch(f"z.{layer}", -1, _replace_z([head], mean_z))], logits_positions=-1
    ).logits
    patched = torch.softmax(patched_logits.float(), -1)[rows, gold]
    assert heads.loc[(layer, head), "aie_fit"] == pytest.approx(
        float((patched - clean).mean()), abs=1e-5
    )


def _parse_heads(names: str) -> list[tuple[int, int]]:
    """``"L0H1,L1H3"`` -> ``[(0, 1), (1, 3)]``."""
    return [tuple(int(x) for x in n[1:].split("H")) for n in names.split(",") if n]


@pytest.mark.parametrize("ablation, source", [("zero_mean", "zero"), ("icl_mean", "icl")])
def test_ablation_matches_full_forwards(tiny_handles, tiny_result, ablation, source):
    """The tested sets and one matched random draw, recomputed with plain full-forward z
    patches over several blocks, z := the mean over the fit queries' zero-shot / ICL prompts."""
    tables, inputs = tiny_result
    handle = tiny_handles["hf"]
    table = tables["head_mediation"]
    join = tables["head_mediation_join"].iloc[0]
    ev = inputs.eval[:6]
    fit_z = handle.capture(getattr(inputs, source).select(inputs.fit), ["z.0", "z.1"], -1)
    clean_batch = inputs.icl.select(ev)
    gold = inputs.label_ids[inputs.gold[ev]]
    rows = torch.arange(len(ev))

    def label_mass(logits):
        p = torch.softmax(logits.float(), -1)
        return p[:, inputs.label_ids].sum(-1), p[rows, gold]

    clean_mass, clean_gold = label_mass(handle.logits(clean_batch, positions=-1))
    cases = {
        ("top_aie", -1): join.top_aie,
        ("top_label", -1): join.top_label,
        ("random_top_label", 1): join.random_top_label_sets.split(";")[1],
    }
    assert len({frozenset(_parse_heads(v)) for v in cases.values()}) == 3
    for (set_name, draw), names in cases.items():
        by_block = {}
        for layer, head in _parse_heads(names):
            by_block.setdefault(layer, []).append(head)
        patches = [
            Patch(f"z.{b}", -1, _replace_z(hs, fit_z[f"z.{b}"].float().mean(0)))
            for b, hs in by_block.items()
        ]
        logits = handle.run_with_patches(clean_batch, patches, logits_positions=-1).logits
        mass, gold_p = label_mass(logits)
        got = table[
            (table.part == "ablation")
            & (table.set == set_name)
            & (table.ablation == ablation)
            & (table["draw"] == draw)
        ].set_index("metric")
        expected = float((mass - clean_mass).mean())
        assert got.value["label_mass_drop"] == pytest.approx(expected, abs=1e-5), set_name
        expected = float((gold_p - clean_gold).mean())
        assert got.value["gold_mass_drop"] == pytest.approx(expected, abs=1e-5), set_name


def test_label_attention_is_read_from_the_hopfield_table(tiny_handles):
    """With hopfield_heads run first, the join uses its ICL label mass, head by head; that
    table's values equal this probe's own label attention on the same prompts."""
    from cgar_interp.probes.head_mediation import label_attention
    from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig

    handle = tiny_handles["hf"]
    inputs = labelled_inputs()
    ctx = ProbeContext(handle, inputs, (0, 1, 2), n_boot=20, keep_states=True)
    hop = get_probe("hopfield_heads").run(HopfieldHeadsConfig(max_queries=6), ctx)
    ctx.tables.update(hop)
    config = HeadMediationConfig(top_k=2, n_random=2, max_queries=6, n_permutations=50)
    tables = get_probe("head_mediation").run(config, ctx)
    join, heads = tables["head_mediation_join"], tables["head_mediation_heads"]
    assert join.label_attention_source.iloc[0].startswith("hopfield_heads")
    hop_rows = hop["hopfield_heads"]
    hop_rows = hop_rows[(hop_rows.prompt_kind == "icl") & (hop_rows.metric == "label_mass")]
    merged = heads.merge(hop_rows[["layer", "head", "value"]], on=["layer", "head"])
    assert len(merged) == len(heads) == 8
    assert np.allclose(merged.label_attention, merged.value, atol=1e-12)
    # the probe's own computation on the Hopfield probe's queries gives the same numbers
    batch = inputs.icl.select(inputs.eval[:6])
    _, patterns = head_means(handle, batch, (0, 1), "head_out", 4, with_patterns=True)
    for b in (0, 1):
        own = label_attention(patterns[b], batch, inputs.label_ids, 2)
        expected = merged[merged.layer == b].sort_values("head").value.to_numpy()
        assert np.allclose(own.numpy(), expected, atol=1e-5)


def test_suite_wants_hopfield_heads_first_with_the_same_label_positions():
    from cgar_interp.suite import ConfigError, parse_suite

    both = [{"kind": "hopfield_heads"}, {"kind": "head_mediation"}]
    parse_suite({"tasks": ["sst2-mini"], "probe": both})
    with pytest.raises(ConfigError, match="list the hopfield_heads probe .* before"):
        parse_suite({"tasks": ["sst2-mini"], "probe": both[::-1]})
    cue = [{"kind": "hopfield_heads", "label_cue_tokens": 1}, {"kind": "head_mediation"}]
    with pytest.raises(ConfigError, match="label_cue_tokens=2 differs from hopfield_heads' 1"):
        parse_suite({"tasks": ["sst2-mini"], "probe": cue})


def test_zeroed_head_has_aie_zero(tmp_path):
    """A head whose output is zero has a_lh = head_out = 0: the patch changes nothing."""
    from cgar_interp import load_model
    from tests.conftest import build_tiny_llama

    handle = load_model(build_tiny_llama(tmp_path / "tiny"), backend="hf")  # not the shared one
    o_proj = handle.backend.hf_model.model.layers[0].self_attn.o_proj
    d_head = handle.arch.d_head
    with torch.no_grad():
        o_proj.weight[:, d_head : 2 * d_head] = 0  # head 1 of block 0 writes nothing
    config = HeadMediationConfig(
        layers=(0,), top_k=1, n_random=0, max_queries=4, fv_layers=(1,), n_permutations=10
    )
    tables, _ = _run(handle, config)
    heads = tables["head_mediation_heads"].set_index("head")
    assert abs(heads.loc[1, "aie"]) < 1e-7
    assert abs(heads.loc[1, "aie_ci_low"]) < 1e-7 and abs(heads.loc[1, "aie_ci_high"]) < 1e-7
    assert (heads.drop(index=1).aie.abs() > 1e-6).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_patching_a_prompts_own_mean_into_it_changes_nothing(tiny_handles, backend):
    """One clean prompt as the fit set: a_lh is its own head output, the logits stay put."""
    handle = tiny_handles[backend]
    inputs = labelled_inputs()
    one = inputs.icl.select(inputs.fit[:1])
    means, _ = head_means(handle, one, (0, 1), "head_out", 4)
    logits = []
    effects, base = head_effects(
        handle,
        one,
        inputs.fit[:1],
        (0, 1),
        means,
        lambda lg, idx: logits.append(lg) or lg.amax(-1),
        4,
    )
    clean = logits[0]  # the capture pass, then one [n_heads, 1, vocab] per block
    for patched in logits[1:]:
        assert (patched - clean).abs().max() < 1e-5
    assert all(e.abs().max() < 1e-5 for e in effects.values())


def test_spearman_and_overlap_match_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    y[3] = y[4]  # a tie
    rho, p = spearman_permutation(x, y, 2000, seed=0)
    ref = spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic, abs=1e-12)
    assert p == pytest.approx(ref.pvalue, abs=0.02)
    _, p_null = spearman_permutation(x, rng.normal(size=40), 500, seed=1)
    assert p_null > 0.01
    assert top_overlap(np.arange(10.0), np.arange(10.0), 3) == (3, 0.9)
    assert top_overlap(np.arange(10.0), -np.arange(10.0), 3) == (0, 0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": "lower"}, "layers 'lower' is not valid"),
        ({"layers": ()}, "layers is empty"),
        ({"top_k": 0}, "top_k=0 is not valid"),
        ({"n_random": -1}, "n_random=-1"),
        ({"max_queries": 0}, "max_queries=0"),
        ({"n_permutations": 0}, "n_permutations=0"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadMediationConfig(**kwargs)


def test_config_asks_for_its_corrupted_prompts_and_kept_states():
    config = HeadMediationConfig()
    assert config.corrupted == "permuted"
    assert config.prompt_kinds() == {"zero", "icl", "icl_permuted"} and config.resumes_zero_shot
    for corrupted, kind in (("random_labels", "icl_random"), ("flipped", "icl_flipped")):
        assert config.__class__(corrupted=corrupted).prompt_kinds() == {"zero", "icl", kind}
    assert config.needed_layers(30) == tuple(range(31))
    with pytest.raises(ValueError, match="out of range"):
        HeadMediationConfig(layers=(40,)).blocks(30)


def test_config_refuses_an_unknown_corrupted_kind():
    with pytest.raises(ValueError, match="corrupted='shuffled'.*permuted, random_labels, flipped"):
        HeadMediationConfig(corrupted="shuffled")


def test_config_reads_the_chosen_corrupted_prompts():
    inputs = labelled_inputs()
    for corrupted, kind in (
        ("permuted", "icl_permuted"),
        ("random_labels", "icl_random"),
        ("flipped", "icl_flipped"),
    ):
        reads = HeadMediationConfig(corrupted=corrupted).shared_reads(inputs, 2)
        controls = [r for r in reads if r.kind.startswith("icl_")]
        # the fit queries' (where the top-AIE heads are chosen) and the eval queries'
        assert [r.kind for r in controls] == [kind, kind]
        assert all(r.keep_states for r in controls)
        assert [r.rows for r in controls] == [
            tuple(inputs.fit[:24].tolist()),
            tuple(inputs.eval[:24].tolist()),
        ]


def test_probe_refuses_inputs_without_its_corrupted_prompts(tiny_handles):
    with pytest.raises(ValueError, match="'icl_permuted' prompts"):
        _run(tiny_handles["hf"], HeadMediationConfig(), synthetic_inputs(controls=False))
    inputs = replace(labelled_inputs(), icl_random=None)
    with pytest.raises(ValueError, match="'icl_random' prompts.*corrupted='random_labels'"):
        _run(tiny_handles["hf"], HeadMediationConfig(corrupted="random_labels"), inputs)


@pytest.mark.integration
def test_head_mediation_on_the_embedded_model(embedded_handles):
    from cgar_interp.suite import ProbeEntry, SuiteConfig
    from cgar_interp.tasks_bridge import prepare_task

    handle = embedded_handles["hf"]
    config = HeadMediationConfig(
        layers=(16, 17, 18, 20),
        top_k=5,
        n_random=3,
        max_queries=8,
        fv_layers=(18, 22),
        n_permutations=200,
    )
    suite = SuiteConfig(
        tasks=("sst2-mini",),
        n_fit=8,
        n_eval=8,
        n_boot=100,
        probes=(ProbeEntry("head_mediation", config),),
    )
    prepared = prepare_task(handle, suite, "sst2-mini")
    assert prepared.inputs.icl_permuted is not None
    assert prepared.inputs.icl_flipped is None and prepared.inputs.icl_random is None
    ctx = ProbeContext(
        handle,
        prepared.inputs,
        config.needed_layers(handle.n_layers),
        n_boot=100,
        keep_states=True,
    )
    tables = get_probe("head_mediation").run(config, ctx)
    heads = tables["head_mediation_heads"]
    assert len(heads) == 4 * handle.arch.n_heads
    assert np.isfinite(heads.aie).all()
    assert isinstance(tables["head_mediation_join"], pd.DataFrame)


def test_figures_build_from_the_tables(tiny_result):
    from cgar_interp.figures import FIGURES, figures_for

    tables, inputs = tiny_result
    figs = figures_for(tables)
    assert {f"head_mediation-{inputs.task}", f"head_mediation_heads-{inputs.task}"} <= set(figs)
    heat, scatter = figs[f"head_mediation_heads-{inputs.task}"].data
    assert len(heat.z) == 2 and len(heat.z[0]) == 4
    assert all(t.startswith("L") and "AIE=" in t for t in scatter.text)
    assert "head_mediation" in FIGURES

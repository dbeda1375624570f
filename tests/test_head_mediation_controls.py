"""Head mediation's selection and controls: heads chosen on the fit queries only, random sets
matched by layer and disjoint from the tested heads, the ICL-mean ablation, and the per-query
values claim 8 reads (each checked against an independent recomputation)."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgar_interp.probes import ProbeContext, TaskInputs, get_probe
from cgar_interp.probes.head_mediation import (
    HeadMediationConfig,
    ablation_patches,
    draw_test,
    head_means,
    layer_histogram,
    matched_random_sets,
)
from cgar_interp.tokens import TokenBatch
from tests.test_head_mediation import labelled_inputs

CONFIG = HeadMediationConfig(top_k=2, n_random=4, max_queries=6, n_permutations=50)


def _run(handle, inputs, config=CONFIG):
    ctx = ProbeContext(handle, inputs, config.needed_layers(2), n_boot=20, keep_states=True)
    tables = get_probe("head_mediation").run(config, ctx)
    return tables, ctx.take_query_table()


def _heads(names: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in n[1:].split("H")) for n in names.split(",") if n]


@pytest.fixture(scope="module")
def result(tiny_handles):
    inputs = labelled_inputs()
    tables, queries = _run(tiny_handles["hf"], inputs)
    return tables, queries, inputs


# --------------------------------------------------------------------------------------------
# matched random sets


@settings(max_examples=200, deadline=None)
@given(
    n_blocks=st.integers(1, 5),
    n_heads=st.integers(1, 8),
    data=st.data(),
)
def test_matched_random_sets_have_the_layer_histogram_and_avoid_the_tested_heads(
    n_blocks, n_heads, data
):
    every = [(b, h) for b in range(n_blocks) for h in range(n_heads)]
    tested = data.draw(st.lists(st.sampled_from(every), min_size=1, unique=True))
    other = data.draw(st.lists(st.sampled_from(every), unique=True))
    exclude = set(tested) | set(other)
    seed = data.draw(st.integers(0, 2**16))
    draws = matched_random_sets(tested, exclude, n_heads, 5, np.random.default_rng(seed))
    histogram = {}
    for b, _ in tested:
        histogram[b] = histogram.get(b, 0) + 1
    free = {b: n_heads - sum(1 for x, _ in exclude if x == b) for b in histogram}
    own = {b: n_heads - sum(1 for x, _ in tested if x == b) for b in histogram}
    if any(own[b] < c for b, c in histogram.items()):
        assert draws == []  # no matched set exists, even with the other set's heads
        return
    assert len(draws) == 5
    for draw in draws:
        assert len(set(draw)) == len(draw) == len(tested)
        assert not set(draw) & set(tested)  # never a tested head
        for b, h in draw:  # the other set's heads only where the block has too few others
            if (b, h) in exclude:
                assert free[b] < histogram[b]
        assert all(0 <= h < n_heads for _, h in draw)
        counts = {}
        for b, _ in draw:
            counts[b] = counts.get(b, 0) + 1
        assert counts == histogram


def test_matched_random_sets_cover_the_free_heads_of_each_block():
    """Over many draws every free head of a tested block is drawn, and no other head."""
    tested = [(1, 0), (1, 1), (3, 2)]
    exclude = {*tested, (1, 5), (3, 0)}
    draws = matched_random_sets(tested, exclude, 6, 400, np.random.default_rng(0))
    seen = {x for draw in draws for x in draw}
    assert seen == {(1, 2), (1, 3), (1, 4), (3, 1), (3, 3), (3, 4), (3, 5)}


def test_draw_test_matches_a_direct_count():
    rng = np.random.default_rng(3)
    draws = rng.normal(-0.1, 0.05, size=50)
    for tested in (-0.3, -0.1, 0.2, float(draws[7])):
        drops, tested_drop = -draws, -tested
        percentile, p = draw_test(tested, draws)
        assert percentile == pytest.approx(100 * np.mean(drops < tested_drop))
        assert p == pytest.approx((1 + np.sum(drops >= tested_drop)) / 51)
    assert all(np.isnan(draw_test(-0.2, np.array([]))))


def test_the_probes_random_sets_are_matched_and_disjoint(result):
    tables, _, _ = result
    join = tables["head_mediation_join"].iloc[0]
    tested = set(_heads(join.top_aie)) | set(_heads(join.top_label))
    for name in ("top_aie", "top_label"):
        draws = [_heads(s) for s in join[f"random_{name}_sets"].split(";")]
        assert len(draws) == join[f"random_{name}_n_draws"] == CONFIG.n_random
        for draw in draws:
            assert layer_histogram(draw) == layer_histogram(_heads(join[name]))
            assert not set(draw) & tested


# --------------------------------------------------------------------------------------------
# selection on the fit queries only


def _mix(fit_from: TaskInputs, eval_from: TaskInputs) -> TaskInputs:
    """``fit_from``'s prompts on its fit queries, ``eval_from``'s on every other query."""
    fit = set(fit_from.fit.tolist())

    def batch(name):
        a, b = getattr(fit_from, name), getattr(eval_from, name)
        rows = [
            (a if i in fit else b).ids[i, : int((a if i in fit else b).lengths[i])].tolist()
            for i in range(a.batch_size)
        ]
        return TokenBatch.from_sequences(rows)

    return TaskInputs(
        task=fit_from.task,
        classes=fit_from.classes,
        label_ids=fit_from.label_ids,
        gold=fit_from.gold,
        fit=fit_from.fit,
        eval=fit_from.eval,
        zero=batch("zero"),
        icl=batch("icl"),
        **{kind: batch(kind) for kind in ("icl_flipped", "icl_random", "icl_permuted")},
    )


def test_changing_the_eval_queries_changes_no_choice(tiny_handles, result):
    """Other prompts on every eval query (other demonstrations, other queries): the eval AIE
    changes, the chosen heads, the fit values behind them and the FV's best layer do not."""
    tables, _, inputs = result
    other = _mix(inputs, labelled_inputs(seed=5))
    assert not torch.equal(other.icl.ids, inputs.icl.ids)
    changed, _ = _run(tiny_handles["hf"], other)
    a, b = tables["head_mediation_heads"], changed["head_mediation_heads"]
    assert (a.aie - b.aie).abs().max() > 1e-4  # the eval values did change
    np.testing.assert_allclose(a.aie_fit, b.aie_fit, atol=1e-6)
    np.testing.assert_allclose(a.label_attention_fit, b.label_attention_fit, atol=1e-6)
    ja, jb = tables["head_mediation_join"].iloc[0], changed["head_mediation_join"].iloc[0]
    for column in ("top_aie", "top_label", "fv_best_layer", "fv_top_label_best_layer"):
        assert ja[column] == jb[column], column
    assert ja.random_top_label_sets == jb.random_top_label_sets


def test_chosen_heads_are_the_top_fit_means_of_the_per_query_table(result):
    """The top sets recomputed from the per-query fit values (pandas, not the probe)."""
    tables, queries, inputs = result
    join = tables["head_mediation_join"].iloc[0]
    fit = queries[queries.split == "fit"]
    assert set(fit["query"]) <= set(inputs.fit.tolist())
    for metric, name in (("aie", "top_aie"), ("label_attention", "top_label")):
        means = fit[fit.metric == metric].groupby(["layer", "head"])["value"].mean()
        top = means.sort_values(ascending=False, kind="stable").index[: CONFIG.top_k]
        assert sorted((int(b), int(h)) for b, h in top) == _heads(join[name]), name
    # the FV's best layer: the fit queries' accuracy (then label mass), lowest layer on ties
    fv = fit[(fit.part == "function_vector") & (fit.set == "top_aie")]
    acc = fv[fv.metric == "vocab_correct"].groupby("layer")["value"].mean()
    mass = fv[fv.metric == "label_mass"].groupby("layer")["value"].mean()
    best = max(acc.index, key=lambda layer: (acc[layer], mass[layer], -layer))
    assert join.fv_best_layer == best and join.fv_best_layer_selected_on == "fit"
    tidy = tables["head_mediation"]
    at = tidy[
        (tidy.part == "function_vector")
        & (tidy.set == "top_aie")
        & (tidy.metric == "vocab_correct")
        & (tidy.layer == best)
    ]
    assert join.fv_best_vocab_correct == pytest.approx(float(at.value.iloc[0]))


# --------------------------------------------------------------------------------------------
# the ICL-mean ablation


@pytest.mark.parametrize("backend", ["hf", "transformer_lens"])
def test_icl_mean_ablation_of_a_prompts_own_mean_changes_nothing(tiny_handles, backend):
    """With one prompt as the fit set, its ICL mean z is its own z: ablating every head to it
    (a full forward with the probe's z patches) leaves the logits unchanged; the zero-shot
    mean does not."""
    handle = tiny_handles[backend]
    inputs = labelled_inputs()
    one = inputs.icl.select(inputs.fit[:1])
    every = [[(b, h) for b in (0, 1) for h in range(handle.arch.n_heads)]]
    clean = handle.logits(one, positions=-1).float()
    for source, unchanged in ((one, True), (inputs.zero.select(inputs.fit[:1]), False)):
        means, _ = head_means(handle, source, (0, 1), "z", 4)
        _, patches = ablation_patches(every, means, handle.arch.n_heads)
        # the probe's patch sees [rows, n_var, heads, d_head]; a full forward's [rows, 1, ...]
        logits = handle.run_with_patches(one, patches, logits_positions=-1).logits.float()
        assert ((logits - clean).abs().max() < 1e-5) == unchanged


def test_icl_mean_ablation_is_null_when_every_icl_prompt_is_the_same(tiny_handles):
    """Every query has the same ICL prompt: the fit queries' ICL mean z is each eval prompt's
    own z, so every ICL-mean ablation (tested sets, random draws) changes nothing per query,
    while the zero-shot-mean ablation does."""
    base = labelled_inputs()
    row = lambda batch: batch.ids[0, : int(batch.lengths[0])].tolist()  # noqa: E731
    n = base.gold.shape[0]
    inputs = TaskInputs(
        task=base.task,
        classes=base.classes,
        label_ids=base.label_ids,
        gold=base.gold,
        fit=base.fit,
        eval=base.eval,
        zero=base.zero,
        icl=TokenBatch.from_sequences([row(base.icl)] * n),
        icl_permuted=TokenBatch.from_sequences([row(base.icl_permuted)] * n),
    )
    _, queries = _run(tiny_handles["hf"], inputs)
    drops = queries[(queries.part == "ablation") & queries.metric.str.endswith("_drop")]
    icl = drops[drops.ablation == "icl_mean"]
    zero = drops[drops.ablation == "zero_mean"]
    assert len(icl) == len(zero) > 0 and set(icl.split) == {"eval"}
    assert icl.value.abs().max() < 1e-5
    assert zero[zero.metric == "label_mass_drop"].value.abs().max() > 1e-4


# --------------------------------------------------------------------------------------------
# the per-query values claim 8 reads


def test_per_query_values_are_the_source_of_the_ablation_rows(result):
    tables, queries, inputs = result
    tidy, join = tables["head_mediation"], tables["head_mediation_join"].iloc[0]
    ev = set(inputs.eval[: CONFIG.max_queries].tolist())
    abl = queries[(queries.part == "ablation")]
    assert set(abl.split) == {"eval"} and set(abl["query"]) == ev
    for ablation in ("zero_mean", "icl_mean"):
        for name in ("top_aie", "top_label"):
            for metric in ("label_mass_drop", "vocab_correct_drop"):
                sel = abl[(abl.ablation == ablation) & (abl.metric == metric)]
                tested = sel[sel.set == name].set_index("query").value
                rand = sel[sel.set == f"random_{name}"]
                per_draw = rand[rand["draw"] >= 0].pivot(
                    index="query", columns="draw", values="value"
                )
                mean = rand[rand["draw"] == -1].set_index("query").value
                assert per_draw.shape == (len(ev), CONFIG.n_random)
                np.testing.assert_allclose(mean.loc[per_draw.index], per_draw.mean(1), atol=1e-12)
                row = tidy[
                    (tidy.part == "ablation")
                    & (tidy.set == name)
                    & (tidy.ablation == ablation)
                    & (tidy.metric == metric)
                ]
                assert float(row.value.iloc[0]) == pytest.approx(tested.mean(), abs=1e-12)
                # the join's place of the tested set among the draws, recounted here
                draw_means = per_draw.mean(0).to_numpy()
                stem = f"{ablation}_{name}_{metric}"
                assert join[stem] == pytest.approx(tested.mean(), abs=1e-12)
                expected_p = (1 + np.sum(-draw_means >= -tested.mean())) / (1 + len(draw_means))
                assert join[f"{stem}_p"] == pytest.approx(expected_p)
                expected = 100 * np.mean(-draw_means < -tested.mean())
                assert join[f"{stem}_percentile"] == pytest.approx(expected)
                assert join[f"{ablation}_random_{name}_{metric}_mean"] == pytest.approx(
                    draw_means.mean(), abs=1e-12
                )


def test_no_matched_set_means_no_random_rows_and_an_untestable_claim(tiny_handles):
    """top_k = 5 on 2 x 4 heads: some block holds 3 or more of a tested set, leaving it at
    most 1 other head (pigeonhole): no layer-matched set exists."""
    from cgar_interp.claims.base import UNTESTABLE
    from cgar_interp.claims.head_necessity import heads_are_necessary

    config = HeadMediationConfig(top_k=5, n_random=3, max_queries=6, n_permutations=50)
    tables, queries = _run(tiny_handles["hf"], labelled_inputs(), config)
    join = tables["head_mediation_join"].iloc[0]
    for name in ("top_aie", "top_label"):
        hist = layer_histogram(_heads(join[name]))
        free = {b: 4 - c for b, c in hist.items()}
        assert any(free[b] < c for b, c in hist.items())  # truly infeasible
        assert join[f"random_{name}_n_draws"] == 0
    assert not tables["head_mediation"].set.str.startswith("random").any()
    rows = heads_are_necessary({**tables, "head_mediation_queries": queries}, {})
    assert rows and {r.verdict for r in rows} == {UNTESTABLE}
    assert all("layer-matched" in r.note for r in rows)


def test_claim_rows_from_a_probe_run(result):
    """Claim 8 on the probe's own tables: the value and control are minus the per-query
    changes of the tested set and the draws' mean, paired by query."""
    from cgar_interp.claims.head_necessity import heads_are_necessary

    tables, queries, inputs = result
    rows = heads_are_necessary({**tables, "head_mediation_queries": queries}, {})
    assert len(rows) == 8 and {r.selected_on for r in rows} == {"fit"}
    by_key = {r.key: r for r in rows}
    assert set(by_key) == {
        f"{prefix}{a}/{m}"
        for prefix in ("", "top_aie/")
        for a in ("zero_mean", "icl_mean")
        for m in ("label_mass", "accuracy")
    }
    r = by_key["icl_mean/label_mass"]
    sel = queries[
        (queries.part == "ablation")
        & (queries.ablation == "icl_mean")
        & (queries.metric == "label_mass_drop")
        & (queries["draw"] == -1)
    ]
    mine = sel[sel.set == "top_label"].set_index("query").value.sort_index()
    rand = sel[sel.set == "random_top_label"].set_index("query").value.sort_index()
    np.testing.assert_allclose(r.samples.value[0], -mine.to_numpy())
    np.testing.assert_allclose(r.samples.control[0], -rand.to_numpy())
    assert r.value == pytest.approx(-mine.mean()) and r.control_value == pytest.approx(-rand.mean())
    assert isinstance(queries, pd.DataFrame) and r.n == len(mine)

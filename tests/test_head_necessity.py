"""Claim 8 from a synthetic per-query table: paired rows per task, metric, ablation and tested
set, checked against numpy recomputations, and decided by the ledger."""

import math

import numpy as np
import pandas as pd
import pytest

from cgar_interp.claims import build_ledger
from cgar_interp.claims.base import NOT_SUPPORTED, PENDING, SUPPORTED, UNTESTABLE
from cgar_interp.claims.head_necessity import HEAD_NECESSITY_CLAIM, heads_are_necessary

N, DRAWS = 40, 12
METRICS = ("label_mass_drop", "vocab_correct_drop", "gold_mass_drop")


def synthetic(task: str, effect: float, seed: int, queries=None, draws: int = DRAWS):
    """Per-query ablation rows as the probe writes them: the tested sets change by
    ``-effect`` per query, each random draw by about -0.02; fit rows that must be ignored."""
    rng = np.random.default_rng(seed)
    queries = np.arange(100, 100 + N) if queries is None else np.asarray(queries)
    rows = []

    def add(set_name, ablation, draw, metric, values, split="eval", q=queries):
        for query, value in zip(q, values, strict=True):
            rows.append(
                {
                    "task": task,
                    "probe": "head_mediation",
                    "part": "ablation",
                    "layer": -1,
                    "head": -1,
                    "set": set_name,
                    "ablation": ablation,
                    "draw": draw,
                    "metric": metric,
                    "query": int(query),
                    "split": split,
                    "value": float(value),
                    "shots": 5,
                }  # fmt: skip
            )

    for metric in METRICS:
        add("clean", "none", -1, metric, rng.uniform(0.5, 0.9, queries.size))
        for ablation in ("zero_mean", "icl_mean"):
            for name in ("top_label", "top_aie"):
                add(name, ablation, -1, metric, -effect + rng.normal(0, 0.01, queries.size))
                per_draw = -0.02 + rng.normal(0, 0.01, (draws, queries.size))
                for d in range(draws):
                    add(f"random_{name}", ablation, d, metric, per_draw[d])
                if draws:
                    add(f"random_{name}", ablation, -1, metric, per_draw.mean(0))
                # fit rows with absurd values: a claim that read them would show it
                add(name, ablation, -1, metric, np.full(3, 9.0), "fit", np.arange(3))
    return pd.DataFrame(rows)


def tables_of(*frames) -> dict[str, pd.DataFrame]:
    queries = pd.concat(frames, ignore_index=True)
    tidy = pd.DataFrame({"task": sorted(queries.task.unique()), "part": "ablation"})
    return {"head_mediation": tidy, "head_mediation_queries": queries}


def test_rows_pair_the_tested_set_with_its_matched_draws_per_query():
    frame = synthetic("strong", 0.4, seed=0)
    rows = heads_are_necessary(tables_of(frame), {})
    assert len(rows) == 8 and {r.kind for r in rows} == {"difference"}
    assert {r.selected_on for r in rows} == {"fit"} and {r.margin for r in rows} == {0.05}
    keys = {r.key for r in rows}
    assert keys == {
        "zero_mean/label_mass", "zero_mean/accuracy", "icl_mean/label_mass", "icl_mean/accuracy",
        "top_aie/zero_mean/label_mass", "top_aie/zero_mean/accuracy",
        "top_aie/icl_mean/label_mass", "top_aie/icl_mean/accuracy",
    }  # fmt: skip
    ev = frame[frame.split == "eval"]
    for r in rows:
        name = "top_aie" if r.key.startswith("top_aie/") else "top_label"
        ablation = r.key.split("/")[-2]
        metric = "label_mass_drop" if r.key.endswith("label_mass") else "vocab_correct_drop"
        sel = ev[(ev.ablation == ablation) & (ev.metric == metric)].sort_values("query")
        tested = -sel[(sel.set == name) & (sel["draw"] == -1)].value.to_numpy()
        draws = sel[(sel.set == f"random_{name}") & (sel["draw"] >= 0)]
        per_query = -draws.groupby("query").value.mean().sort_index().to_numpy()
        np.testing.assert_allclose(r.samples.value[0], tested, atol=1e-12)
        np.testing.assert_allclose(r.samples.control[0], per_query, atol=1e-12)
        assert r.value == pytest.approx(tested.mean()) and r.n == N
        assert r.control_value == pytest.approx(per_query.mean())
        assert r.ci_low < r.value < r.ci_high
        draw_means = -draws.groupby("draw").value.mean().to_numpy()
        p = (1 + np.sum(draw_means >= tested.mean())) / (1 + DRAWS)
        percentile = 100 * np.mean(draw_means < tested.mean())
        assert f"{percentile:.0f}th percentile, p = {p:.3g}" in r.note
        assert f"{DRAWS} random head sets" in r.control


def test_the_ledger_decides_them_and_fit_rows_play_no_part():
    strong, null = synthetic("strong", 0.4, seed=1), synthetic("null", 0.02, seed=2)
    ledger = build_ledger(tables_of(strong, null), {}, claims=(HEAD_NECESSITY_CLAIM,), n_boot=2000)
    assert len(ledger) == 16
    assert set(ledger[ledger.task == "strong"].verdict) == {SUPPORTED}
    assert set(ledger[ledger.task == "null"].verdict) == {NOT_SUPPORTED}
    assert ledger.method.str.startswith("paired bootstrap over the 40 queries").all()
    # other fit values, the same ledger
    moved = [f.assign(value=np.where(f.split == "fit", -5.0, f.value)) for f in (strong, null)]
    again = build_ledger(tables_of(*moved), {}, claims=(HEAD_NECESSITY_CLAIM,), n_boot=2000)
    pd.testing.assert_frame_equal(ledger, again)


def test_only_the_queries_both_sides_have_are_paired():
    frame = synthetic("t", 0.3, seed=3)
    drop = (frame.set == "random_top_label") & frame["query"].isin([100, 101])
    rows = {r.key: r for r in heads_are_necessary(tables_of(frame[~drop]), {})}
    assert rows["zero_mean/label_mass"].n == N - 2
    assert rows["top_aie/zero_mean/label_mass"].n == N


def test_untestable_and_pending_rows():
    no_draws = synthetic("t", 0.3, seed=4, draws=0)
    rows = heads_are_necessary(tables_of(no_draws), {})
    assert len(rows) == 8 and {r.verdict for r in rows} == {UNTESTABLE}
    assert all(r.kind == "untestable" and math.isnan(r.value) for r in rows)
    # an older run: the tidy table but no per-query ablation values
    old = {"head_mediation": pd.DataFrame({"task": ["a", "b"], "part": "ablation"})}
    rows = heads_are_necessary(old, {})
    assert [(r.task, r.verdict) for r in rows] == [("a", UNTESTABLE), ("b", UNTESTABLE)]
    assert "re-run" in rows[0].note
    (row,) = heads_are_necessary({"hopfield_heads": pd.DataFrame()}, {})
    assert row.verdict == PENDING
    assert heads_are_necessary({}, {}) == []
    ledger = build_ledger(
        tables_of(no_draws), {}, claims=(HEAD_NECESSITY_CLAIM,), n_boot=200
    )  # untestable rows pass the ledger untouched
    assert set(ledger.verdict) == {UNTESTABLE}

"""Claim 7 (heads read the demonstrations like Hopfield retrieval) on synthetic per-query tables
whose outcome is known, every number recomputed here with numpy from the arrays that built the
table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cgar_interp.claims.base import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    UNTESTABLE,
    VERDICTS,
    decide_rows,
)
from cgar_interp.claims.hopfield_reading import (
    HOPFIELD_READING_CLAIM,
    KEY_GOLD,
    KEY_MATCHED,
    KEY_ZERO,
    claim_heads,
    head_sums,
    label_reading_heads,
    n_classes,
    own_class_share,
)
from cgar_interp.claims.ledger import build_ledger

N_BOOT = 4000


def manifest(**k_per_task):
    return {"tasks": {t: {"labels": {"first_ids": list(range(k))}} for t, k in k_per_task.items()}}


def _long(task, kind, metric, values, queries, split, layers, heads):
    """Tidy per-query rows of ``values [n_queries, n_heads]`` (heads in (layer, head) order)."""
    n_q, n_h = values.shape
    return pd.DataFrame(
        {
            "task": task,
            "probe": "hopfield_heads",
            "layer": np.tile(layers, n_q),
            "head": np.tile(heads, n_q),
            "kv_head": np.tile(heads, n_q) // 2,
            "prompt_kind": kind,
            "metric": metric,
            "query": np.repeat(queries, n_h),
            "split": split,
            "value": values.reshape(-1),
        }
    )


def head_grid(n_heads, per_layer=4):
    idx = np.arange(n_heads)
    return idx // per_layer, idx % per_layer


def regime_frame(task, globals_, n_keys, queries=None, split="eval"):
    """``globals_``: prompt kind -> ``[n_q, n_heads]`` 0/1 global indicators; ``n_keys``: kind ->
    context length (every query)."""
    frames = []
    for kind, g in globals_.items():
        n_q, n_h = g.shape
        q = np.arange(n_q) if queries is None else queries
        layers, heads = head_grid(n_h)
        single = (1 - g) * (np.arange(n_h)[None] % 2)  # some of the rest single, some metastable
        for metric, v in (
            ("frac_global", g),
            ("frac_single", single),
            ("frac_metastable", 1 - g - single),
            ("n_keys", np.full(g.shape, float(n_keys[kind]))),
        ):
            frames.append(_long(task, kind, metric, v.astype(float), q, split, layers, heads))
    return pd.concat(frames, ignore_index=True)


def mass_frame(task, label, gold, queries, split):
    """ICL label masses ``[n_q, n_heads]`` of ``queries`` in ``split``."""
    layers, heads = head_grid(label.shape[1])
    return pd.concat(
        [
            _long(task, "icl", "label_mass", label, queries, split, layers, heads),
            _long(task, "icl", "gold_label_mass", gold, queries, split, layers, heads),
        ],
        ignore_index=True,
    )


def decide(rows):
    return decide_rows(rows, n_boot=N_BOOT)


def pick(rows, claim_id, task="t", key=None):
    (row,) = [
        r for r in rows if r.claim_id == claim_id and r.task == task and (key in (None, r.key))
    ]
    return row


# --------------------------------------------------------------------------------------------
# 7a


def _indicators(rng, p_global, n_q=200, n_h=16):
    return (rng.random((n_q, n_h)) < p_global).astype(float)


def test_7a_the_length_matched_control_decides_and_zero_shot_is_reported_beside_it():
    # retrieval rises only against the shorter zero-shot prompts: under the length-matched
    # control (same demonstrations, random labels) the share is the same as under ICL
    rng = np.random.default_rng(0)
    g = {
        "icl": _indicators(rng, 0.3),
        "icl_random_labels": _indicators(rng, 0.3),
        "zero_shot": _indicators(rng, 0.8),
    }
    frame = regime_frame("t", g, {"icl": 60, "icl_random_labels": 61, "zero_shot": 12})
    rows = decide(claim_heads({"hopfield_heads_queries": frame}, manifest(t=2)))
    matched = pick(rows, "7a", key=KEY_MATCHED)
    zero = pick(rows, "7a", key=KEY_ZERO)
    # value and control: the per-query share (mean over heads of 1 - global), meaned over queries
    share = {kind: (1 - v.mean(1)).mean() for kind, v in g.items()}
    assert matched.value == pytest.approx(share["icl"])
    assert matched.control_value == pytest.approx(share["icl_random_labels"])
    assert matched.diff == pytest.approx(share["icl"] - share["icl_random_labels"])
    assert zero.control_value == pytest.approx(share["zero_shot"])
    assert matched.verdict == NOT_SUPPORTED and zero.verdict == SUPPORTED
    assert matched.n == zero.n == 200 and matched.selected_on == "pre-specified"
    assert matched.test.startswith("the claim's test") and "LENGTH-CONFOUNDED" in zero.note
    assert "ICL 60.0, random-label ICL 61.0, zero-shot 12.0" in matched.note
    assert "<= 1 keys" in matched.note
    # the descriptive interval: the per-query shares' bootstrap, around the value
    assert matched.ci_low < matched.value < matched.ci_high


def test_7a_supported_when_icl_retrieves_more_than_the_length_matched_control():
    rng = np.random.default_rng(1)
    g = {
        "icl": _indicators(rng, 0.2),
        "icl_random_labels": _indicators(rng, 0.6),
        "zero_shot": _indicators(rng, 0.6),
    }
    frame = regime_frame("t", g, {"icl": 60, "icl_random_labels": 60, "zero_shot": 12})
    rows = decide(claim_heads({"hopfield_heads_queries": frame}, manifest(t=2)))
    assert pick(rows, "7a", key=KEY_MATCHED).verdict == SUPPORTED


def test_7a_pairs_the_queries_a_kind_lacks_out():
    rng = np.random.default_rng(2)
    icl, ctl = _indicators(rng, 0.3, n_q=30), _indicators(rng, 0.5, n_q=20)
    frame = pd.concat(
        [
            regime_frame("t", {"icl": icl}, {"icl": 60}),
            regime_frame("t", {"icl_random_labels": ctl}, {"icl_random_labels": 60}),
        ]
    )
    row = pick(claim_heads({"hopfield_heads_queries": frame}, {}), "7a", key=KEY_MATCHED)
    assert row.n == 20  # the queries both kinds have
    assert row.value == pytest.approx((1 - icl[:20].mean(1)).mean())


def test_7a_without_the_control_is_untestable_and_says_why():
    rng = np.random.default_rng(3)
    g = {"icl": _indicators(rng, 0.3), "zero_shot": _indicators(rng, 0.8)}
    frame = regime_frame("t", g, {"icl": 60, "zero_shot": 12})
    rows = decide(claim_heads({"hopfield_heads_queries": frame}, manifest(t=2)))
    matched = pick(rows, "7a", key=KEY_MATCHED)
    assert matched.kind == "untestable" and matched.verdict == UNTESTABLE
    assert "length_control" in matched.note
    assert pick(rows, "7a", key=KEY_ZERO).verdict == SUPPORTED


# --------------------------------------------------------------------------------------------
# 7b


def noise_heads(rng, n_q, n_h=400, k=4, base=0.2, sd=0.05):
    """Label masses of heads blind to the class: every head's gold share is 1/K in expectation,
    but each query's fluctuation of a head's label mass lands on the gold class, so a head
    whose label mass is high *on some queries* also has a high own-class share *there*."""
    u = rng.normal(0, sd, (n_q, n_h))
    return base + u, base / k + u


def test_7b_selection_on_the_judged_queries_inflates_the_share_and_fit_selection_does_not():
    rng = np.random.default_rng(4)
    k, n_fit, n_eval = 4, 20, 20
    fit_label, fit_gold = noise_heads(rng, n_fit, k=k)
    ev_label, ev_gold = noise_heads(rng, n_eval, k=k)
    frame = pd.concat(
        [
            mass_frame("t", fit_label, fit_gold, np.arange(n_fit), "fit"),
            mass_frame("t", ev_label, ev_gold, np.arange(n_fit, n_fit + n_eval), "eval"),
        ],
        ignore_index=True,
    )
    # numpy: heads chosen on the eval queries and judged there vs chosen on fit
    in_sample = np.argsort(-ev_label.mean(0), kind="stable")[:10]
    fit_top = np.argsort(-fit_label.mean(0), kind="stable")[:10]
    inflated = ev_gold[:, in_sample].sum() / ev_label[:, in_sample].sum()
    honest = ev_gold[:, fit_top].sum() / ev_label[:, fit_top].sum()
    assert inflated > 1 / k + 0.05  # selection on noise: looks like own-class reading
    assert abs(honest - 1 / k) < 0.02

    eval_heads = label_reading_heads(frame, "t", split="eval")
    assert own_class_share(*head_sums(frame, "t", eval_heads)) == pytest.approx(inflated)

    rows = decide(claim_heads({"hopfield_heads_queries": frame}, manifest(t=k)))
    row = pick(rows, "7b")
    assert row.selected_on == "fit" and row.key == KEY_GOLD and row.n == n_eval
    assert row.value == pytest.approx(honest)
    assert row.control_value == 0.25 and row.control_ci_low == row.control_ci_high == 0.25
    assert row.verdict != SUPPORTED
    chosen = {(int(i // 4), int(i % 4)) for i in fit_top}
    for layer, head in chosen:
        assert f"L{layer}H{head} (fit label mass" in row.note
    assert f"own-class share {inflated:.3f}" in row.note and "In-sample (NOT the test" in row.note


def test_7b_heads_that_read_their_class_are_supported_and_the_ratio_is_recomputed():
    rng = np.random.default_rng(5)
    n_fit, n_eval, n_h = 16, 40, 24
    strength = np.zeros(n_h)
    strength[:6] = 0.5  # six label-reading heads, the rest barely look at labels
    share = np.where(strength > 0, 0.8, 0.5)

    def masses(n):
        label = strength + 0.02 + rng.uniform(0, 0.1, (n, n_h))
        gold = label * (share + rng.normal(0, 0.05, (n, n_h)))
        return label, gold

    fl, fg = masses(n_fit)
    el, eg = masses(n_eval)
    frame = pd.concat(
        [
            mass_frame("t", fl, fg, np.arange(n_fit), "fit"),
            mass_frame("t", el, eg, np.arange(100, 100 + n_eval), "eval"),
        ]
    )
    rows = decide(claim_heads({"hopfield_heads_queries": frame}, manifest(t=2)))
    row = pick(rows, "7b")
    top = np.argsort(-fl.mean(0), kind="stable")[:10]
    assert row.value == pytest.approx(eg[:, top].sum() / el[:, top].sum())
    assert row.verdict == SUPPORTED and row.diff == pytest.approx(row.value - 0.5)


def test_7b_without_fit_queries_or_k_is_untestable():
    rng = np.random.default_rng(6)
    label, gold = noise_heads(rng, 10, n_h=12, k=2)
    eval_only = mass_frame("t", label, gold, np.arange(10), "eval")
    row = pick(claim_heads({"hopfield_heads_queries": eval_only}, manifest(t=2)), "7b")
    assert row.verdict == UNTESTABLE and "select_queries" in row.note
    assert "In-sample (NOT the test" in row.note
    both = pd.concat([eval_only, mass_frame("t", label, gold, np.arange(10, 20), "fit")])
    row = pick(claim_heads({"hopfield_heads_queries": both}, {}), "7b")
    assert row.verdict == UNTESTABLE and "K is not in the manifest" in row.note


# --------------------------------------------------------------------------------------------
# pooled over tasks, older runs, the ledger


def test_pooled_rows_are_one_stratum_per_task():
    rng = np.random.default_rng(7)
    frames, g, masses = [], {}, {}
    for task, k, p_icl in (("a", 2, 0.2), ("b", 4, 0.5)):
        g[task] = {
            "icl": _indicators(rng, p_icl, n_q=30 if task == "a" else 50),
            "icl_random_labels": _indicators(rng, 0.5, n_q=30 if task == "a" else 50),
        }
        frames.append(regime_frame(task, g[task], {"icl": 40, "icl_random_labels": 40}))
        fl, fg = noise_heads(rng, 10, n_h=12, k=k)
        el, eg = noise_heads(rng, 25, n_h=12, k=k)
        eg = eg + 0.1 * el  # some own-class reading
        masses[task] = (fl, el, eg, k)
        frames.append(mass_frame(task, fl, fg, np.arange(1000, 1010), "fit"))
        frames.append(mass_frame(task, el, eg, np.arange(2000, 2025), "eval"))
    rows = decide(claim_heads({"hopfield_heads_queries": pd.concat(frames)}, manifest(a=2, b=4)))
    assert {(r.claim_id, r.task, r.key) for r in rows} == {
        (cid, t, key)
        for t in ("a", "b", "all")
        for cid, key in (("7a", KEY_MATCHED), ("7b", KEY_GOLD))
    }
    pooled = pick(rows, "7a", "all")
    per_task = [(1 - g[t]["icl"].mean(1)).mean() for t in ("a", "b")]
    assert pooled.value == pytest.approx(np.mean(per_task)) and pooled.n == 80
    excess = []
    for fl, el, eg, k in masses.values():
        top = np.argsort(-fl.mean(0), kind="stable")[:10]
        excess.append(eg[:, top].sum() / el[:, top].sum() - 1 / k)
    gold = pick(rows, "7b", "all")
    assert gold.value == pytest.approx(np.mean(excess)) and gold.control_value == 0.0
    assert gold.selected_on == "fit"


def test_an_older_run_without_per_query_values_is_untestable():
    tidy = pd.DataFrame(
        {
            "task": ["t"],
            "probe": ["hopfield_heads"],
            "layer": [0],
            "head": [0],
            "prompt_kind": ["icl"],
            "metric": ["label_mass"],
            "value": [0.5],
        }  # fmt: skip
    )
    rows = claim_heads({"hopfield_heads": tidy}, manifest(t=2))
    assert {(r.claim_id, r.verdict) for r in rows} == {("7a", UNTESTABLE), ("7b", UNTESTABLE)}
    assert claim_heads({}, {}) == []


def test_the_ledger_decides_claim_7_with_paired_samples():
    rng = np.random.default_rng(8)
    g = {
        "icl": _indicators(rng, 0.3, n_q=40),
        "icl_random_labels": _indicators(rng, 0.35, n_q=40),
        "zero_shot": _indicators(rng, 0.8, n_q=40),
    }
    fl, fg = noise_heads(rng, 12, n_h=16, k=2)
    frame = pd.concat(
        [
            regime_frame("t", g, {"icl": 60, "icl_random_labels": 60, "zero_shot": 12}),
            mass_frame("t", fl, fg, np.arange(100, 112), "fit"),
            mass_frame("t", *noise_heads(rng, 40, n_h=16, k=2), np.arange(40), "eval"),
        ]
    )
    ledger = build_ledger(
        {"hopfield_heads_queries": frame}, manifest(t=2), claims=(HOPFIELD_READING_CLAIM,)
    )
    assert len(ledger) == 3 and set(ledger.verdict) <= set(VERDICTS)
    assert set(ledger.verdict) <= {SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE}
    assert ledger.method.str.startswith("paired bootstrap").all()
    assert set(ledger.selected_on) == {"pre-specified", "fit"}
    assert not ledger[["diff_low", "diff_high"]].isna().any().any()
    assert all(math.isfinite(x) for x in ledger.p_value)


def test_n_classes_from_a_sweep_manifest():
    m = {"tasks": {"sst2/shots-2": {"labels": {"words": [" a", " b", " c"]}}}}
    assert n_classes("sst2", m) == 3
    assert n_classes("other", m) is None

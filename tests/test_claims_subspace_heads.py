"""Claims 4 (label subspace) and 7 (Hopfield heads): each verdict on tables built to give it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cgar_interp.claims.base import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Z95,
    decide_difference,
)
from cgar_interp.claims.hopfield_reading import (
    claim_heads,
    gold_share,
    label_reading_heads,
    n_classes,
)
from cgar_interp.claims.subspace import claim_subspace

DEMO = Path(__file__).resolve().parents[1] / "runs" / "demo"


# --------------------------------------------------------------------------------------------
# synthetic tables


def _row(task, layer, subject, metric, value, low, high, **extra):
    return {
        "task": task,
        "probe": "subspace",
        "metric": metric,
        "value": value,
        "n": 64,
        "ci_low": low,
        "ci_high": high,
        "layer": layer,
        "subject": subject,
        "top_k": 2,
        "label_dim": 2,
        "readout": "unembed",
        **extra,
    }


def subspace_table(task="t", angle=None, energy=None, layers=(1, 2, 3, 4), **extra):
    """Shift and random rows for ``angle_min_deg`` and ``cbar_label_energy``.

    ``angle`` / ``energy``: ``{"shift": {layer: (value, low, high)}, "random": (v, lo, hi)}``;
    layers not given in ``shift`` repeat the random baseline (inside the band).
    """
    rows = []
    for metric, spec in (("angle_min_deg", angle), ("cbar_label_energy", energy)):
        spec = spec or {"random": (85.0, 82.0, 88.0) if metric == "angle_min_deg" else (0.01,) * 3}
        rand = spec["random"]
        for layer in layers:
            shift = spec.get("shift", {}).get(layer, rand)
            rows.append(_row(task, layer, "shift", metric, *shift, **extra))
            rows.append(_row(task, layer, "random", metric, *rand, **extra))
    return pd.DataFrame(rows)


def manifest(n_layers=4, k_per_task=None):
    tasks = {
        task: {"labels": {"first_ids": list(range(k))}} for task, k in (k_per_task or {}).items()
    }
    return {"architecture": {"n_layers": n_layers}, "tasks": tasks}


def heads_table(task="t", heads=None, n_keys=(20.0, 60.0)):
    """Hopfield-heads rows from ``heads``: ``{(layer, head): {(kind, metric): (v, lo, hi)}}``."""
    rows = []
    for (layer, head), metrics in heads.items():
        for kind, n in (("zero_shot", n_keys[0]), ("icl", n_keys[1])):
            metrics = {(kind, "n_keys"): (n, n, n), **metrics}
        for (kind, metric), (v, lo, hi) in metrics.items():
            rows.append(
                {
                    "task": task,
                    "probe": "hopfield_heads",
                    "layer": layer,
                    "head": head,
                    "kv_head": head // 2,
                    "prompt_kind": kind,
                    "metric": metric,
                    "value": v,
                    "n": 24,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    return pd.DataFrame(rows)


def regime_heads(icl_global, zero_global, n_heads=4):
    """Every head with the same global share (and its interval) per prompt kind."""
    out = {}
    for h in range(n_heads):
        metrics = {}
        for kind, (v, lo, hi) in (("icl", icl_global), ("zero_shot", zero_global)):
            metrics[(kind, "frac_global")] = (v, lo, hi)
            metrics[(kind, "frac_single")] = (0.1, 0.0, 0.2)
            metrics[(kind, "frac_metastable")] = (0.9 - v, 0.0, 1.0)
        out[(h // 2, h % 2)] = metrics
    return out


def gold_heads(shares, masses, rel_halfwidth=0.01):
    """Heads with ICL label mass ``masses[i]`` and own-class share ``shares[i]``."""
    out = {}
    for i, (share, mass) in enumerate(zip(shares, masses, strict=True)):
        g = share * mass
        out[(i // 3, i % 3)] = {
            ("icl", "label_mass"): (mass, mass * (1 - rel_halfwidth), mass * (1 + rel_halfwidth)),
            ("icl", "gold_label_mass"): (g, g * (1 - rel_halfwidth), g * (1 + rel_halfwidth)),
            ("icl", "frac_global"): (0.1, 0.0, 0.2),
            ("zero_shot", "frac_global"): (0.1, 0.0, 0.2),
        }
    return out


def decided(rows, claim_id, task="t"):
    (row,) = [r for r in rows if r.claim_id == claim_id and r.task == task]
    return decide_difference(row, m=1)


# --------------------------------------------------------------------------------------------
# claim 4


def test_claim_4_needs_its_table():
    assert claim_subspace({}, manifest()) == []
    assert claim_subspace({"subspace": pd.DataFrame()}, manifest()) == []


@pytest.mark.parametrize(
    ("shift", "random", "verdict"),
    [
        ((60.0, 59.0, 61.0), (85.0, 82.0, 88.0), SUPPORTED),  # 25 deg closer than random
        ((85.0, 84.5, 85.5), (85.0, 84.5, 85.5), NOT_SUPPORTED),  # no closer, tightly
        ((89.0, 88.5, 89.5), (85.0, 84.5, 85.5), NOT_SUPPORTED),  # further than random
        ((80.0, 75.0, 85.0), (85.0, 80.0, 90.0), INCONCLUSIVE),  # 5 deg closer, wide
    ],
)
def test_claim_4a_angle_verdicts(shift, random, verdict):
    table = subspace_table(angle={"shift": {4: shift}, "random": random})
    row = decided(claim_subspace({"subspace": table}, manifest(4)), "4a")
    assert row.verdict == verdict
    # alignment = 90 - angle: value is the measured shift's, control the random subspace's
    assert row.value == pytest.approx(90 - shift[0])
    assert (row.ci_low, row.ci_high) == pytest.approx((90 - shift[2], 90 - shift[1]))
    assert row.control_value == pytest.approx(90 - random[0])
    assert row.margin == 5.0
    assert row.figure == "subspace-t" and row.kind == "difference"


@pytest.mark.parametrize(
    ("shift", "random", "verdict"),
    [
        ((0.30, 0.28, 0.32), (0.01, 0.002, 0.03), SUPPORTED),
        ((0.011, 0.010, 0.012), (0.01, 0.009, 0.011), NOT_SUPPORTED),
        ((0.05, 0.0, 0.10), (0.01, 0.0, 0.02), INCONCLUSIVE),
    ],
)
def test_claim_4b_energy_verdicts(shift, random, verdict):
    table = subspace_table(energy={"shift": {4: shift}, "random": random})
    row = decided(claim_subspace({"subspace": table}, manifest(4)), "4b")
    assert row.verdict == verdict
    assert (row.value, row.control_value) == pytest.approx((shift[0], random[0]))
    assert (row.control_ci_low, row.control_ci_high) == pytest.approx(random[1:])


def test_claim_4_reads_the_prespecified_layer_and_reports_the_first_layer_out_of_band():
    # out of the band (below) at layers 2 and 3, back inside at 4 = L: the verdict reads L
    angle = {
        "shift": {2: (70.0, 69.0, 71.0), 3: (60.0, 59.0, 61.0), 4: (85.0, 84.5, 85.5)},
        "random": (85.0, 84.5, 85.5),
    }
    rows = claim_subspace({"subspace": subspace_table(angle=angle)}, manifest(4))
    row = decided(rows, "4a")
    assert row.verdict == NOT_SUPPORTED
    assert "layer 4" in row.reads and "L = 4" in row.test
    assert "below it: 2 (out of the band below it at layers 2-3" in row.note
    energy_row = decided(rows, "4b")
    assert "above it: never" in energy_row.note


def test_claim_4_falls_back_to_the_last_layer_the_table_has():
    angle = {"shift": {4: (60.0, 59.0, 61.0)}, "random": (85.0, 82.0, 88.0)}
    row = decided(claim_subspace({"subspace": subspace_table(angle=angle)}, manifest(8)), "4a")
    assert row.verdict == SUPPORTED
    assert "no shift row at layer 8; read at layer 4" in row.note


def test_claim_4_one_pair_of_rows_per_task():
    tables = {"subspace": pd.concat([subspace_table("a"), subspace_table("b")], ignore_index=True)}
    rows = claim_subspace(tables, manifest(4))
    assert sorted((r.claim_id, r.task) for r in rows) == [
        ("4a", "a"),
        ("4a", "b"),
        ("4b", "a"),
        ("4b", "b"),
    ]


def test_claim_4_missing_random_rows_is_inconclusive():
    table = subspace_table(angle={"shift": {4: (60.0, 59.0, 61.0)}, "random": (85.0, 82.0, 88.0)})
    table = table[table.subject != "random"]
    row = decided(claim_subspace({"subspace": table}, manifest(4)), "4a")
    assert row.verdict == INCONCLUSIVE and math.isnan(row.control_value)


def test_claim_4_reads_the_largest_k_of_a_sweep():
    small = subspace_table(angle={"shift": {4: (85.0, 84.5, 85.5)}, "random": (85.0, 84.5, 85.5)})
    big = subspace_table(angle={"shift": {4: (60.0, 59.0, 61.0)}, "random": (85.0, 84.5, 85.5)})
    table = pd.concat([small.assign(shots=1), big.assign(shots=4)], ignore_index=True)
    row = decided(claim_subspace({"subspace": table}, manifest(4)), "4a")
    assert row.value == pytest.approx(30.0) and row.verdict == SUPPORTED
    assert "largest k = 4" in row.note


# --------------------------------------------------------------------------------------------
# claim 7


def test_claim_7_needs_its_table():
    assert claim_heads({}, manifest()) == []


@pytest.mark.parametrize(
    ("icl", "zero", "verdict"),
    [
        ((0.0, 0.0, 0.02), (0.5, 0.45, 0.55), SUPPORTED),  # half the pairs leave "global"
        ((0.3, 0.29, 0.31), (0.3, 0.29, 0.31), NOT_SUPPORTED),  # no change, tightly
        ((0.3, 0.1, 0.5), (0.35, 0.15, 0.55), INCONCLUSIVE),  # a small change, wide
    ],
)
def test_claim_7a_regime_verdicts(icl, zero, verdict):
    tables = {"hopfield_heads": heads_table(heads=regime_heads(icl, zero))}
    row = decided(claim_heads(tables, manifest(k_per_task={"t": 2})), "7a")
    assert row.verdict == verdict
    assert row.value == pytest.approx(1 - icl[0])
    assert row.control_value == pytest.approx(1 - zero[0])
    # identical heads: the interval is value +- the per-head half-width (symmetric, unclipped)
    half = (icl[2] - icl[1]) / 2
    assert (row.ci_low, row.ci_high) == pytest.approx((1 - icl[0] - half, 1 - icl[0] + half))
    assert row.figure == "hopfield_heads-t"
    assert "ICL single 0.100" in row.note and "mean 60 keys vs 20" in row.note


def _twelve(shares_top, share_rest=1.0):
    """Ten label-reading heads with the given shares, two weak heads with ``share_rest``."""
    masses = [0.9 - 0.05 * i for i in range(10)] + [0.01, 0.02]
    return gold_heads(list(shares_top) + [share_rest, share_rest], masses)


@pytest.mark.parametrize(
    ("shares", "rel", "verdict"),
    [
        ([0.9] * 10, 0.01, SUPPORTED),
        ([0.5] * 10, 0.001, NOT_SUPPORTED),  # exactly 1/K = 1/2
        ([0.6] * 10, 0.2, INCONCLUSIVE),
    ],
)
def test_claim_7b_own_class_share_verdicts(shares, rel, verdict):
    masses = [0.9 - 0.05 * i for i in range(10)] + [0.01, 0.02]
    heads = gold_heads([*shares, 1.0, 1.0], masses, rel_halfwidth=rel)
    tables = {"hopfield_heads": heads_table(heads=heads)}
    row = decided(claim_heads(tables, manifest(k_per_task={"t": 2})), "7b")
    assert row.verdict == verdict
    assert row.value == pytest.approx(shares[0])  # the weak heads (share 1.0) are left out
    assert (row.control_value, row.control_ci_low, row.control_ci_high) == (0.5, 0.5, 0.5)
    assert row.margin == 0.05


def test_claim_7b_heads_interval_and_note():
    heads = _twelve([0.9] * 5 + [0.3] * 5)
    table = heads_table(heads=heads)
    icl = table[table.prompt_kind == "icl"]
    top = label_reading_heads(icl)
    assert len(top) == 10 and top.value.min() > 0.02  # the two weak heads are not chosen
    masses = np.array([0.9 - 0.05 * i for i in range(10)])
    share = (masses[:5].sum() * 0.9 + masses[5:].sum() * 0.3) / masses.sum()
    r, lo, hi = gold_share(icl, top)
    assert r == pytest.approx(share)
    # se <= (sum se(gold) + r sum se(mass)) / sum mass, with se = 1% of each value / 1.96
    gold_se = 0.01 * (masses[:5].sum() * 0.9 + masses[5:].sum() * 0.3) / Z95
    se = (gold_se + r * 0.01 * masses.sum() / Z95) / masses.sum()
    assert (lo, hi) == pytest.approx((r - Z95 * se, r + Z95 * se))
    row = decided(claim_heads({"hopfield_heads": table}, manifest(k_per_task={"t": 4})), "7b")
    assert "L0H0 (label mass 0.900, own class 0.90)" in row.note
    assert "L3H2" not in row.note  # head 11 (mass 0.02) is not a label-reading head
    assert row.control_value == 0.25


def test_claim_7b_without_k_is_inconclusive():
    tables = {"hopfield_heads": heads_table(heads=_twelve([0.9] * 10))}
    row = decided(claim_heads(tables, {}), "7b")
    assert row.verdict == INCONCLUSIVE and "K is not in the manifest" in row.note


def test_claim_7_pools_tasks():
    a = heads_table("a", heads=_twelve([0.9] * 10))
    b = heads_table("b", heads=_twelve([0.5] * 10))
    rows = claim_heads(
        {"hopfield_heads": pd.concat([a, b], ignore_index=True)},
        manifest(k_per_task={"a": 2, "b": 4}),
    )
    assert sorted((r.claim_id, r.task) for r in rows) == [
        ("7a", "a"),
        ("7a", "all"),
        ("7a", "b"),
        ("7b", "a"),
        ("7b", "all"),
        ("7b", "b"),
    ]
    pooled = decided(rows, "7b", "all")
    assert pooled.value == pytest.approx(0.7)
    assert pooled.control_value == pytest.approx((0.5 + 0.25) / 2)
    assert pooled.control_ci_low == pooled.control_ci_high


def test_n_classes_from_a_sweep_manifest():
    m = {"tasks": {"sst2/shots-2": {"labels": {"words": [" a", " b", " c"]}}}}
    assert n_classes("sst2", m) == 3
    assert n_classes("other", m) is None


# --------------------------------------------------------------------------------------------
# the embedded model's paper suite


def _demo():
    needed = [DEMO / "manifest.json"] + [
        DEMO / "tables" / f"{n}.parquet" for n in ("subspace", "hopfield_heads")
    ]
    if not all(p.exists() for p in needed):
        pytest.skip("runs/demo has not been run (make demo)")
    tables = {
        n: pd.read_parquet(DEMO / "tables" / f"{n}.parquet") for n in ("subspace", "hopfield_heads")
    }
    return tables, json.loads((DEMO / "manifest.json").read_text())


def test_demo_rows_recomputed_from_the_raw_tables():
    tables, man = _demo()
    n_layers = man["architecture"]["n_layers"]
    rows = claim_subspace(tables, man) + claim_heads(tables, man)
    s = tables["subspace"]
    for task in s.task.unique():
        # 4a: 90 - the shift's smallest principal angle at layer L, and the random band
        raw = s[(s.task == task) & (s.metric == "angle_min_deg") & (s.layer == n_layers)]
        shift = raw[raw.subject == "shift"].iloc[0]
        rand = raw[raw.subject == "random"].iloc[0]
        row = decided(rows, "4a", task)
        assert row.value == pytest.approx(90 - shift.value)
        assert row.control_ci_low == pytest.approx(90 - rand.ci_high)
        assert row.control_ci_high == pytest.approx(90 - rand.ci_low)
    h = tables["hopfield_heads"]
    for task in h.task.unique():
        # 7b: top-10 heads by ICL label mass, own-class mass over label mass summed over them
        icl = h[(h.task == task) & (h.prompt_kind == "icl")]
        wide = icl.pivot_table(index=["layer", "head"], columns="metric", values="value")
        top = wide.sort_values("label_mass", ascending=False).head(10)
        row = decided(rows, "7b", task)
        assert row.value == pytest.approx(top.gold_label_mass.sum() / top.label_mass.sum())
        assert row.control_value == pytest.approx(1 / len(man["tasks"][task]["labels"]["words"]))
        for layer, head in top.index:
            assert f"L{layer}H{head} " in row.note
        # 7a: 1 - mean frac_global over heads, ICL
        assert decided(rows, "7a", task).value == pytest.approx(1 - wide.frac_global.mean())
    assert {r.verdict for r in (decide_difference(r, 20) for r in rows)} <= {
        SUPPORTED,
        NOT_SUPPORTED,
        INCONCLUSIVE,
    }

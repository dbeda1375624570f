"""Claim 4 (label subspace): each verdict on tables built to give it; claims 4 and 7 on the
embedded model's demo run (claim 7 on synthetic per-query tables: tests/test_claim7.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from cgar_interp.claims.base import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    decide_difference,
    decide_rows,
)
from cgar_interp.claims.hopfield_reading import KEY_ZERO, claim_heads
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
# the embedded model's paper suite


def _demo():
    names = ("subspace", "hopfield_heads", "hopfield_heads_queries")
    needed = [DEMO / "manifest.json"] + [DEMO / "tables" / f"{n}.parquet" for n in names]
    if not all(p.exists() for p in needed):
        pytest.skip("runs/demo has not been run (make demo)")
    tables = {n: pd.read_parquet(DEMO / "tables" / f"{n}.parquet") for n in names}
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
    q = tables["hopfield_heads_queries"]
    for task in q.task.unique():
        part = q[(q.task == task) & (q.prompt_kind == "icl")]
        # 7b: top-10 heads by mean ICL label mass on the fit queries; on the eval queries,
        # own-class mass over label mass summed over them
        fit = part[(part.split == "fit") & (part.metric == "label_mass")]
        top = fit.groupby(["layer", "head"]).value.mean().sort_values(ascending=False).head(10)
        ev = part[part.split == "eval"].set_index(["layer", "head"])
        ev = ev[ev.index.isin(top.index)]
        (row,) = [r for r in rows if r.claim_id == "7b" and r.task == task]
        gold = ev[ev.metric == "gold_label_mass"].value.sum()
        assert row.value == pytest.approx(gold / ev[ev.metric == "label_mass"].value.sum())
        assert row.control_value == pytest.approx(1 / len(man["tasks"][task]["labels"]["words"]))
        for layer, head in top.index:
            assert f"L{layer}H{head} " in row.note
        # 7a: per eval query 1 - the mean frac_global over heads, meaned over the queries
        glob = part[(part.split == "eval") & (part.metric == "frac_global")]
        (row,) = [r for r in rows if r.claim_id == "7a" and r.task == task and r.key == KEY_ZERO]
        assert row.value == pytest.approx(1 - glob.groupby("query").value.mean().mean())
    decided_rows = decide_rows(rows, n_boot=2000)
    assert {r.verdict for r in decided_rows} <= {SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE}

"""Claims 4 and 7: context localises a label subspace; heads read the demonstrations.

Claim 4 reads ``tables/subspace.parquet`` (:mod:`cgar_interp.probes.subspace`). There every
measure of the shift matrix ``S = H_icl - H_zero`` has ``subject = "shift"`` with an
``estimate +- 1.96 se`` interval, and the random baseline ``subject = "random"`` (a
Haar-random subspace of the same dimension, or a random direction in place of ``cbar``) has
the mean of its draws as ``value`` and the 2.5-97.5% spread of the draws as
``ci_low`` / ``ci_high``: *the random band*. The claim is decided at one pre-specified layer,
the last residual layer ``L = manifest["architecture"]["n_layers"]`` (the paper's ``c = L``,
the residual the decode reads), so no layer is selected on the outcome. Using the band as the
control's interval asks whether the measured value lies outside what a random subspace gives,
not whether it differs from the mean of many random draws (which any non-random subspace
would). The scan over layers for the first layer where the measured interval leaves the band
is descriptive (95% per layer, uncorrected) and goes in the row's note.

- 4a: alignment ``90 - angle_min_deg`` (degrees from orthogonal; larger is closer) of the
  top-``top_k`` shift subspace to the label subspace span{W_U[label]}, against the random
  subspace's. Written this way so that *supported* means the measured angle is smaller.
- 4b: ``cbar_label_energy`` (share of ``|cbar|^2`` in the label subspace) against a random
  direction's.

Claim 7 reads ``tables/hopfield_heads.parquet`` (:mod:`cgar_interp.probes.hopfield_heads`),
per (task, layer, head, prompt kind) the mean over queries of each metric with a bootstrap
interval over queries.

- 7a: the share of (head, query) pairs in a retrieval regime (single-pattern or metastable,
  i.e. ``1 - frac_global``), averaged over every head read, under ICL against zero-shot. The
  Hopfield reading of context gating is that context sharpens retrieval (SCIENCE.md 2:
  "context gating both separates and sparsifies"), so the share must rise.
- 7b: for the label-reading heads (the 10 heads with the largest ICL ``label_mass``), the
  share of their label-token attention that lands on the query's own class,
  ``sum gold_label_mass / sum label_mass`` over those heads, against ``1/K``: the share under
  attention that ignores the class (every class has the same number of demonstrations).

Intervals of averages over heads: the heads share their queries, so their errors are
correlated and unknown in covariance; the standard error of a sum is at most the sum of the
standard errors (triangle inequality), which is used throughout: conservative. Tasks use
different queries and are pooled (task ``"all"``, claim 7 only) as independent samples. The
label subspace and the random baseline differ per task (``K``), so claim 4 is not pooled.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..shots import at_shots, largest_k
from .ledger import Z95, Claim, register_claim, se_from_ci

ANGLE_MARGIN_DEG = 5.0
ENERGY_MARGIN = 0.05
REGIME_MARGIN = 0.05
GOLD_SHARE_MARGIN = 0.05
TOP_HEADS = 10

CLAIM_4 = "Context localises a memory subspace"
CLAIM_7 = "Heads read the demonstrations like Hopfield retrieval"


# --------------------------------------------------------------------------------------------
# helpers


def _at_largest_k(table: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """In a k-shot sweep, the largest k (and the zero-shot rows it shares), as the figures."""
    k = largest_k(table)
    return at_shots(table, k), k


def _shots_note(k: int | None) -> str:
    return f" k-shot sweep: read at the largest k = {k}." if k is not None else ""


def _runs(layers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    if not layers:
        return "none"
    parts, start, prev = [], layers[0], layers[0]
    for layer in layers[1:] + [None]:
        if layer is not None and layer == prev + 1:
            prev = layer
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if layer is not None:
            start = prev = layer
    return ", ".join(parts)


def n_classes(task: str, manifest: dict) -> int | None:
    """``K`` of a task from the manifest's label record (``None`` when it is not there).

    In a k-shot sweep the manifest keys tasks as ``"<task>/shots-<k>"``; any of them will do.
    """
    tasks = manifest.get("tasks") or {}
    entries = [tasks[task]] if task in tasks else []
    entries += [v for key, v in tasks.items() if str(key).startswith(f"{task}/")]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        labels = entry.get("labels") or {}
        for field in ("first_ids", "words"):
            if labels.get(field):
                return len(labels[field])
        classes = ((entry.get("prompts") or {}).get("task") or {}).get("classes")
        if classes:
            return len(classes)
    return None


def _pooled(rows: list[Claim]) -> tuple[float, float, float, float, float, float]:
    """Mean over tasks of value and control, with independent-sample intervals."""
    t = len(rows)
    value = float(np.mean([r.value for r in rows]))
    control = float(np.mean([r.control_value for r in rows]))
    se_v = math.sqrt(sum(se_from_ci(r.ci_low, r.ci_high) ** 2 for r in rows)) / t
    se_c = math.sqrt(sum(se_from_ci(r.control_ci_low, r.control_ci_high) ** 2 for r in rows)) / t
    return (
        value,
        value - Z95 * se_v,
        value + Z95 * se_v,
        control,
        control - Z95 * se_c,
        control + Z95 * se_c,
    )


# --------------------------------------------------------------------------------------------
# claim 4


SUBSPACE_METRICS = {
    # metric -> (row suffix, direction the claim needs, margin)
    "angle_min_deg": ("a", "below", ANGLE_MARGIN_DEG),
    "cbar_label_energy": ("b", "above", ENERGY_MARGIN),
}


def _band_layers(measured: pd.DataFrame, random: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Layers whose measured interval lies wholly below / above the random band."""
    both = measured.merge(random, on="layer", suffixes=("", "_r"))
    below = sorted(int(x) for x in both.loc[both.ci_high < both.ci_low_r, "layer"])
    above = sorted(int(x) for x in both.loc[both.ci_low > both.ci_high_r, "layer"])
    return below, above


def _subspace_row(data: pd.DataFrame, task: str, metric: str, layer_l: int, k: int | None):
    suffix, direction, margin = SUBSPACE_METRICS[metric]
    rows = data[(data.task == task) & (data.metric == metric)]
    measured = rows[rows.subject == "shift"].sort_values("layer")
    random = rows[rows.subject == "random"].sort_values("layer")
    readout = str(data.readout.iloc[0]) if "readout" in data.columns and len(data) else "unembed"
    top_k = int(measured.top_k.iloc[0]) if "top_k" in measured.columns and len(measured) else None
    label = "W_U[label]" if readout == "unembed" else "gamma * W_U[label]"
    present = sorted(int(x) for x in measured.layer.unique())
    candidates = [x for x in present if x <= layer_l]
    layer = candidates[-1] if candidates else None
    layer_note = (
        ""
        if layer == layer_l
        else f" The table has no shift row at layer {layer_l}; read at layer {layer}, the last "
        "one it has."
        if layer is not None
        else f" The table has no shift rows for {metric}: no verdict."
    )
    m_row = measured[measured.layer == layer]
    r_row = random[random.layer == layer]
    value = control = lo = hi = c_lo = c_hi = math.nan
    if len(m_row) and len(r_row):
        m, r = m_row.iloc[0], r_row.iloc[0]
        if metric == "angle_min_deg":  # alignment = 90 - angle: larger is closer
            value, lo, hi = 90 - m.value, 90 - m.ci_high, 90 - m.ci_low
            control, c_lo, c_hi = 90 - r.value, 90 - r.ci_high, 90 - r.ci_low
        else:
            value, lo, hi = m.value, m.ci_low, m.ci_high
            control, c_lo, c_hi = r.value, r.ci_low, r.ci_high
    below, above = _band_layers(measured, random)
    wanted, other = (below, above) if direction == "below" else (above, below)
    first = wanted[0] if wanted else "never"
    opposite = "above" if direction == "below" else "below"
    scan = (
        f"First layer where the measured interval leaves the random band {direction} it: "
        f"{first} (out of the band {direction} it at layers {_runs(wanted)}; {opposite} it, "
        f"against the claim, at {_runs(other)}; shift rows at layers {_runs(present)}). "
        "Per-layer 95% intervals, uncorrected: a description, not the test."
    )
    common = {
        "claim_id": f"4{suffix}",
        "task": task,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "control_value": float(control),
        "control_ci_low": float(c_lo),
        "control_ci_high": float(c_hi),
        "kind": "difference",
        "margin": margin,
        "figure": f"subspace-{task}",
    }
    dim = f"top-{top_k}" if top_k else "top-k"
    if metric == "angle_min_deg":
        raw = (
            f" Raw angles: measured {90 - value:.1f} deg [{90 - hi:.1f}, {90 - lo:.1f}], random "
            f"{90 - control:.1f} deg, band [{90 - c_hi:.1f}, {90 - c_lo:.1f}]. Supported means "
            "closer than a random subspace, not that the shifts lie in the label subspace."
            if math.isfinite(value) and math.isfinite(control)
            else ""
        )
        mean_angle = rows[
            (rows.subject == "shift") & (rows.metric == "angle_mean_deg") & (rows.layer == layer)
        ]
        return Claim(
            claim=f"{CLAIM_4}: the shifts h_icl - h_zero lie closer to the label subspace "
            f"span{{{label}}} than a random subspace does",
            test=f"at the pre-specified last residual layer L = {layer_l} (no layer selected on "
            f"the outcome), alignment 90 - angle_min_deg of the {dim} subspace of the shifts "
            "to the label subspace (degrees from orthogonal, larger = closer) against a "
            "Haar-random subspace of the same dimension; the control interval is the random "
            "band (2.5-97.5% of the draws), so the test asks whether the measured angle lies "
            "outside what a random subspace gives. Supported means the measured angle is "
            f"smaller than random; margin {margin:g} deg",
            reads=f"subspace: task {task}, metric angle_min_deg, subject shift and random, "
            f"layer {layer}",
            control="random subspace: 90 - mean angle_min_deg of the draws, band = 2.5-97.5%",
            note=scan
            + raw
            + layer_note
            + (
                f" Mean principal angle at that layer: {mean_angle.value.iloc[0]:.1f} deg."
                if len(mean_angle)
                else ""
            )
            + _shots_note(k),
            **common,
        )
    return Claim(
        claim=f"{CLAIM_4}: the context vector cbar puts more of its energy in the label subspace "
        f"span{{{label}}} than a random direction does",
        test=f"at the pre-specified last residual layer L = {layer_l} (no layer selected on the "
        "outcome), cbar_label_energy = |P_label cbar|^2 / |cbar|^2 against a random direction's "
        "(the control interval is the random band, 2.5-97.5% of the draws); supported means "
        f"larger than random; margin {margin:g} (share of |cbar|^2)",
        reads=f"subspace: task {task}, metric cbar_label_energy, subject shift and random, "
        f"layer {layer}",
        control="random direction: mean energy share of the draws, band = 2.5-97.5%",
        note=scan
        + (
            f" At layer {layer} cbar has {value:.3f} of its energy in the label subspace, "
            f"{value / control:.1f} times a random direction's {control:.4f}; supported means "
            "more than random, not that cbar lies mostly in the label subspace."
            if math.isfinite(value) and math.isfinite(control) and control > 0
            else ""
        )
        + layer_note
        + _shots_note(k),
        **common,
    )


@register_claim("4")
def claim_subspace(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """4a (angle of the shifts to the label subspace) and 4b (cbar's energy in it), per task."""
    table = tables.get("subspace")
    if table is None or table.empty:
        return []
    data, k = _at_largest_k(table)
    arch = manifest.get("architecture") or {}
    shift_layers = data.loc[data.subject == "shift", "layer"]
    layer_l = arch.get("n_layers")
    if layer_l is None:
        layer_l = int(shift_layers.max()) if len(shift_layers) else int(data.layer.max())
    rows = []
    for task in data.task.unique():
        for metric in SUBSPACE_METRICS:
            rows.append(_subspace_row(data, task, metric, int(layer_l), k))
    return rows


# --------------------------------------------------------------------------------------------
# claim 7


def _se(rows: pd.DataFrame) -> pd.Series:
    """Per-row standard errors of the 95% intervals (:func:`~.ledger.se_from_ci`)."""
    return se_from_ci(rows.ci_low, rows.ci_high)


def _retrieval_share(part: pd.DataFrame) -> tuple[float, float, float, dict[str, float]]:
    """Mean over heads of ``1 - frac_global`` with a conservative interval; the three shares."""
    glob = part[part.metric == "frac_global"]
    if glob.empty:
        return math.nan, math.nan, math.nan, {}
    value = float(1 - glob.value.mean())
    se = float(_se(glob).mean())
    shares = {
        m.removeprefix("frac_"): float(part.loc[part.metric == m, "value"].mean())
        for m in ("frac_single", "frac_metastable", "frac_global")
    }
    return value, value - Z95 * se, value + Z95 * se, shares


def _fmt_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.3f}" for name, v in shares.items()) or "no rows"


def _regime_row(data: pd.DataFrame, task: str, k: int | None) -> Claim:
    part = data[data.task == task]
    icl = part[part.prompt_kind == "icl"]
    zero = part[part.prompt_kind == "zero_shot"]
    v, lo, hi, s_icl = _retrieval_share(icl)
    c, c_lo, c_hi, s_zero = _retrieval_share(zero)
    n_heads = len(icl[icl.metric == "frac_global"][["layer", "head"]].drop_duplicates())
    n_blocks = icl.layer.nunique()
    keys = {
        kind: float(p.loc[p.metric == "n_keys", "value"].mean())
        for kind, p in (("icl", icl), ("zero", zero))
    }
    n_q = int(icl.n.max()) if len(icl) else 0
    return Claim(
        claim_id="7a",
        claim=f"{CLAIM_7}: under context more (head, query) pairs retrieve (single-pattern or "
        "metastable) rather than average globally",
        test=f"share of (head, query) pairs in the single-pattern or metastable regime "
        f"(1 - frac_global), mean over the {n_heads} heads of {n_blocks} blocks, ICL against "
        "zero-shot on the same queries; supported means the share rises under ICL; margin "
        f"{REGIME_MARGIN:g}. Per-head intervals averaged (se of a mean <= mean of the se's: "
        "conservative)",
        reads=f"hopfield_heads: task {task}, metric frac_global (and frac_single, "
        "frac_metastable, n_keys), prompt_kind icl and zero_shot, every layer and head",
        task=task,
        value=v,
        ci_low=lo,
        ci_high=hi,
        control="zero-shot share of the same heads and queries",
        control_value=c,
        control_ci_low=c_lo,
        control_ci_high=c_hi,
        kind="difference",
        margin=REGIME_MARGIN,
        figure=f"hopfield_heads-{task}",
        note=f"Regime shares over (head, query) pairs, n = {n_q} queries: ICL "
        f"{_fmt_shares(s_icl)}; zero-shot {_fmt_shares(s_zero)}. The global cut-off is "
        f"k90 >= 0.5 n_keys and ICL prompts are longer (mean {keys['icl']:.0f} keys vs "
        f"{keys['zero']:.0f}), so part of a rise can be prompt length rather than retrieval; "
        "and many single-pattern heads retrieve only the attention sink (sink_mass)."
        + _shots_note(k),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def head_name(layer: int, head: int) -> str:
    """``L17H3``: block 17, query head 3."""
    return f"L{int(layer)}H{int(head)}"


def label_reading_heads(icl: pd.DataFrame, top: int = TOP_HEADS) -> pd.DataFrame:
    """The ``top`` heads by mean ICL ``label_mass`` (ties by layer, head): one task's rows."""
    mass = icl[icl.metric == "label_mass"].sort_values(
        ["value", "layer", "head"], ascending=[False, True, True], kind="mergesort"
    )
    return mass.head(top)


def gold_share(icl: pd.DataFrame, heads: pd.DataFrame) -> tuple[float, float, float]:
    """``sum gold_label_mass / sum label_mass`` over ``heads``, with a conservative interval.

    Linearised ratio ``R = G / M``: ``se(R) ~ se(G - R M) / M <= (se(G) + R se(M)) / M`` for any
    correlation of ``G`` and ``M``, and ``se`` of a sum over heads <= the sum of their ``se``.
    """
    keys = heads[["layer", "head"]]
    gold = icl[icl.metric == "gold_label_mass"].merge(keys, on=["layer", "head"])
    mass = icl[icl.metric == "label_mass"].merge(keys, on=["layer", "head"])
    g, m = float(gold.value.sum()), float(mass.value.sum())
    if not len(gold) or not len(mass) or m <= 0:
        return math.nan, math.nan, math.nan
    r = g / m
    se_g = float(_se(gold).sum())
    se_m = float(_se(mass).sum())
    se = (se_g + r * se_m) / m
    return r, r - Z95 * se, r + Z95 * se


def _gold_row(data: pd.DataFrame, task: str, manifest: dict, k: int | None) -> Claim:
    icl = data[(data.task == task) & (data.prompt_kind == "icl")]
    heads = label_reading_heads(icl)
    r, lo, hi = gold_share(icl, heads)
    n_k = n_classes(task, manifest)
    chance = 1 / n_k if n_k else math.nan
    gold = icl[icl.metric == "gold_label_mass"].set_index(["layer", "head"]).value
    listed = ", ".join(
        f"{head_name(h['layer'], h['head'])} (label mass {h['value']:.3f}, own class "
        f"{_ratio(gold.get((h['layer'], h['head']), math.nan), h['value']):.2f})"
        for _, h in heads.iterrows()
    )
    return Claim(
        claim_id="7b",
        claim=f"{CLAIM_7}: label-reading heads attend to the demonstrations of the query's own "
        "class more than to the others",
        test=f"label-reading heads = the {len(heads)} heads with the largest mean ICL label_mass "
        "(chosen by label mass, not by the share tested); share = sum gold_label_mass / sum "
        f"label_mass over them, against 1/K (K = {n_k}: the share when a head ignores the class, "
        "every class having as many demonstrations); supported means above 1/K; margin "
        f"{GOLD_SHARE_MARGIN:g}. Interval: linearised ratio, se <= (se(sum gold) + share * "
        "se(sum label)) / sum label, per-head se's summed (any correlation: conservative)",
        reads=f"hopfield_heads: task {task}, prompt_kind icl, metrics label_mass and "
        "gold_label_mass of the listed heads",
        task=task,
        value=r,
        ci_low=lo,
        ci_high=hi,
        control="1/K (attention blind to the class)",
        control_value=chance,
        control_ci_low=chance,
        control_ci_high=chance,
        kind="difference",
        margin=GOLD_SHARE_MARGIN,
        figure=f"hopfield_heads-{task}",
        note=f"Heads used: {listed or 'none'}. The table holds per-head means over queries, "
        "not per-query shares, so the interval is a bound valid for any correlation between "
        "heads and between own-class and all-label mass: wide by construction."
        + ("" if n_k else " K is not in the manifest: no verdict.")
        + _shots_note(k),
    )


@register_claim("7")
def claim_heads(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """7a (retrieval regimes under ICL vs zero-shot) and 7b (own-class share vs 1/K)."""
    table = tables.get("hopfield_heads")
    if table is None or table.empty:
        return []
    data, k = _at_largest_k(table)
    tasks = list(data.task.unique())
    regime = [_regime_row(data, t, k) for t in tasks]
    gold = [_gold_row(data, t, manifest, k) for t in tasks]
    rows: list[Claim] = []
    for group in (regime, gold):
        rows.extend(group)
        ok = [r for r in group if math.isfinite(r.value) and math.isfinite(r.control_value)]
        if len(tasks) > 1 and len(ok) == len(group):
            v, lo, hi, c, c_lo, c_hi = _pooled(group)
            first = group[0]
            rows.append(
                Claim(
                    claim_id=first.claim_id,
                    claim=first.claim,
                    test=f"mean over the {len(tasks)} tasks of each task's value and control "
                    "(tasks as independent samples); each task's row gives its test",
                    reads=first.reads.replace(f"task {first.task}", f"tasks {', '.join(tasks)}"),
                    task="all",
                    value=v,
                    ci_low=lo,
                    ci_high=hi,
                    control=f"mean over tasks of: {first.control}",
                    control_value=c,
                    control_ci_low=c_lo,
                    control_ci_high=c_hi,
                    kind="difference",
                    margin=first.margin,
                    figure="",
                    note="Pooled over tasks: see each task's row for its figure and details."
                    + _shots_note(k),
                )
            )
    return rows

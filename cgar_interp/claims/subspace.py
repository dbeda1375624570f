"""Claim 4: context localises a memory subspace, against controls from the model.

It reads the subspace probe's per-query table ``subspace_queries``
(:mod:`cgar_interp.probes.subspace`): per eval query ``q`` and residual layer, the share of the
shift ``s_q = h_icl - h_zero`` (last position) in the label subspace span{W_U[label]}
(``label_energy``), in the span of the readout rows of ``K`` frequency-matched non-label tokens
(``nonlabel_energy``; same count as the labels, the nearest token ids of the labels' shape:
BPE ids follow merge rank, a proxy for frequency), and the label share of the random-label
prompts' shift ``r_q = h_icl_random - h_zero`` on the same query (``random_label_energy``; Min
et al. 2022's random labels). Both controls are built from the model and can fail, unlike a
Haar-random subspace, whose share ``K/d`` almost any model-derived vector exceeds.

The claim is decided at one pre-specified layer, the last residual layer
``L = manifest["architecture"]["n_layers"]`` (the paper's ``c = L``, the residual the decode
reads): no layer is selected on the outcome (``selected_on = "pre-specified"``). The ledger
decides each row by the paired bootstrap over the eval queries (value and control on the same
queries):

- 4a (``key = "label_vs_nonlabel"``): ``label_energy`` against ``nonlabel_energy``. Supported:
  the shifts put more of their energy on the label tokens' readout directions than on those of
  non-label tokens of about the same frequency, so the localisation is specific to the labels,
  not a property of any frequent word's unembedding (their common component, say).
- 4b (``key = "true_vs_random_labels"``): ``label_energy`` of the true-label shift against
  ``random_label_energy``. Supported: demonstrations with the true input-label mapping
  localise the shift more on the label subspace than demonstrations with random labels. Not
  supported means the localisation comes with the answer format (label words after the
  inputs, which random labels keep), not with the mapping. *Pending* when the run has no
  random-label prompts.

The Haar-random comparisons (the principal angle of the top-k shift subspace to the label
subspace, cbar's energy in it, against the random band) stay in the row's note, as
description: a control that cannot fail decides nothing. A run from before the per-query table
(no ``subspace_queries``) is decided as before, from the aggregate rows against the random band
by the ledger's normal approximation, and its rows say so.

The label subspace and the controls differ per task (``K``), so the claim is not pooled over
tasks.
"""

from __future__ import annotations

import json
import math

import pandas as pd

from ..shots import shot_counts
from .base import PENDING, UNTESTABLE, Claim, ClaimDefinition
from .per_query import paired, paired_fields, query_table, select, values
from .sweep import at_largest_k_noted, shots_note

# The smallest advantage in energy share (of |s_q|^2) that counts: 0.01 is at least the whole
# share a Haar-random subspace of the labels' dimension takes (K/d <= 0.01 for K <= 5 at
# d = 576, the smallest model here, and far less at d = 4096), so a smaller advantage over the
# non-label tokens is no larger than what any K directions hold by chance.
NONLABEL_MARGIN = 0.01
# The same unit for the true- against the random-label shift: a difference below 0.01 of the
# shift's energy is within what a random K-dimensional subspace holds, too small to say that
# the demonstrated mapping, rather than the format, places the shift on the labels.
RANDOM_LABELS_MARGIN = 0.01
# the old run's comparisons against the Haar band (no per-query values)
ANGLE_MARGIN_DEG = 5.0
ENERGY_MARGIN = 0.05

TITLE = "Context localises a memory subspace"
QUERIES = "subspace_queries"


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


LEGACY_NOTE = (
    "Old run without per-query values (no subspace_queries table): the control is a "
    "Haar-random subspace or direction, which almost any model-derived vector beats (it "
    "cannot fail), and the row is decided by the normal approximation. Rerun the subspace "
    "probe for the model-derived controls. "
)


def _subspace_row(data: pd.DataFrame, task: str, metric: str, layer_l: int, k: int | None):
    """An old run's row: ``metric`` at layer L against the Haar-random band."""
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
        "selected_on": "pre-specified",
        "key": f"haar_{metric}",
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
            claim=f"{TITLE}: the shifts h_icl - h_zero lie closer to the label subspace "
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
            note=LEGACY_NOTE
            + scan
            + raw
            + layer_note
            + (
                f" Mean principal angle at that layer: {mean_angle.value.iloc[0]:.1f} deg."
                if len(mean_angle)
                else ""
            )
            + shots_note(k),
            **common,
        )
    return Claim(
        claim=f"{TITLE}: the context vector cbar puts more of its energy in the label subspace "
        f"span{{{label}}} than a random direction does",
        test=f"at the pre-specified last residual layer L = {layer_l} (no layer selected on the "
        "outcome), cbar_label_energy = |P_label cbar|^2 / |cbar|^2 against a random direction's "
        "(the control interval is the random band, 2.5-97.5% of the draws); supported means "
        f"larger than random; margin {margin:g} (share of |cbar|^2)",
        reads=f"subspace: task {task}, metric cbar_label_energy, subject shift and random, "
        f"layer {layer}",
        control="random direction: mean energy share of the draws, band = 2.5-97.5%",
        note=LEGACY_NOTE
        + scan
        + (
            f" At layer {layer} cbar has {value:.3f} of its energy in the label subspace, "
            f"{value / control:.1f} times a random direction's {control:.4f}; supported means "
            "more than random, not that cbar lies mostly in the label subspace."
            if math.isfinite(value) and math.isfinite(control) and control > 0
            else ""
        )
        + layer_note
        + shots_note(k),
        **common,
    )


def _sweep_k(table: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """The largest k's rows, and that k only where the table holds several (a run of one k
    is tagged ``shots = k`` too, and is no sweep to note)."""
    data, k = at_largest_k_noted(table)
    return data, k if len(shot_counts(table)) > 1 else None


def legacy_rows(table: pd.DataFrame, manifest: dict) -> list[Claim]:
    """An old run's claim 4 (no per-query table): the aggregate rows against the Haar band."""
    data, k = _sweep_k(table)
    layer_l = _layer_l(data[data.subject == "shift"], data, manifest)
    rows = []
    for task in data.task.unique():
        for metric in SUBSPACE_METRICS:
            rows.append(_subspace_row(data, task, metric, int(layer_l), k))
    return rows


def _layer_l(shift_rows: pd.DataFrame, data: pd.DataFrame, manifest: dict) -> int:
    """The pre-specified layer: the manifest's ``n_layers``, else the table's last."""
    layer_l = (manifest.get("architecture") or {}).get("n_layers")
    if layer_l is None:
        layer_l = int(shift_rows.layer.max()) if len(shift_rows) else int(data.layer.max())
    return int(layer_l)


def _aggregate_value(table, task, layer, subject, metric) -> float:
    """``value`` of one aggregate row (NaN when absent)."""
    if table is None:
        return math.nan
    sel = table[
        (table.task == task)
        & (table.layer == layer)
        & (table.subject == subject)
        & (table.metric == metric)
    ]
    return float(sel.value.iloc[0]) if len(sel) else math.nan


def haar_note(table: pd.DataFrame | None, task: str, layer: int) -> str:
    """The Haar-random comparisons at ``layer``, as description (a control that cannot fail)."""
    if table is None:
        return ""

    def get(subject, metric):
        return _aggregate_value(table, task, layer, subject, metric)

    parts = []
    angle, angle_r = get("shift", "angle_min_deg"), get("random", "angle_min_deg")
    if math.isfinite(angle) and math.isfinite(angle_r):
        parts.append(
            f"smallest principal angle of the top-k shift subspace to the label subspace "
            f"{angle:.1f} deg (a Haar-random subspace: {angle_r:.1f} deg)"
        )
    cbar, cbar_r = get("shift", "cbar_label_energy"), get("random", "cbar_label_energy")
    if math.isfinite(cbar) and math.isfinite(cbar_r):
        parts.append(
            f"cbar's energy share in the label subspace {cbar:.3f} (a random direction: "
            f"{cbar_r:.4f} = K/d)"
        )
    if not parts:
        return ""
    return (
        f" Haar-random comparisons at layer {layer}, descriptive only (almost any "
        "model-derived vector beats them: they cannot fail): " + "; ".join(parts) + "."
    )


def _tokens_note(table: pd.DataFrame | None, task: str) -> tuple[str, str]:
    """``(ids, texts)`` of the frequency-matched control tokens, from the aggregate table."""
    if table is None or "nonlabel_ids" not in table.columns:
        return "", ""
    sel = table[table.task == task]
    if sel.empty:
        return "", ""
    ids = json.loads(str(sel.nonlabel_ids.iloc[0]))
    texts = json.loads(str(sel.nonlabel_tokens.iloc[0])) if "nonlabel_tokens" in sel else []
    return ", ".join(str(i) for i in ids), ", ".join(repr(t) for t in texts)


def _pick_layer(q: pd.DataFrame, task: str, layer_l: int) -> tuple[int | None, str]:
    """Layer L if the task's per-query rows have it, else the last one below; and a note."""
    present = sorted(
        int(x) for x in select(q, "eval", task=task, subject="shift", metric="label_energy").layer
    )
    below = [x for x in dict.fromkeys(present) if x <= layer_l]
    if not below:
        return None, f" The per-query table has no label_energy rows at or below layer {layer_l}."
    layer = below[-1]
    if layer == layer_l:
        return layer, ""
    return layer, (
        f" The per-query table has no rows at layer {layer_l}; read at layer {layer}, the last "
        "one it has."
    )


def _label_vs_nonlabel(q, table, task, layer, layer_l, k, layer_note) -> Claim:
    label = _label_name(table)
    ids, texts = _tokens_note(table, task)
    tokens = f" (token ids {ids}: {texts})" if ids else ""
    common = dict(
        claim_id="4a",
        claim=f"{TITLE}: the shifts h_icl - h_zero put more of their energy on the label "
        f"tokens' readout directions span{{{label}}} than on those of frequency-matched "
        "non-label tokens",
        test=f"at the pre-specified last residual layer L = {layer_l} (no layer selected on the "
        "outcome), per eval query q with s_q = h_icl - h_zero: label_energy = |P_label s_q|^2 "
        "/ |s_q|^2 against nonlabel_energy = |P_ctrl s_q|^2 / |s_q|^2 on the same query, "
        "P_ctrl the projection on the readout rows of K non-label tokens (one per label: the "
        "nearest token id of the label's shape; BPE ids follow merge rank, a proxy for "
        f"frequency); supported means more energy on the labels'; margin {NONLABEL_MARGIN:g} "
        "(share of |s_q|^2)",
        reads=f"{QUERIES}: task {task}, subject shift, layer {layer}, metric label_energy and "
        "nonlabel_energy, split eval",
        task=task,
        control=f"the same shifts' share on K frequency-matched non-label tokens{tokens}",
        margin=NONLABEL_MARGIN,
        selected_on="pre-specified",
        key="label_vs_nonlabel",
        figure=f"subspace-{task}",
    )
    if layer is None:
        return Claim(**common, kind="untestable", verdict=UNTESTABLE, note=layer_note.strip())
    x, y = paired(
        values(q, "eval", task=task, subject="shift", layer=layer, metric="label_energy"),
        values(q, "eval", task=task, subject="shift", layer=layer, metric="nonlabel_energy"),
    )
    if len(x) == 0:
        return Claim(
            **common,
            kind="untestable",
            verdict=UNTESTABLE,
            note=f"no eval query has both label_energy and nonlabel_energy at layer {layer}.",
        )
    stats = paired_fields(x, y)
    ratio = (
        f" The label directions take {stats['value'] / stats['control_value']:.2f} times the "
        "non-label tokens' share."
        if stats["control_value"] > 0
        else ""
    )
    note = (
        "Supported means the localisation is specific to the label tokens' directions, not a "
        "property of any word's unembedding of about their frequency (their common "
        "component, say); it does not mean the shifts lie mostly in the label subspace."
        + ratio
        + haar_note(table, task, layer)
        + layer_note
        + shots_note(k)
    )
    return Claim(**common, kind="difference", note=note, **stats)


def _true_vs_random(q, table, task, layer, layer_l, k, layer_note) -> Claim:
    label = _label_name(table)
    common = dict(
        claim_id="4b",
        claim=f"{TITLE}: demonstrations with the true input-label mapping put more of the "
        f"shift's energy on the label subspace span{{{label}}} than demonstrations whose "
        "labels are drawn at random",
        test=f"at the pre-specified last residual layer L = {layer_l} (no layer selected on the "
        "outcome), per eval query q: label_energy of the true-label shift s_q = h_icl - h_zero "
        "against random_label_energy = |P_label r_q|^2 / |r_q|^2 of the random-label shift "
        "r_q = h_icl_random - h_zero on the same query (Min et al. 2022: each demonstration's "
        "label drawn at random, independent of its input); supported means the true mapping "
        f"localises more; margin {RANDOM_LABELS_MARGIN:g} (share of the shift's energy)",
        reads=f"{QUERIES}: task {task}, subject shift, layer {layer}, metric label_energy and "
        "random_label_energy, split eval",
        task=task,
        control="the random-label prompts' shift on the same queries",
        margin=RANDOM_LABELS_MARGIN,
        selected_on="pre-specified",
        key="true_vs_random_labels",
        figure=f"subspace-{task}",
    )
    if layer is None:
        return Claim(**common, kind="untestable", verdict=UNTESTABLE, note=layer_note.strip())
    random = values(
        q, "eval", task=task, subject="shift", layer=layer, metric="random_label_energy"
    )
    if random.empty:
        return Claim(
            **common,
            kind="pending",
            verdict=PENDING,
            rule="no verdict without the random-label prompts",
            note="the run has no random-label shifts (random_label_energy): run the subspace "
            "probe with random_labels = true (the default), whose suite then builds the "
            "icl_random prompts.",
        )
    x, y = paired(
        values(q, "eval", task=task, subject="shift", layer=layer, metric="label_energy"), random
    )
    if len(x) == 0:
        return Claim(
            **common,
            kind="untestable",
            verdict=UNTESTABLE,
            note=f"no eval query has both label_energy and random_label_energy at layer {layer}.",
        )
    stats = paired_fields(x, y)
    note = (
        "Not supported (an advantage below the margin, or none) means the shift's "
        "localisation on the label subspace comes with the answer format -- label words after "
        "the inputs, which random labels keep -- not with the demonstrated mapping."
        + layer_note
        + shots_note(k)
    )
    return Claim(**common, kind="difference", note=note, **stats)


def _label_name(table: pd.DataFrame | None) -> str:
    readout = (
        str(table.readout.iloc[0])
        if table is not None and "readout" in table.columns and len(table)
        else "unembed"
    )
    return "W_U[label]" if readout == "unembed" else "gamma * W_U[label]"


def claim_subspace(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """4a (label against frequency-matched non-label tokens) and 4b (true against random
    labels), per task, from the per-query energies; an old run without them gets its Haar
    rows (:func:`legacy_rows`)."""
    table = tables.get("subspace")
    q = query_table(tables, "subspace")
    if q is None or "label_energy" not in set(q.metric):
        if table is None or table.empty:
            return []
        return legacy_rows(table, manifest)
    data, k = (None, None) if table is None or table.empty else _sweep_k(table)
    if data is None:
        k = _sweep_k(tables[QUERIES])[1]
    shift = q[q.subject == "shift"]
    layer_l = _layer_l(shift, q, manifest)
    rows = []
    for task in sorted(q.task.unique()):
        layer, layer_note = _pick_layer(q, task, layer_l)
        args = (q, data, task, layer, layer_l, k, layer_note)
        rows += [_label_vs_nonlabel(*args), _true_vs_random(*args)]
    return rows


SUBSPACE_CLAIM = ClaimDefinition("4", TITLE, ("subspace", QUERIES), claim_subspace)

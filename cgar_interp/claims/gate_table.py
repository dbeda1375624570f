"""The context-gate table as claims 1-3 read it, their choice of lambda and their rows.

Claims 1-3 (:mod:`.gating`, :mod:`.patching`, :mod:`.mapping`) read
``tables/context_gate_queries.parquet``: per query the metrics of every grid point (keys task,
mode, vector, q_layer, c_layer, lam, metric; ``split`` fit or eval). The best lambda is chosen
on the *fit* queries (:func:`choose_lambda`) and the row compares, on the *eval* queries, that
lambda with its control query by query (:func:`paired_row`). A run without the per-query table
(made before it existed) is read from ``tables/context_gate.parquet`` as before: lambda chosen
on the eval queries and the rows decided by the normal approximation, which the rows say.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..shots import at_largest_k
from .base import Claim
from .per_query import paired, paired_fields, query_table, select, values

GATE = "context_gate"
METRIC_NAMES = {
    "label_mass": "label-token mass",
    "vocab_correct": "full-vocab accuracy",
    "label_correct": "accuracy among the labels",
}


def gate_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The context-gate table at one k (the largest of a sweep, with its zero-shot rows)."""
    gate = tables.get(GATE)
    if gate is None or gate.empty:
        return None
    gate = at_largest_k(gate)
    return gate


def row_at(frame: pd.DataFrame, lam: float) -> pd.Series | None:
    """The first row at ``lambda = lam`` (None if there is none)."""
    sel = frame[frame.lam == lam]
    return None if sel.empty else sel.iloc[0]


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The row of the largest value among lambda > 0."""
    sel = frame[frame.lam > 0]
    return None if sel.empty else sel.loc[sel.value.idxmax()]


def gate_n_layers(gate: pd.DataFrame, manifest: dict) -> int:
    """``L``: the manifest's layer count, else the largest query layer of the table."""
    arch = manifest.get("architecture") or {}
    return int(arch.get("n_layers") or gate.q_layer.max())


def difference_row(claim_id, claim, test, reads, task, best, base, control, margin, figure, note):
    """A ``difference`` row: ``best``'s value and interval against ``base``'s."""
    return Claim(
        claim_id=claim_id,
        claim=claim,
        test=test,
        reads=reads,
        task=task,
        value=float(best.value),
        ci_low=float(best.ci_low),
        ci_high=float(best.ci_high),
        control=control,
        control_value=float(base.value),
        control_ci_low=float(base.ci_low),
        control_ci_high=float(base.ci_high),
        margin=margin,
        figure=figure,
        note=note,
    )


IN_SAMPLE = "eval (in-sample: no fit queries in the table)"


def gate_queries(tables: dict[str, pd.DataFrame]) -> pd.DataFrame | None:
    """The per-query context-gate table at one k (None for a run made before it existed)."""
    return query_table(tables, GATE)


def choose_lambda(
    queries: pd.DataFrame | None, gate: pd.DataFrame, **keys
) -> tuple[float | None, str, float]:
    """``(lambda*, split it was chosen on, its mean there)``: the lambda > 0 with the largest
    mean of ``keys``' metric on the *fit* queries (ties: the smallest lambda). Without fit
    values (an old run): the largest eval mean of the tidy ``gate`` rows, labelled in-sample."""
    if queries is not None:
        fit = select(queries, "fit", **keys)
        fit = fit[fit.lam > 0]
        if len(fit):
            means = fit.groupby("lam").value.mean().sort_index()
            lam = float(means.idxmax())
            return lam, "fit", float(means.max())
    sel = _tidy(gate, **keys)
    sel = sel[sel.lam > 0]
    if sel.empty:
        return None, "", math.nan
    best = sel.sort_values("lam").loc[lambda f: f.value == f.value.max()].iloc[0]
    return float(best.lam), IN_SAMPLE, float(best.value)


def _tidy(gate: pd.DataFrame, **keys) -> pd.DataFrame:
    mask = np.ones(len(gate), dtype=bool)
    for name, want in keys.items():
        col = gate[name]
        mask &= (
            np.isclose(col.to_numpy(dtype=float), want)
            if isinstance(want, float)
            else (col == want).to_numpy()
        )
    return gate[mask]


def in_sample_best(gate: pd.DataFrame, **keys) -> str:
    """The eval queries' own best lambda (> 0) and its mean: the in-sample figure, for notes."""
    sel = _tidy(gate, **keys)
    sel = sel[sel.lam > 0]
    if sel.empty:
        return ""
    best = sel.loc[sel.value.idxmax()]
    return (
        f"In-sample (eval queries choosing their own best lambda, a winner's curse): lambda = "
        f"{best.lam:g}, {best.value:.3f}."
    )


def paired_row(
    queries: pd.DataFrame | None,
    gate: pd.DataFrame,
    value_keys: dict,
    control_keys: dict,
    **claim,
) -> Claim | None:
    """A ``difference`` row: per eval query, ``value_keys``' metric against ``control_keys``'
    on the same queries (paired samples), or, without the per-query table, the two tidy rows
    (normal approximation). ``claim``: the Claim's other fields."""
    if queries is not None:
        a = values(queries, "eval", **value_keys)
        b = values(queries, "eval", **control_keys)
        if len(a) and len(b):
            va, vb = paired(a, b)
            if len(va):
                return Claim(**paired_fields(va, vb), **claim)
    a, b = _tidy(gate, **value_keys), _tidy(gate, **control_keys)
    if a.empty or b.empty:
        return None
    ra, rb = a.iloc[0], b.iloc[0]
    return Claim(
        value=float(ra.value),
        ci_low=float(ra.ci_low),
        ci_high=float(ra.ci_high),
        control_value=float(rb.value),
        control_ci_low=float(rb.ci_low),
        control_ci_high=float(rb.ci_high),
        n=int(ra.n),
        **claim,
    )

"""The context-gate table as claims 1-3 read it, and their difference row.

Claims 1-3 (:mod:`.gating`, :mod:`.patching`, :mod:`.mapping`) all read
``tables/context_gate.parquet`` (rows: task, mode, vector, q_layer, c_layer, lam, metric,
value, n, ci_low, ci_high; with ``shots`` in newer runs, the largest k is used).
"""

from __future__ import annotations

import pandas as pd

from ..shots import at_largest_k
from .base import Claim

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

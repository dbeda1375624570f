"""Claim 1: the context gate raises label mass and full-vocab accuracy with lambda.

Decode mode at ``c = q = L``: the best lambda > 0 against lambda = 0 (the zero-shot residual
decoded), per task, for label-token mass and full-vocab accuracy (:mod:`.gate_table`).
"""

from __future__ import annotations

import pandas as pd

from .base import Claim, ClaimDefinition
from .gate_table import (
    GATE,
    METRIC_NAMES,
    best_row,
    difference_row,
    gate_n_layers,
    gate_table,
    row_at,
)

TITLE = "Gating raises label mass and full-vocab accuracy with lambda"


def gating_raises_label_mass(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 1: in decode mode at c = q = L, the best lambda beats lambda = 0."""
    gate = gate_table(tables)
    if gate is None:
        return []
    n_layers = gate_n_layers(gate, manifest)
    rows = []
    for task in sorted(gate.task.unique()):
        for metric in ("label_mass", "vocab_correct"):
            sel = gate[
                (gate.task == task)
                & (gate["mode"] == "decode")
                & (gate.vector == "context")
                & (gate.c_layer == n_layers)
                & (gate.q_layer == n_layers)
                & (gate.metric == metric)
            ]
            base, best = row_at(sel, 0.0), best_row(sel)
            if base is None or best is None:
                continue
            lams = ", ".join(f"{lam:g}" for lam in sorted(sel.lam.unique()))
            rows.append(
                difference_row(
                    "1",
                    TITLE,
                    f"decode mode, c = q = {n_layers}: {METRIC_NAMES[metric]} at the best "
                    f"lambda ({best.lam:g}) against lambda = 0",
                    f"context_gate: mode=decode, vector=context, c_layer=q_layer={n_layers}, "
                    f"metric={metric}, lam in ({lams})",
                    task,
                    best,
                    base,
                    f"lambda = 0 (the zero-shot residual decoded), {METRIC_NAMES[metric]}",
                    0.02,
                    f"context_gate-{task}",
                    f"best of {int((sel.lam > 0).sum())} lambdas > 0 on the same eval queries: a selection "
                    "the correction does not cover",
                )
            )
    return rows


GATING_CLAIM = ClaimDefinition("1", TITLE, (GATE,), gating_raises_label_mass)

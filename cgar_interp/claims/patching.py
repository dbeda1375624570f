"""Claim 2: the gate's effect survives the real intervention, not only the first-order decode.

Patch mode (``lambda cbar^(c)`` added to the zero-shot residual at each context layer
``c < L``, last position, and the remaining blocks run): the best lambda > 0 against
lambda = 0 (the unpatched zero-shot pass), per task and layer, for label-token mass and
full-vocab accuracy (:mod:`.gate_table`).
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

TITLE = "The effect survives the real intervention, not only the first-order decode"


def survives_patching(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 2: in patch mode at each c < L, the best lambda beats lambda = 0."""
    gate = gate_table(tables)
    if gate is None:
        return []
    n_layers = gate_n_layers(gate, manifest)
    patch = gate[(gate["mode"] == "patch") & (gate.vector == "context")]
    rows = []
    for task in sorted(patch.task.unique()):
        for c in sorted(int(c) for c in patch.c_layer.unique() if c < n_layers):
            for metric in ("label_mass", "vocab_correct"):
                sel = patch[(patch.task == task) & (patch.c_layer == c) & (patch.metric == metric)]
                base, best = row_at(sel, 0.0), best_row(sel)
                if base is None or best is None:
                    continue
                rows.append(
                    difference_row(
                        "2",
                        TITLE,
                        f"patch mode at c = {c}: {METRIC_NAMES[metric]} at the best lambda "
                        f"({best.lam:g}) against lambda = 0",
                        f"context_gate: mode=patch, vector=context, c_layer={c}, metric={metric}",
                        task,
                        best,
                        base,
                        "lambda = 0 (the unpatched zero-shot pass)",
                        0.02,
                        f"context_gate-{task}",
                        "best lambda chosen on the same eval queries",
                    )
                )
    return rows


PATCHING_CLAIM = ClaimDefinition("2", TITLE, (GATE,), survives_patching)

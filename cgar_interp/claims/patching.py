"""Claim 2: the gate's effect survives the real intervention, not only the first-order decode.

Patch mode (``lambda cbar^(c)`` added to the zero-shot residual at each context layer
``c < L``, last position, and the remaining blocks run): per task, layer and metric, the best
lambda > 0 chosen on the *fit* queries against lambda = 0 (the unpatched zero-shot pass) on the
*eval* queries, query by query (:mod:`.gate_table`).
"""

from __future__ import annotations

import pandas as pd

from .base import Claim, ClaimDefinition
from .gate_table import (
    GATE,
    METRIC_NAMES,
    choose_lambda,
    gate_n_layers,
    gate_queries,
    gate_table,
    in_sample_best,
    paired_row,
)

TITLE = "The effect survives the real intervention, not only the first-order decode"
MARGIN = 0.02


def survives_patching(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 2: in patch mode at each c < L, the fit-chosen lambda beats lambda = 0."""
    gate = gate_table(tables)
    if gate is None:
        return []
    queries = gate_queries(tables)
    n_layers = gate_n_layers(gate, manifest)
    patch = gate[(gate["mode"] == "patch") & (gate.vector == "context")]
    rows = []
    for task in sorted(patch.task.unique()):
        for c in sorted(int(c) for c in patch.c_layer.unique() if c < n_layers):
            for metric in ("label_mass", "vocab_correct"):
                keys = dict(task=task, mode="patch", vector="context", c_layer=c, metric=metric)
                lam, split, fit_mean = choose_lambda(queries, gate, **keys)
                if lam is None:
                    continue
                row = paired_row(
                    queries,
                    gate,
                    {**keys, "lam": lam},
                    {**keys, "lam": 0.0},
                    claim_id="2",
                    claim=TITLE,
                    test=f"patch mode at c = {c}: {METRIC_NAMES[metric]} at lambda* = {lam:g} "
                    f"(chosen on the {split} queries) against lambda = 0, on the eval queries",
                    reads=f"context_gate_queries: mode=patch, vector=context, c_layer={c}, "
                    f"metric={metric}; fit split chooses lambda*, eval split is judged",
                    task=task,
                    control="lambda = 0 (the unpatched zero-shot pass)",
                    margin=MARGIN,
                    selected_on=split,
                    key=f"c={c}/{metric}",
                    figure=f"context_gate-{task}",
                    note=f"lambda* = {lam:g} has mean {fit_mean:.3f} on the {split} queries. "
                    + in_sample_best(gate, **keys),
                )
                if row is not None:
                    rows.append(row)
    return rows


PATCHING_CLAIM = ClaimDefinition("2", TITLE, (GATE, f"{GATE}_queries"), survives_patching)

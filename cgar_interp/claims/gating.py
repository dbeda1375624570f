"""Claim 1: the context gate raises label mass and full-vocab accuracy with lambda.

Decode mode at ``c = q = L``: per task and metric (label-token mass, full-vocab accuracy), the
best lambda > 0 is chosen on the *fit* queries (:func:`~.gate_table.choose_lambda`); on the
*eval* queries that lambda is compared with lambda = 0 (the zero-shot residual decoded), query
by query (:mod:`.gate_table`).
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

TITLE = "Gating raises label mass and full-vocab accuracy with lambda"
MARGIN = 0.02


def gating_raises_label_mass(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 1: in decode mode at c = q = L, the fit-chosen lambda beats lambda = 0."""
    gate = gate_table(tables)
    if gate is None:
        return []
    queries = gate_queries(tables)
    n_layers = gate_n_layers(gate, manifest)
    rows = []
    for task in sorted(gate.task.unique()):
        for metric in ("label_mass", "vocab_correct"):
            keys = dict(
                task=task,
                mode="decode",
                vector="context",
                c_layer=n_layers,
                q_layer=n_layers,
                metric=metric,
            )
            lam, split, fit_mean = choose_lambda(queries, gate, **keys)
            if lam is None:
                continue
            lams = ", ".join(f"{x:g}" for x in sorted(gate[gate.task == task].lam.unique()))
            row = paired_row(
                queries,
                gate,
                {**keys, "lam": lam},
                {**keys, "lam": 0.0},
                claim_id="1",
                claim=TITLE,
                test=f"decode mode, c = q = {n_layers}: {METRIC_NAMES[metric]} at lambda* = "
                f"{lam:g} (chosen on the {split} queries) against lambda = 0, on the eval queries",
                reads=f"context_gate_queries: mode=decode, vector=context, "
                f"c_layer=q_layer={n_layers}, metric={metric}, lam in ({lams}); fit split "
                "chooses lambda*, eval split is judged",
                task=task,
                control=f"lambda = 0 (the zero-shot residual decoded), {METRIC_NAMES[metric]}",
                margin=MARGIN,
                selected_on=split,
                key=metric,
                figure=f"context_gate-{task}",
                note=f"lambda* = {lam:g} has mean {fit_mean:.3f} on the {split} queries. "
                + in_sample_best(gate, **keys),
            )
            if row is not None:
                rows.append(row)
    return rows


GATING_CLAIM = ClaimDefinition("1", TITLE, (GATE, f"{GATE}_queries"), gating_raises_label_mass)

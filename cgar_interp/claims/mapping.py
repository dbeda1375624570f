"""Claim 3: the context vector carries the demonstrated mapping, not only the answer format.

``cbar`` against the ``cbar`` of demonstrations with flipped labels (3a: one derangement of the
classes), a seeded random vector of its norm (3b) and the ``cbar`` of demonstrations with random
labels (3c: Min et al.'s control, when the gate ran it), in decode mode at ``c = q = L``
(:mod:`.gate_table`).
"""

from __future__ import annotations

import pandas as pd

from .base import Claim, ClaimDefinition
from .gate_table import GATE, METRIC_NAMES, best_row, difference_row, gate_n_layers, gate_table

TITLE = "The context vector carries the demonstrated mapping, not only the answer format"


def carries_the_mapping(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 3: cbar against the flipped-label cbar, a random vector of its norm and the
    random-label cbar.

    At decode c = q = L and the lambda where cbar's label mass is largest. Against a label
    control the test that matters is accuracy among the labels (the *mapping*): label mass only
    shows the answer format, which demonstrations with wrong labels also carry.
    """
    gate = gate_table(tables)
    if gate is None:
        return []
    n_layers = gate_n_layers(gate, manifest)
    sel = gate[(gate["mode"] == "decode") & (gate.c_layer == n_layers) & (gate.q_layer == n_layers)]
    rows = []
    for task in sorted(sel.task.unique()):
        mine = sel[(sel.task == task) & (sel.vector == "context")]
        best = best_row(mine[mine.metric == "label_mass"])
        if best is None:
            continue
        lam = float(best.lam)
        for control, claim_id, metrics in (
            ("flipped", "3a", ("label_correct", "label_mass")),
            ("random", "3b", ("label_mass",)),
            ("random_labels", "3c", ("label_correct", "label_mass")),
        ):
            other = sel[(sel.task == task) & (sel.vector == control) & (sel.lam == lam)]
            for metric in metrics:
                a = mine[(mine.metric == metric) & (mine.lam == lam)]
                b = other[other.metric == metric]
                if a.empty or b.empty:
                    continue
                what = {
                    "flipped": "cbar from demonstrations with flipped labels (one derangement "
                    "of the classes)",
                    "random": "a seeded random vector of cbar's norm",
                    "random_labels": "cbar from demonstrations with random labels (each "
                    "uniform over the classes, Min et al. 2022)",
                }[control]
                rows.append(
                    difference_row(
                        claim_id,
                        TITLE,
                        f"decode mode, c = q = {n_layers}, lambda = {lam:g} (cbar's best label "
                        f"mass): {METRIC_NAMES[metric]} with cbar against {control}",
                        f"context_gate: mode=decode, c_layer=q_layer={n_layers}, lam={lam:g}, "
                        f"metric={metric}, vector in (context, {control})",
                        task,
                        a.iloc[0],
                        b.iloc[0],
                        what,
                        0.05,
                        f"context_gate-{task}",
                        "label mass measures the answer format, accuracy among the labels the "
                        "mapping"
                        if control != "random"
                        else "",
                    )
                )
    return rows


MAPPING_CLAIM = ClaimDefinition("3", TITLE, (GATE,), carries_the_mapping)

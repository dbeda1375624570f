"""Claim 3: the context vector carries the demonstrated mapping, not only the answer format.

``cbar`` against three controls in decode mode at ``c = q = L``, at the lambda where cbar's
label mass is largest on the *fit* queries, judged on the *eval* queries query by query
(:mod:`.gate_table`):

- 3a ``flipped``: cbar of demonstrations whose labels went through one class-level
  derangement (a consistent wrong mapping: with two classes every label swapped);
- 3b ``random``: a seeded random vector of cbar's norm;
- 3c ``random_labels``: cbar of demonstrations whose labels were drawn at random, independent
  of the input (Min et al., 2022).

Against the label controls the test that matters is accuracy among the labels (the
*mapping*): label mass shows the answer format, which demonstrations with wrong labels also
carry. Runs made before the controls were named have a ``shuffled`` vector: the flipped one.
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
    paired_row,
)

TITLE = "The context vector carries the demonstrated mapping, not only the answer format"
MARGIN = 0.05

CONTROLS = (
    # sub-id, vector, metrics, what it is
    (
        "3a",
        "flipped",
        ("label_correct", "label_mass"),
        "cbar from demonstrations with flipped labels (one class-level derangement)",
    ),
    ("3b", "random", ("label_mass",), "a seeded random vector of cbar's norm"),
    (
        "3c",
        "random_labels",
        ("label_correct", "label_mass"),
        "cbar from demonstrations with random labels (Min et al. 2022)",
    ),
)


def carries_the_mapping(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 3: cbar against flipped-label, random-label and random-vector controls."""
    gate = gate_table(tables)
    if gate is None:
        return []
    queries = gate_queries(tables)
    if "flipped" not in set(gate.vector) and "shuffled" in set(gate.vector):  # an older run
        gate = gate.replace({"vector": {"shuffled": "flipped"}})
        if queries is not None:
            queries = queries.replace({"vector": {"shuffled": "flipped"}})
    n_layers = gate_n_layers(gate, manifest)
    at = dict(mode="decode", c_layer=n_layers, q_layer=n_layers)
    rows = []
    for task in sorted(gate.task.unique()):
        lam, split, fit_mean = choose_lambda(
            queries, gate, task=task, vector="context", metric="label_mass", **at
        )
        if lam is None:
            continue
        for sub, control, metrics, what in CONTROLS:
            for metric in metrics:
                keys = dict(task=task, metric=metric, lam=lam, **at)
                row = paired_row(
                    queries,
                    gate,
                    {**keys, "vector": "context"},
                    {**keys, "vector": control},
                    claim_id=sub,
                    claim=TITLE,
                    test=f"decode mode, c = q = {n_layers}, lambda* = {lam:g} (cbar's best label "
                    f"mass on the {split} queries): {METRIC_NAMES[metric]} with cbar against "
                    f"{control}, on the eval queries",
                    reads=f"context_gate_queries: mode=decode, c_layer=q_layer={n_layers}, "
                    f"lam={lam:g}, metric={metric}, vector in (context, {control})",
                    task=task,
                    control=what,
                    margin=MARGIN,
                    selected_on=split,
                    key=f"{control}/{metric}",
                    figure=f"context_gate-{task}",
                    note=(
                        "label mass measures the answer format, accuracy among the labels the "
                        "mapping. "
                        if control != "random"
                        else ""
                    )
                    + f"lambda* = {lam:g}: cbar's label mass {fit_mean:.3f} on the {split} "
                    "queries.",
                )
                if row is not None:
                    rows.append(row)
    return rows


MAPPING_CLAIM = ClaimDefinition("3", TITLE, (GATE, f"{GATE}_queries"), carries_the_mapping)

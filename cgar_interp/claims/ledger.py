"""The claims ledger: every claim of the paper, the test that decides it, its number, a verdict.

:data:`PAPER_CLAIMS` lists the paper's claims, one module each; :func:`build_ledger` runs them
on a run's tables and decides the difference rows (the rules: :mod:`cgar_interp.claims.base`).

A researcher's claim is a :class:`~cgar_interp.claims.base.ClaimDefinition` in a module of its
own. To make it part of the paper's ledger, add it to :data:`PAPER_CLAIMS`; to run it beside
the paper's without editing this list, pass ``claims=(*PAPER_CLAIMS, mine)`` to
:func:`build_ledger`, or add it to :data:`~cgar_interp.claims.base.EXTRA_CLAIMS` (with
:func:`~cgar_interp.claims.base.register_claim`), which the default list includes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import pandas as pd

from .base import COLUMNS, EXTRA_CLAIMS, VERDICTS, Claim, ClaimDefinition, decide_rows
from .gate_regime import GATE_REGIME_CLAIM
from .gating import GATING_CLAIM
from .head_necessity import HEAD_NECESSITY_CLAIM
from .hopfield_reading import HOPFIELD_READING_CLAIM
from .mapping import MAPPING_CLAIM
from .patching import PATCHING_CLAIM
from .stats import N_BOOT
from .subspace import SUBSPACE_CLAIM
from .theory_fit import THEORY_FIT_CLAIM

PAPER_CLAIMS: tuple[ClaimDefinition, ...] = (
    GATING_CLAIM,  # 1: gating raises label mass and accuracy
    PATCHING_CLAIM,  # 2: the effect survives patching
    MAPPING_CLAIM,  # 3: cbar carries the mapping (against shuffled labels, random)
    SUBSPACE_CLAIM,  # 4: context localises a label subspace
    THEORY_FIT_CLAIM,  # 5: the theory predicts the measurement
    GATE_REGIME_CLAIM,  # 6: the gate is in the unique-fixed-point regime
    HOPFIELD_READING_CLAIM,  # 7: heads read the demonstrations like Hopfield retrieval
    HEAD_NECESSITY_CLAIM,  # 8: the label-reading heads are causally necessary
)
"""The paper's claims, in paper order."""


def default_claims() -> tuple[ClaimDefinition, ...]:
    """The paper's claims, then those a researcher added to ``EXTRA_CLAIMS``."""
    return (*PAPER_CLAIMS, *EXTRA_CLAIMS)


def claim_order(claim_id: str) -> tuple[int, str]:
    """Sort key of a claim id: its number, then the id (``"10"`` after ``"9"``; no number:
    last).

    >>> sorted(["10", "3b", "3", "x", "9"], key=claim_order)
    ['3', '3b', '9', '10', 'x']
    """
    digits = "".join(ch for ch in claim_id if ch.isdigit())
    return (int(digits) if digits else 10**6, claim_id)


def build_ledger(
    tables: dict[str, pd.DataFrame],
    manifest: dict | None = None,
    claims: Iterable[ClaimDefinition] | None = None,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """Every claim on a run's tables: one row per (claim, task, comparison).

    Args:
        tables: the run's tables by name; each claim reads those it declares.
        manifest: the run's settings (architecture, tasks), for the claim functions.
        claims: the claims to run (default :func:`default_claims`); run in claim-id order,
            ids must be unique.

    The verdict rows are decided together (:func:`~cgar_interp.claims.base.decide_rows`: a
    paired bootstrap over queries per row, ``n_boot`` resamples, Holm over every row that
    yields a verdict); every row must end with a verdict of
    :data:`~cgar_interp.claims.base.VERDICTS`.
    """
    manifest = manifest or {}
    definitions = tuple(default_claims() if claims is None else claims)
    ids = [d.claim_id for d in definitions]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"claim ids must be unique; repeated: {', '.join(duplicates)}")
    rows: list[Claim] = []
    for definition in sorted(definitions, key=lambda d: claim_order(d.claim_id)):
        rows.extend(definition.run(tables, manifest))
    rows = [r if r.key else replace(r, key=r.test) for r in rows]
    rows = decide_rows(rows, n_boot=n_boot)
    bad = [r for r in rows if r.verdict not in VERDICTS]
    if bad:
        raise ValueError(f"claim {bad[0].claim_id} has no valid verdict: {bad[0].verdict!r}")
    return pd.DataFrame([{c: getattr(r, c) for c in COLUMNS} for r in rows], columns=COLUMNS)

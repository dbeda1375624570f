"""The claims ledger (``tables/claims.parquet``, the report's first section, ``cgar verdict``).

:mod:`.base` says what a claim is and how a difference is decided; each claim of the paper
lives in a module of its own (:mod:`.gating`, :mod:`.patching`, :mod:`.mapping`,
:mod:`.subspace`, :mod:`.theory_fit`, :mod:`.gate_regime`, :mod:`.hopfield_reading`,
:mod:`.head_necessity`); :mod:`.ledger` lists them (``PAPER_CLAIMS``) and runs them.
"""

from .base import (
    CONSISTENCY,
    EXTRA_CLAIMS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PENDING,
    SUPPORTED,
    VERDICTS,
    Claim,
    ClaimDefinition,
    ClaimRegistry,
    register_claim,
)
from .ledger import PAPER_CLAIMS, build_ledger

__all__ = [
    "CONSISTENCY",
    "EXTRA_CLAIMS",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "PAPER_CLAIMS",
    "PENDING",
    "SUPPORTED",
    "VERDICTS",
    "Claim",
    "ClaimDefinition",
    "ClaimRegistry",
    "build_ledger",
    "register_claim",
]

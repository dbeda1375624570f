"""The claims ledger (``tables/claims.parquet``, the report's first section, ``cgar verdict``).

See :mod:`cgar_interp.claims.ledger` for the rules; each claim lives in a small module.
"""

from .ledger import (
    CONSISTENCY,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PENDING,
    SUPPORTED,
    VERDICTS,
    Claim,
    build_ledger,
    register_claim,
)

__all__ = [
    "CONSISTENCY",
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "PENDING",
    "SUPPORTED",
    "VERDICTS",
    "Claim",
    "build_ledger",
    "register_claim",
]

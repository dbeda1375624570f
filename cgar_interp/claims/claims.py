"""Imports every claim module, so that each registers its claims (ordered by claim id).

Claims 1-3: :mod:`.gate`; 4 and 7: :mod:`.subspace_heads`; 5 and 6: :mod:`.regime`;
8: :mod:`.pending` (until the head-mediation probe lands).
"""

from . import gate, pending, regime, subspace_heads  # noqa: F401

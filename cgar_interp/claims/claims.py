"""Imports every claim module, so that each registers its claims (ordered by claim id).

Claims 1-3: :mod:`.gate`; 4 and 7: :mod:`.subspace_heads`; 5 and 6: :mod:`.regime`;
8: :mod:`.mediation` (pending until a run has the head-mediation probe).
"""

from . import gate, mediation, regime, subspace_heads  # noqa: F401

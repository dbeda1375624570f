"""The context-gated Hopfield model in code (docs/science.md#modern-hopfield-networks and
#context-gated-hopfield-model).

- :mod:`.mhn`: modern Hopfield network (energy, update, separation, well-separated condition,
  storage capacity) and softmax diagnostics for attention probes (entropy, ``n_eff``,
  keys covering 90% of the mass, single / metastable / global classification).
- :mod:`.gate`: the context-gated memory ``GatedMemory(b, u, G, alpha, lam, beta)``: joint
  energy, the self-consistent map ``Phi``, all its fixed points with stability, the uniqueness
  and ``alpha_crit`` conditions, the Theorem 3.1 margin and bound, the label log-odds slope.
- :mod:`.iteration`: batched ``Phi`` and its fixed-point iteration (many starts or trials).
- :mod:`.simulate`: seeded simulations on random memories (tables; their figures are
  :mod:`cgar_interp.figures.simulations`).

This package imports no model code.
"""

from __future__ import annotations

from .gate import (
    FirstOrderMargin,
    FixedPoint,
    GatedMemory,
    GateIteration,
    GateRegime,
    required_margin,
)
from .iteration import iterate_phi, phi_map
from .mhn import (
    MHNIteration,
    StorageCapacity,
    capacity_constant,
    classify_softmax,
    entropy,
    global_fixed_point_unique,
    iterate_to_fixed_point,
    keys_for_mass,
    mhn_energy,
    mhn_update,
    n_eff,
    retrieval_error_bound,
    score_margin,
    separation,
    softmax,
    softmax_error_bound,
    storage_capacity,
    well_separated,
    well_separated_threshold,
)
from .simulate import SimulationConfig, run_simulations

__all__ = [
    "FirstOrderMargin",
    "FixedPoint",
    "GateIteration",
    "GateRegime",
    "GatedMemory",
    "MHNIteration",
    "SimulationConfig",
    "StorageCapacity",
    "capacity_constant",
    "classify_softmax",
    "entropy",
    "global_fixed_point_unique",
    "iterate_phi",
    "iterate_to_fixed_point",
    "keys_for_mass",
    "mhn_energy",
    "mhn_update",
    "n_eff",
    "phi_map",
    "required_margin",
    "retrieval_error_bound",
    "run_simulations",
    "score_margin",
    "separation",
    "softmax",
    "softmax_error_bound",
    "storage_capacity",
    "well_separated",
    "well_separated_threshold",
]

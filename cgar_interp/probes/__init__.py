"""Probes, one module each, registered under their TOML ``kind`` (see :mod:`.base`)."""

from . import (  # noqa: F401  (registration)
    context_gate,
    head_mediation,
    hopfield_heads,
    subspace,
    task_vectors,
)
from .base import PROBES, ProbeContext, TaskInputs, get_probe, register_probe

__all__ = ["PROBES", "ProbeContext", "TaskInputs", "get_probe", "register_probe"]

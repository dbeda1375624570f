"""Probes, one module each, registered under their TOML ``kind`` (see :mod:`.base`); each
config declares what the engine needs to know through :class:`.protocol.ProbeConfig`."""

from . import (  # noqa: F401  (registration)
    context_gate,
    head_mediation,
    hopfield_heads,
    subspace,
    task_vectors,
)
from .base import PROBES, ProbeContext, TaskInputs, get_probe, register_probe
from .protocol import ProbeConfig

__all__ = ["PROBES", "ProbeConfig", "ProbeContext", "TaskInputs", "get_probe", "register_probe"]

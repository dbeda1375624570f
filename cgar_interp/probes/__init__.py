"""Probes, one module each, registered under their TOML ``kind`` (see :mod:`.base`)."""

from . import context_gate, hopfield_heads, subspace, task_vectors  # noqa: F401  (registration)
from .base import PROBES, ProbeContext, TaskInputs, get_probe, register_probe

__all__ = ["PROBES", "ProbeContext", "TaskInputs", "get_probe", "register_probe"]

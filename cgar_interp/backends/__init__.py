"""Backends: one hooking engine each, behind :class:`~cgar_interp.backends.base.Backend`.

``transformer_lens`` (TransformerBridge hook points), ``nnsight`` (a trace over the envoy tree)
and ``hf`` (plain ``transformers`` with PyTorch forward hooks, the reference the other two are
checked against). Each is imported only when used.
"""

from __future__ import annotations

import importlib

from .base import Backend, Dims, Reader, Writer

BACKENDS: dict[str, str] = {
    "transformer_lens": "transformer_lens",
    "nnsight": "nnsight",
    "hf": "hf",
}


def load_backend(name: str, path: str, *, device: str, dtype, tokenizer, dims: Dims) -> Backend:
    """Load the checkpoint at ``path`` behind backend ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    module = importlib.import_module(f"{__name__}.{BACKENDS[name]}")
    return module.load(path, device=device, dtype=dtype, tokenizer=tokenizer, dims=dims)


__all__ = ["BACKENDS", "Backend", "Dims", "Reader", "Writer", "load_backend"]

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


# Backends that can run the model on a remote server (``load_model(..., remote=True)``).
REMOTE_BACKENDS = ("nnsight",)


def load_backend(
    name: str, path: str, *, device: str, dtype, tokenizer, dims: Dims, remote: bool = False
) -> Backend:
    """Load the checkpoint at ``path`` behind backend ``name``.

    With ``remote``, ``path`` is the model id the server knows, and no weights are loaded.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    if remote and name not in REMOTE_BACKENDS:
        raise ValueError(
            f"backend {name!r} cannot run remotely; remote backends: {', '.join(REMOTE_BACKENDS)}"
        )
    module = importlib.import_module(f"{__name__}.{BACKENDS[name]}")
    options = {"remote": True} if remote else {}
    return module.load(path, device=device, dtype=dtype, tokenizer=tokenizer, dims=dims, **options)


__all__ = ["BACKENDS", "REMOTE_BACKENDS", "Backend", "Dims", "Reader", "Writer", "load_backend"]

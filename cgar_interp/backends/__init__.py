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


def backend_class(name: str) -> type[Backend]:
    """The :class:`Backend` subclass of backend ``name`` (imports its module, not its engine)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    module = importlib.import_module(f"{__name__}.{BACKENDS[name]}")
    return module.BACKEND


def supports_remote(name: str) -> bool:
    """Whether backend ``name`` can run the model on a remote server
    (:attr:`Backend.supports_remote`)."""
    return backend_class(name).supports_remote


def remote_backends() -> tuple[str, ...]:
    """The backends that can run the model on a remote server (``load_model(..., remote=True)``)."""
    return tuple(name for name in BACKENDS if supports_remote(name))


def remote_backend() -> str:
    """The backend a remote run uses (the first of :func:`remote_backends`)."""
    return remote_backends()[0]


def load_backend(
    name: str, path: str, *, device: str, dtype, tokenizer, dims: Dims, remote: bool | str = False
) -> Backend:
    """Load the checkpoint at ``path`` behind backend ``name``.

    With ``remote=True``, ``path`` is the model id the server knows, and no weights are
    loaded; ``remote="local"`` loads them and simulates the server (nnsight).
    """
    cls = backend_class(name)
    if remote and not cls.supports_remote:
        raise ValueError(
            f"backend {name!r} cannot run remotely; remote backends: {', '.join(remote_backends())}"
        )
    module = importlib.import_module(cls.__module__)
    options = {"remote": remote} if remote else {}
    return module.load(path, device=device, dtype=dtype, tokenizer=tokenizer, dims=dims, **options)


__all__ = [
    "BACKENDS",
    "Backend",
    "Dims",
    "Reader",
    "Writer",
    "backend_class",
    "load_backend",
    "remote_backend",
    "remote_backends",
    "supports_remote",
]

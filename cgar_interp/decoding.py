"""Decode-mode algebra: ``W_U norm(h + lambda v)`` for a whole grid at one unembedding per vector.

The final RMSNorm is linear up to one scalar per row: ``norm(x) = gamma * x / s(x)`` with
``s(x) = sqrt(mean(x^2) + eps)``. So for a residual ``h``, a direction ``v`` and any ``lambda``::

    W_U norm(h + lambda v) = (W_U (gamma * h) + lambda W_U (gamma * v)) / s(h + lambda v)
    s(h + lambda v)^2 = mean(h^2) + 2 lambda mean(h * v) + lambda^2 mean(v^2) + eps

:class:`ShiftedDecoder` unembeds every query's ``h`` once and each ``v`` once; each
``(v, lambda)`` of the grid then costs a few elementwise operations per vocabulary entry instead
of a ``d_model x vocab`` matmul per query. On SmolLM2 the all-layers grid (31 context layers x
5 lambdas) would otherwise spend more time unembedding than both forward passes together.

:class:`Readout` (the final norm and the unembedding) lives here too: every backend builds one
(:meth:`cgar_interp.backends.base.Backend.readout`), so this module sits below the backends
and the model handle, and imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .devices import resident_weight


@dataclass(frozen=True)
class Readout:
    """The model's final norm and unembedding: what decode algebra reads.

    Local: the model's own modules and (resident) weights. Remote: the same module classes
    rebuilt in this process from the weights fetched once from the server
    (:meth:`cgar_interp.models.ModelHandle.readout`), so a decode runs the model's own
    arithmetic either way.

    Attributes:
        norm: the final norm module (``[..., d_model] -> [..., d_model]``).
        head: the unembedding module (``[..., d_model] -> [..., vocab]``).
        weight: ``[vocab, d_model]`` the unembedding's weight; ``bias``: ``[vocab]`` or None.
        gamma: ``[d_model]`` the norm's weight; ``eps``: its epsilon.
    """

    norm: torch.nn.Module
    head: torch.nn.Module
    weight: Tensor
    bias: Tensor | None
    gamma: Tensor
    eps: float

    @classmethod
    def of(cls, norm: torch.nn.Module, head: torch.nn.Module, what: str) -> Readout:
        """From the two modules (offloaded weights are read back to a resident copy)."""
        bias = None if head.bias is None else resident_weight(head, "bias", what).detach()
        return cls(
            norm=norm,
            head=head,
            weight=resident_weight(head, "weight", what).detach(),
            bias=bias,
            gamma=resident_weight(norm, "weight", what).detach(),
            eps=float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))),
        )


class ShiftedDecoder:
    """``decode_residual(h + lambda v)`` for fixed residuals ``h [n, d_model]`` and many ``v``.

    Computed in float32 whatever the model's dtype (the norm's own arithmetic is float32).
    Agrees with :meth:`cgar_interp.models.ModelHandle.decode_residual` up to rounding (tested).
    """

    def __init__(self, handle, h: Tensor):
        if h.dim() != 2 or h.shape[-1] != handle.arch.d_model:
            raise ValueError(
                f"ShiftedDecoder needs residuals [n, {handle.arch.d_model}]; got {tuple(h.shape)}"
            )
        readout = handle.readout()  # resident weights; a remote model's, fetched once
        self.placeholder = handle.placeholder_decode  # a dry run: no vocabulary matmuls
        w = readout.weight
        self.device = w.device
        self.w = w  # [V, d]
        self.bias = None if readout.bias is None else readout.bias.float().to(self.device)
        self.gamma = readout.gamma.float().to(self.device)  # [d]
        self.eps = readout.eps
        self.h = h.detach().float().to(self.device)  # [n, d]
        self.a = self._unembed(self.h * self.gamma)  # [n, V]
        self.h_ms = self.h.pow(2).mean(-1)  # [n]

    def _unembed(self, x: Tensor) -> Tensor:
        if self.placeholder:
            return torch.ones(*x.shape[:-1], self.w.shape[0])
        with torch.no_grad():
            return (x.to(self.w.dtype) @ self.w.T).float()

    def direction(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, W_U (gamma * v))`` in float32: prepare a direction once, use it for every chunk."""
        return self.directions(v[None])[0]

    def directions(self, vs: Tensor) -> list[tuple[Tensor, Tensor]]:
        """:meth:`direction` for ``vs [m, d_model]`` in one matmul (they do not depend on ``h``).

        One ``[m, d] x [d, V]`` product instead of ``m`` matrix-vector products, each of which
        reads all of ``W_U`` from memory.
        """
        vs = vs.detach().float().to(self.device)
        gs = self._unembed(self.gamma * vs)  # [m, V]
        return list(zip(vs, gs, strict=True))

    def __call__(
        self,
        v: Tensor | tuple[Tensor, Tensor],
        lambdas: Tensor,
        rows: slice | Tensor = slice(None),
    ) -> Tensor:
        """Logits ``[n_lambda, n_rows, V]`` of ``norm(h[rows] + lambda v)`` for each lambda.

        Args:
            v: ``[d_model]`` direction, or what :meth:`direction` made of it.
            lambdas: ``[n_lambda]`` gate strengths.
            rows: which residuals (default all).
        """
        v, g = v if isinstance(v, tuple) else self.direction(v)
        lam = lambdas.to(device=self.device, dtype=torch.float32)[:, None]  # [k, 1]
        h = self.h[rows]
        ms = self.h_ms[rows][None] + 2 * lam * (h * v).mean(-1)[None] + lam**2 * v.pow(2).mean()
        scale = torch.rsqrt(ms + self.eps)  # [k, n_rows]
        out = (self.a[rows][None] + lam[:, :, None] * g) * scale[..., None]
        return out if self.bias is None else out + self.bias

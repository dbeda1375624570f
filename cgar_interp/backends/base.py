"""What every backend implements, and the HF-module-tree plumbing two of them share.

A backend runs *one* forward pass over a right-padded batch of token ids and, in that pass,

- applies ``writes``: per site, a function from the site's canonical tensor to its replacement;
- applies ``reads``: per site, a function from the (possibly patched) canonical tensor to what
  should be kept (usually a few positions), and returns what those functions return.

Everything else (position selection, derived sites, validation, batching) lives once in
:mod:`cgar_interp.models` and :mod:`cgar_interp.capture`, identical for every backend. Canonical
shapes are defined in :mod:`cgar_interp.sites`.

Engine paths that run HF modules themselves (KV-cache prefix reuse, resume, decode algebra,
probes that read a block's weights) reach them through the backend's methods only
(:meth:`Backend.blocks`, :meth:`Backend.module`, :meth:`Backend.readout`, ...), never through
an engine's own object: how each engine holds the HF module tree stays in its backend.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from ..decoding import Readout
from ..devices import module_device, resident_weight
from ..sites import Site

Reader = Callable[[Tensor], Tensor]
Writer = Callable[[Tensor], Tensor]
# logits [batch, k, vocab] -> [batch]: the per-row quantity whose gradient a grad pass takes
Objective = Callable[[Tensor], Tensor]

# nnsight needs modules touched in execution order: the rotary embedding runs after the token
# embedding (resid.0, order (-1, 9)) and before block 0.
ROTARY_ORDER = (-1, 10)


@dataclass(frozen=True)
class Dims:
    """The head geometry the canonical conversions need."""

    n_heads: int
    n_kv_heads: int
    d_head: int


@dataclass(frozen=True)
class PassRequest:
    """One forward pass, as :meth:`Backend.forward` (or, with ``grad_reads``,
    :meth:`Backend.forward_grad`) takes it: what :meth:`Backend.forward_many` runs in turn.

    Attributes:
        ids: token ids ``[batch, pos]``.
        reads, writes, past_key_values, logits_index: as in :meth:`Backend.forward`.
        grad_reads, objective: a grad pass (:meth:`Backend.forward_grad`) when ``grad_reads``
            is set; ``writes`` must then be empty.
        result_bytes: an estimate of the bytes the pass returns (what a session's byte cap
            counts; ``0``: unknown).
    """

    ids: Tensor
    reads: Mapping[Site, Reader]
    writes: Mapping[Site, Writer] = field(default_factory=dict)
    past_key_values: object = None
    logits_index: Tensor | None = None
    grad_reads: Mapping[Site, Reader] | None = None
    objective: Objective | None = None
    result_bytes: int = 0

    def __post_init__(self):
        if self.grad_reads is not None and (self.objective is None or self.writes):
            raise ValueError("a grad pass (grad_reads) needs an objective and takes no writes")

    @property
    def rows(self) -> int:
        """Rows of the batch (what a session's cap counts)."""
        return int(self.ids.shape[0])


class PassResult(NamedTuple):
    """What one pass returns: ``logits``, ``{site: reader result}`` and, for a grad pass,
    ``{site: gradient reader result}`` (empty otherwise)."""

    logits: Tensor
    results: dict[Site, Tensor]
    grads: dict[Site, Tensor]


# grouped remote requests (nnsight sessions): the defaults of ModelHandle and SuiteConfig
REMOTE_SESSION_ROWS = 2048
REMOTE_SESSION_MB = 256.0


def session_groups(
    requests: Iterable[PassRequest], max_rows: int, max_bytes: float = math.inf
) -> Iterator[list[PassRequest]]:
    """Consecutive requests, in order, in groups of at most ``max_rows`` rows and
    ``max_bytes`` estimated result bytes in all (:attr:`PassRequest.result_bytes`); a request
    over either cap by itself is a group of its own. Lazy: a group is formed when the
    previous one has been consumed."""
    if max_rows < 1 or not max_bytes > 0:
        raise ValueError(f"max_rows and max_bytes must be > 0; got {max_rows}, {max_bytes}")
    group: list[PassRequest] = []
    rows = size = 0
    for request in requests:
        if group and (rows + request.rows > max_rows or size + request.result_bytes > max_bytes):
            yield group
            group, rows, size = [], 0, 0
        group.append(request)
        rows += request.rows
        size += request.result_bytes
    if group:
        yield group


def check_session_limits(
    rows, size, names: tuple[str, str] = ("session_rows", "session_bytes")
) -> None:
    """The caps of grouped remote requests: ``rows`` an int >= 0 (0: no grouping) and
    ``size`` a number > 0, else a ValueError naming the bad value as ``names`` spell them."""
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        raise ValueError(
            f"{names[0]} must be an int >= 0 (most rows per grouped NDIF request; 0: one "
            f"request per pass); got {rows!r}"
        )
    if isinstance(size, bool) or not isinstance(size, int | float) or not size > 0:
        raise ValueError(
            f"{names[1]} must be a number > 0 (about the most results per grouped NDIF "
            f"request); got {size!r}"
        )


class Backend(ABC):
    """One loaded model behind one hooking engine.

    Attributes:
        name: backend name as users spell it.
        supports_remote: whether this engine can run the model on a remote server
            (``load_model(..., remote=True)``); the one place that is decided.
        remote: whether *this* model runs remotely (its modules here are then on the meta
            device: built from the config, without weights).
        hf_model: the underlying ``LlamaForCausalLM`` module tree (shared by decode and resume).
            Code outside the backends uses the methods below instead.
        engine: the engine's own object (TransformerBridge, nnsight model, or the HF model).
        dims: the head geometry (:class:`Dims`).
    """

    name: str
    supports_remote: ClassVar[bool] = False
    remote: bool = False
    dims: Dims
    hf_model: torch.nn.Module
    engine: object

    # ------------------------------------------------------------ the HF module tree
    def _structure(self) -> torch.nn.Module:
        """The module tree for what needs no weights (config, module attributes). A remote
        model's is on the meta device; locally it is :attr:`hf_model`."""
        return self.hf_model

    @property
    def config(self):
        """The model's HF config (for caches and causal masks built as the model builds them)."""
        return self._structure().config

    def module(self, path: str) -> torch.nn.Module:
        """The HF submodule at ``path`` (``"model.layers.3.mlp"``), to run or hook here."""
        return get_module(self.hf_model, path)

    def blocks(self) -> torch.nn.ModuleList:
        """The decoder layers, in order (each runs whole on one device)."""
        return self.hf_model.model.layers

    def block(self, layer: int) -> torch.nn.Module:
        """Decoder layer ``layer``."""
        return self.blocks()[layer]

    def embedding(self) -> torch.nn.Module:
        """The token embedding."""
        return self.hf_model.get_input_embeddings()

    def rotary_embedding(self) -> torch.nn.Module:
        """The rotary embedding (``(h, position_ids) -> (cos, sin)``)."""
        return self.hf_model.model.rotary_emb

    def final_norm(self) -> torch.nn.Module:
        """The norm after the last block."""
        return self.hf_model.model.norm

    def lm_head(self) -> torch.nn.Module:
        """The unembedding."""
        return self.hf_model.lm_head

    def input_device(self) -> torch.device:
        """Where token ids go: the embedding's device (the first device of a device map);
        the CPU for a remote model (its ids travel with the request)."""
        if self.remote:
            return torch.device("cpu")
        return module_device(self.embedding())

    def attention_scale(self, layer: int) -> float:
        """Block ``layer``'s attention scaling ``beta``: its module's ``scaling``, else
        ``1/sqrt(d_head)``. Read from the module tree's attributes, so a remote model (whose
        modules are built here from its config) answers with the server's value too."""
        attn = self._structure().model.layers[layer].self_attn
        return float(getattr(attn, "scaling", self.dims.d_head**-0.5))

    def readout(self) -> Readout:
        """The final norm and the unembedding as a :class:`~cgar_interp.decoding.Readout`.

        Locally the model's own modules; a remote backend fetches the weights (one request)
        and the caller keeps the result.
        """
        return Readout.of(self.final_norm(), self.lm_head(), "the readout")

    def project_heads(self, zs: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """Each head's contribution to the residual of a per-head ``z``: ``{block: [..., H,
        d_head]} -> {block: [..., H, d_model]}``, ``W_O,h z_h`` with block ``l``'s ``o_proj``
        (what the derived site ``head_out`` is). Locally its weight, read here; a remote
        backend calls the module on the server instead."""
        out = {}
        for layer, z in zs.items():
            o_proj = self.block(layer).self_attn.o_proj
            w_o = resident_weight(o_proj, "weight", f"head outputs of block {layer}")
            w_o = w_o.view(w_o.shape[0], self.dims.n_heads, self.dims.d_head)
            w_o = w_o.to(device=z.device, dtype=z.dtype)
            with torch.no_grad():  # the weights require grad; a projection carries no graph
                out[layer] = torch.einsum("...hd,mhd->...hm", z, w_o)
        return out

    @abstractmethod
    def forward(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        writes: Mapping[Site, Writer],
        past_key_values=None,
        logits_index: Tensor | None = None,
        grad: bool = False,
    ) -> tuple[Tensor, dict[Site, Tensor]]:
        """Run one forward pass.

        Args:
            ids: token ids ``[batch, pos]``.
            reads: site -> function of the canonical tensor whose result is returned.
            writes: site -> function returning the canonical tensor's replacement.
            past_key_values: an HF KV cache of a prefix shared by every row (batch-repeated);
                ``ids`` then continue it, and positions are relative to ``ids``.
            logits_index: ``[batch, k]`` positions whose logits are wanted; the unembedding
                then runs on those positions only (see :func:`unembed_only_at`). ``None``:
                every position.
            grad: run with gradient tracking (for :meth:`forward_grad`); otherwise under
                ``torch.no_grad()``.

        Returns:
            ``(logits [batch, pos | k, vocab], {site: reader result})``.
        """

    def run_pass(self, request: PassRequest) -> PassResult:
        """One :class:`PassRequest`: :meth:`forward`, or :meth:`forward_grad` for a grad pass."""
        if request.grad_reads is not None:
            return PassResult(
                *self.forward_grad(
                    request.ids,
                    request.reads,
                    request.grad_reads,
                    request.objective,
                    request.past_key_values,
                    logits_index=request.logits_index,
                )
            )
        logits, results = self.forward(
            request.ids,
            request.reads,
            request.writes,
            request.past_key_values,
            logits_index=request.logits_index,
        )
        return PassResult(logits, results, {})

    def forward_many(
        self,
        requests: Iterable[PassRequest],
        session_rows: int = 0,
        session_bytes: float = math.inf,
    ) -> Iterator[PassResult]:
        """Run independent passes (no request's inputs depend on another's results), yielding
        their results in order.

        Here one at a time, each pulled from ``requests`` when the previous one is done (so a
        caller's lazily built requests, e.g. one KV cache per batch, never pile up). A backend
        whose passes are requests to a server groups them: the nnsight backend on NDIF sends
        one session of several traces per request, of at most ``session_rows`` rows and
        ``session_bytes`` estimated result bytes in all (``session_rows=0``: one request per
        pass, as here).
        """
        check_session_limits(session_rows, session_bytes)
        return (self.run_pass(request) for request in requests)

    def forward_grad(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        grad_reads: Mapping[Site, Reader],
        objective: Objective,
        past_key_values=None,
        logits_index: Tensor | None = None,
    ) -> tuple[Tensor, dict[Site, Tensor], dict[Site, Tensor]]:
        """One forward and one backward pass: reads as :meth:`forward`, and the gradient of
        ``objective(logits).sum()`` with respect to each site of ``grad_reads`` (patchable
        kinds), in canonical shape, passed through its reader.

        Rows are independent, so row ``i``'s gradient is that of ``objective(logits)[i]``.
        Locally (this implementation) each grad site gets a zero tensor added in the pass,
        ``canon + delta``, and the gradient is taken with respect to ``delta``: exactly the
        gradient at the site, with no weight gradient computed (``torch.autograd.grad`` runs
        only the backward nodes between the objective and the deltas). A backend whose pass
        runs elsewhere (nnsight on NDIF) overrides this with a backward inside its trace.

        Returns:
            ``(logits, {site: reader result}, {site: gradient reader result})``, detached.
        """
        deltas: dict[Site, Tensor] = {}

        def adder(site: Site) -> Writer:
            def write(canon: Tensor) -> Tensor:
                delta = torch.zeros_like(canon, requires_grad=True)
                deltas[site] = delta
                return canon + delta

            return write

        sites = list(grad_reads)
        writes = {site: adder(site) for site in sites}
        logits, results = self.forward(
            ids, reads, writes, past_key_values, logits_index=logits_index, grad=True
        )
        missing = [str(s) for s in sites if s not in deltas]
        if missing:
            raise RuntimeError(f"the grad pass never reached sites {missing}")
        total = objective(logits).sum()
        grads = torch.autograd.grad(total, [deltas[s] for s in sites], allow_unused=True)
        out = {}
        for site, g in zip(sites, grads, strict=True):
            g = torch.zeros_like(deltas[site]) if g is None else g
            out[site] = grad_reads[site](g.detach())
        return logits.detach(), {s: v.detach() for s, v in results.items()}, out


def grad_mode(grad: bool):
    """``torch.enable_grad()`` for a grad pass, else ``torch.no_grad()``."""
    return torch.enable_grad() if grad else torch.no_grad()


@contextmanager
def unembed_only_at(lm_head: torch.nn.Module, index: Tensor | None) -> Iterator[None]:
    """Make ``lm_head`` see the final hidden states at ``index [batch, k]`` only.

    The unembedding is a ``d_model x vocab`` matmul per position (on SmolLM2-135M about a
    fifth of a token's compute, on Llama-3-8B 0.5B of its 8B multiply-adds), and probes need
    logits at one or two positions per row. A forward pre-hook on the HF ``lm_head`` module
    gathers those positions, so the plain-hooks and TransformerLens backends (the bridge calls
    this module) compute ``[batch, k, vocab]`` logits and nothing else. The nnsight backend
    does the same gather inside its trace instead (a remote server would not get a local
    hook). Reads and writes at every other site are untouched.
    """
    if index is None:
        yield
        return

    def gather(module, args):
        hidden = args[0]  # [batch, pos, d_model]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        return (hidden[rows, index.to(hidden.device)], *args[1:])

    handle = lm_head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [batch, pos, heads, d_head]`` with the model's ``cos, sin [batch|1, pos, d_head]``.

    The same formula as ``transformers``' ``apply_rotary_pos_emb`` (it uses heads on dim 1).
    """
    from transformers.models.llama.modeling_llama import rotate_half

    # under a device map the rotary embedding runs on the first device, block l's q/k elsewhere
    cos = cos.unsqueeze(2).to(device=x.device, dtype=x.dtype)
    sin = sin.unsqueeze(2).to(device=x.device, dtype=x.dtype)
    return x * cos + rotate_half(x) * sin


def hf_to_canonical(
    site: Site, raw: Tensor, dims: Dims, rotary: tuple[Tensor, Tensor] | None
) -> Tensor:
    """Canonical tensor of ``site`` from what the HF module tree holds there."""
    kind = site.kind
    if kind == "attn_pattern":  # [batch, n_heads, q, k] -> [batch, q, n_heads, k]
        return raw.permute(0, 2, 1, 3)
    if kind in ("q", "k", "v", "z"):
        heads = dims.n_kv_heads if kind in ("k", "v") else dims.n_heads
        x = raw.view(*raw.shape[:2], heads, dims.d_head)
        if kind in ("q", "k"):
            if rotary is None:
                raise RuntimeError(f"site {site} needs the rotary embedding, which was not read")
            x = apply_rope(x, *rotary)
        return x
    return raw


def hf_from_canonical(site: Site, canonical: Tensor) -> Tensor:
    """What the HF module tree should hold at a patchable ``site`` given its canonical value."""
    if site.kind == "z":
        return canonical.reshape(*canonical.shape[:2], -1)
    return canonical


def needs_rotary(sites) -> bool:
    return any(s.kind in ("q", "k") for s in sites)


def get_module(root: torch.nn.Module, path: str):
    """``root.model.layers[3].mlp`` from ``"model.layers.3.mlp"`` (works on nnsight envoys too)."""
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj

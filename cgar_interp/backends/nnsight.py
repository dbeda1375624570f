"""nnsight 0.8: reads and writes inside one ``trace``, in execution order.

nnsight is imported lazily (inside :func:`load`), so its global patches never touch runs that
use another backend.

With ``remote=True`` the same trace runs on NDIF: nnsight serializes the traced block (its
source and the variables it reads) instead of running it, and the server runs it against its
copy of the model (see :mod:`cgar_interp.remote`). The block is identical either way, so
everything it does happens inside it: the unembedding's input is cut to the wanted positions
in the trace (what :func:`unembed_only_at`'s hook does for the other backends, which a
server would not get), so a remote run sends back ``[batch, k, vocab]`` logits, not all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..compat import cache_kwargs
from ..decoding import Readout
from ..remote import remote_unsupported
from ..sites import Site
from .base import (
    ROTARY_ORDER,
    Backend,
    Dims,
    PassRequest,
    PassResult,
    Reader,
    Writer,
    check_session_limits,
    get_module,
    grad_mode,
    hf_from_canonical,
    hf_to_canonical,
    needs_rotary,
    session_groups,
)


def module_tree(lm) -> torch.nn.Module:
    """The HF module tree an nnsight model wraps (nnsight 0.8 has no public accessor for it:
    this is the one place that reads the envoy's private ``_module``)."""
    return lm._module


class NNsightBackend(Backend):
    """Module paths are the HF ones (the envoy tree mirrors the model)."""

    name = "nnsight"
    supports_remote = True

    def __init__(self, lm, dims: Dims, remote: bool | str = False):
        self.engine = lm
        self.dims = dims
        self.remote = remote

    @property
    def hf_model(self) -> torch.nn.Module:
        """The HF module tree; a remote model's is on the meta device, so it is refused."""
        if self.remote:
            raise remote_unsupported("code using backend.hf_model", str(self.engine.repo_id))
        return module_tree(self.engine)

    def _structure(self) -> torch.nn.Module:
        return module_tree(self.engine)  # a remote model's too: its attributes come from the config

    def readout(self) -> Readout:
        """Locally the model's own modules; remotely :meth:`fetch_readout`."""
        return self.fetch_readout() if self.remote else super().readout()

    def fetch_readout(self, *, cache: bool = True) -> Readout:
        """A remote model's final norm and unembedding as a
        :class:`~cgar_interp.decoding.Readout` whose modules are the model's own classes rebuilt
        here (so decode algebra runs the model's arithmetic on this machine). No parameter is
        read inside a trace: the weights come from the disk cache, the hub's checkpoint or the
        server's module calls (:mod:`cgar_interp.remote_readout`); ``cache`` off (a dry run)
        asks the server and keeps nothing, as does nnsight's local simulation."""
        import copy

        from ..remote_readout import fetch

        lm = self.engine
        structure = self._structure()
        config = structure.config
        eps = float(getattr(structure.model.norm, "variance_epsilon", config.rms_norm_eps))
        weights = fetch(
            lm,
            str(lm.repo_id),
            d_model=int(config.hidden_size),
            vocab=int(config.vocab_size),
            tied=bool(getattr(config, "tie_word_embeddings", False)),
            eps=eps,
            remote=self.remote,
            itemsize=torch.finfo(structure.lm_head.weight.dtype).bits // 8,
            revision=getattr(lm, "revision", None) or "main",
            cache=cache and self.remote is True,
        )
        modules = {}
        for name, source, weight in (
            ("norm", structure.model.norm, weights.gamma),
            ("head", structure.lm_head, weights.weight),
        ):
            # the meta module's class, in the dtype the server holds the weights in
            module = copy.deepcopy(source).to_empty(device="cpu").to(weight.dtype)
            module.requires_grad_(False)
            modules[name] = module
        with torch.no_grad():
            modules["norm"].weight.copy_(weights.gamma)
            modules["head"].weight.copy_(weights.weight)
            if modules["head"].bias is not None:
                bias = weights.bias if weights.bias is not None else 0.0
                modules["head"].bias.copy_(torch.as_tensor(bias).expand_as(modules["head"].bias))
        self.readout_source = weights.source
        return Readout.of(modules["norm"], modules["head"], "the readout")

    def project_heads(self, zs: Mapping[int, Tensor]) -> dict[int, Tensor]:
        """Locally as every backend; remotely one request in which each block's ``o_proj``
        is called (nnsight's ad hoc module call) on the heads' ``z`` placed in their own
        slots, one row per head, in the dtype the server's pass runs in (read from a
        one-token forward's ``o_proj`` input: no weight is read)."""
        if not self.remote:
            return super().project_heads(zs)
        import nnsight

        lm = self.engine
        n_heads, d_head = self.dims.n_heads, self.dims.d_head
        eye = torch.eye(n_heads)
        slotted = {}
        for layer, z in zs.items():  # [..., H, d_head] -> [..., H (row), H * d_head]
            z = z.detach().float().cpu()
            slotted[layer] = (eye[:, :, None] * z[..., None, :, :]).reshape(
                *z.shape[:-2], n_heads, n_heads * d_head
            )
        layers = sorted(slotted)
        with torch.no_grad(), lm.trace(torch.zeros(1, 1, dtype=torch.long), remote=self.remote):
            out = {}
            for layer in layers:
                o_proj = lm.model.layers[layer].self_attn.o_proj
                x = slotted[layer].to(o_proj.input.dtype)
                out[layer] = o_proj(x) - o_proj(torch.zeros_like(x))  # without a bias
            projected = nnsight.save(out)
        return {layer: projected[layer].float() for layer in zs}

    def forward(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        writes: Mapping[Site, Writer],
        past_key_values=None,
        logits_index: Tensor | None = None,
        grad: bool = False,
    ) -> tuple[Tensor, dict[Site, Tensor]]:
        request = PassRequest(ids, reads, writes, past_key_values, logits_index)
        logits, results, _ = self._trace(request, grad=grad)
        return logits, results

    def forward_grad(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        grad_reads: Mapping[Site, Reader],
        objective,
        past_key_values=None,
        logits_index: Tensor | None = None,
    ) -> tuple[Tensor, dict[Site, Tensor], dict[Site, Tensor]]:
        """The backward runs inside the trace (``with total.backward(inputs=...)``, nnsight's
        gradient API), so the same block runs locally and on NDIF: the server computes the
        gradients and sends back only what the readers keep. ``inputs`` limits the backward
        to the grad sites (no weight gradient is accumulated); a grad site whose tensor does
        not require grad (a server whose weights do not) is made to, in place, before the
        blocks above it use it."""
        request = PassRequest(
            ids, reads, {}, past_key_values, logits_index, dict(grad_reads), objective
        )
        return self._trace(request)

    def forward_many(
        self,
        requests: Iterable[PassRequest],
        session_rows: int = 0,
        session_bytes: float = math.inf,
    ) -> Iterator[PassResult]:
        """On NDIF with ``session_rows >= 1``: consecutive passes of at most ``session_rows``
        rows and ``session_bytes`` estimated result bytes in all go as one request, an
        nnsight session whose body opens one trace per pass (:meth:`_session`); a group of
        one pass is a plain trace (:meth:`_trace`). Locally, or with ``session_rows=0``: one
        trace per pass, as every backend."""
        check_session_limits(session_rows, session_bytes)
        if not self.remote or session_rows == 0:
            return super().forward_many(requests)
        return self._grouped(requests, session_rows, session_bytes)

    def _grouped(
        self, requests: Iterable[PassRequest], session_rows: int, session_bytes: float
    ) -> Iterator[PassResult]:
        for group in session_groups(requests, session_rows, session_bytes):
            if len(group) == 1:
                yield self.run_pass(group[0])
            else:
                yield from self._session(group, remote=self.remote)

    def _spec(self, request: PassRequest, grad: bool = False) -> PassSpec:
        """What the traced block reads of one pass (a plain object, so a request carries it)."""
        lm = self.engine
        if self.remote and request.past_key_values is not None:
            raise remote_unsupported("a forward pass over a KV cache", str(lm.repo_id))
        grad_reads = dict(request.grad_reads or {})
        sites = sorted(
            set(request.reads) | set(request.writes) | set(grad_reads), key=lambda s: s.order
        )
        steps: list[tuple[tuple[int, int], Site | None]] = [(s.order, s) for s in sites]
        if needs_rotary(sites):
            steps.append((ROTARY_ORDER, None))
        steps.sort(key=lambda step: step[0])
        ids, past = request.ids, request.past_key_values
        kwargs = {}
        if past is not None:
            # An explicit mask over the cached slots and the new tokens: nnsight 0.8.1 makes
            # one of the new tokens' width itself unless it sees `past_key_values`, and the
            # model then attends to none of the cache (see cgar_interp.compat).
            width = past.get_seq_length() + ids.shape[1]
            kwargs = {
                **cache_kwargs(module_tree(lm).forward, past),
                "attention_mask": torch.ones(
                    ids.shape[0], width, dtype=torch.long, device=ids.device
                ),
                "use_cache": True,
            }
        return PassSpec(
            ids=ids,
            kwargs=kwargs,
            steps=[site for _, site in steps],
            reads=dict(request.reads),
            writes=dict(request.writes),
            grad_reads=grad_reads,
            objective=request.objective,
            logits_index=request.logits_index,
            grad=grad or bool(grad_reads),
        )

    @staticmethod
    def _result(request: PassRequest, out: dict) -> PassResult:
        """A pass's result (keyed by site) from what its trace saved (keyed by name)."""
        return PassResult(
            out["logits"],
            {site: out["results"][str(site)] for site in request.reads},
            {site: out["grads"][str(site)] for site in request.grad_reads or {}},
        )

    def _trace(self, request: PassRequest, grad: bool = False) -> PassResult:
        """One pass, one trace (one NDIF request on a remote model)."""
        import nnsight

        lm = self.engine
        dims = self.dims  # the block reads dims, not self: a remote run ships what it reads
        spec = self._spec(request, grad)
        with grad_mode(spec.grad), lm.trace(spec.ids, remote=self.remote, **spec.kwargs):
            out = nnsight.save(traced_pass(lm, dims, spec))  # a remote run sends saves only
        return self._result(request, out)

    def _session(self, requests: list[PassRequest], remote: bool | str = True) -> list[PassResult]:
        """Several independent passes as one nnsight session: the whole body, one trace per
        pass, runs where ``remote`` says (``True``: NDIF, one request; ``"local"``: nnsight's
        serialize-then-run simulation; ``False``: here). Each trace runs :func:`traced_pass`,
        as :meth:`_trace` does; its grad mode is set inside the body, so on the server."""
        import nnsight

        lm = self.engine
        dims = self.dims
        specs = [self._spec(request) for request in requests]
        with lm.session(remote=remote):
            outs = []
            for spec in specs:
                with grad_mode(spec.grad), lm.trace(spec.ids, **spec.kwargs):
                    out = traced_pass(lm, dims, spec)
                outs.append(out)
            outs = nnsight.save(outs)  # the session's saves are what comes back
        return [self._result(r, o) for r, o in zip(requests, outs, strict=True)]


@dataclass(frozen=True)
class PassSpec:
    """One pass as the traced block reads it: the ids and the model call's keyword
    arguments, the sites in execution order (``None``: the rotary embedding's output), the
    readers, writers and gradient readers, the objective, the positions whose logits are
    wanted, and whether the pass tracks gradients."""

    ids: Tensor
    kwargs: dict
    steps: list
    reads: dict
    writes: dict
    grad_reads: dict
    objective: object
    logits_index: Tensor | None
    grad: bool


def traced_pass(lm, dims: Dims, spec: PassSpec) -> dict:
    """The interventions of one pass, called inside its ``lm.trace``: reads and writes at
    every site in execution order, the unembedding's input cut to the wanted positions, and
    for a grad pass a backward inside the trace (``with total.backward(inputs=...)``).

    On NDIF this function travels by value (by source: nnsight's pickler recompiles it on
    the server, and registers that source so the ``with`` of the backward is found there).

    Returns:
        ``{"logits": [batch, k | pos, vocab], "results": {site name: reader result},
        "grads": {site name: gradient reader result}}``, keyed by name: what a server sends
        back must unpickle without cgar_interp installed.
    """
    results: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    rotary = None
    tracked: list[tuple[Site, Tensor]] = []  # grad sites' raw tensors, forward order
    for site in spec.steps:
        if site is None:
            rotary = lm.model.rotary_emb.output
            continue
        envoy = get_module(lm, site.hf_module_path())
        part = site.spec.hf_part
        if part == "input0":
            raw = envoy.input
        else:
            full = envoy.output
            raw = full if part == "output" else full[0 if part == "output0" else 1]
        if site in spec.grad_reads:
            if not raw.requires_grad:
                raw.requires_grad_(True)
            tracked.append((site, raw))
        canon = hf_to_canonical(site, raw, dims, rotary)
        writer, reader = spec.writes.get(site), spec.reads.get(site)
        if writer is not None:
            canon = writer(canon)
            new = hf_from_canonical(site, canon)
            if part == "input0":
                envoy.input = new
            elif part == "output":
                envoy.output = new
            else:
                out = list(full)
                out[0 if part == "output0" else 1] = new
                envoy.output = tuple(out)
        if reader is not None:
            results[str(site)] = reader(canon.detach())
    if spec.logits_index is not None:  # the unembedding sees only the wanted positions
        hidden = lm.lm_head.input  # [batch, pos, d_model]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        lm.lm_head.input = hidden[rows, spec.logits_index.to(hidden.device)]
    output = lm.lm_head.output
    if tracked:
        total = spec.objective(output).sum()
        with total.backward(inputs=[raw for _, raw in tracked]):
            for site, raw in reversed(tracked):  # gradients arrive in reverse order
                g = hf_to_canonical(site, raw.grad, dims, rotary)
                grads[str(site)] = spec.grad_reads[site](g.detach())
    return {"logits": output.detach(), "results": results, "grads": grads}


def load(
    path: str,
    *,
    device: str,
    dtype: torch.dtype,
    tokenizer,
    dims: Dims,
    remote: bool | str = False,
) -> NNsightBackend:
    """The nnsight model at ``path``. ``remote=True``: a meta-device model whose traces run on
    NDIF (:func:`load_remote`). ``remote="local"``: the weights are loaded here, and every
    trace goes through nnsight's local simulation of the server (the block is serialized,
    deserialized with every non-installed module hidden, then run), and the engine treats the
    model as remote (no KV cache, no module run or weight read in this process)."""
    from nnsight.modeling.transformers import TransformersModel

    kwargs = {"dtype": dtype, "attn_implementation": "eager"}
    if remote is True:
        return load_remote(path, tokenizer=tokenizer, dims=dims, **kwargs)
    if device != "cpu":
        kwargs["device_map"] = device
    lm = TransformersModel(
        path, task="text-generation", tokenizer=tokenizer, dispatch=True, **kwargs
    )
    module_tree(lm).eval()
    if remote == "local":
        from ..remote import ship_by_value

        ship_by_value()
        return NNsightBackend(lm, dims, remote="local")
    return NNsightBackend(lm, dims)


def load_remote(model_id: str, *, tokenizer, dims: Dims, **kwargs) -> NNsightBackend:
    """A meta-device model (built from the config, no weights) whose traces run on NDIF.

    ``model_id`` names the model in every request (NDIF knows models by hub id). The API key
    is checked now rather than at the first forward pass. ``attn_implementation="eager"``
    travels with each request (nnsight sends it), so attention-pattern sites work remotely.
    """
    from nnsight.modeling.transformers import TransformersModel

    from ..remote import ndif_api_key, ship_by_value

    ndif_api_key()
    ship_by_value()
    lm = TransformersModel(
        model_id, task="text-generation", tokenizer=tokenizer, dispatch=False, **kwargs
    )
    return NNsightBackend(lm, dims, remote=True)


BACKEND = NNsightBackend

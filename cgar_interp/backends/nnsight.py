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

from collections.abc import Mapping

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
    Reader,
    Writer,
    get_module,
    grad_mode,
    hf_from_canonical,
    hf_to_canonical,
    needs_rotary,
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
        logits, results, _ = self._trace(
            ids, reads, writes, past_key_values, logits_index, grad=grad
        )
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
        return self._trace(
            ids,
            reads,
            {},
            past_key_values,
            logits_index,
            grad_reads=grad_reads,
            objective=objective,
        )

    def _trace(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        writes: Mapping[Site, Writer],
        past_key_values=None,
        logits_index: Tensor | None = None,
        grad: bool = False,
        grad_reads: Mapping[Site, Reader] | None = None,
        objective=None,
    ) -> tuple[Tensor, dict[Site, Tensor], dict[Site, Tensor]]:
        import nnsight

        lm = self.engine
        if self.remote and past_key_values is not None:
            raise remote_unsupported("a forward pass over a KV cache", str(lm.repo_id))
        grad_reads = dict(grad_reads or {})
        dims = self.dims  # the block reads dims, not self: a remote run ships what it reads
        sites = sorted(set(reads) | set(writes) | set(grad_reads), key=lambda s: s.order)
        # keyed by name: what a server sends back must unpickle without cgar_interp installed
        results: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        steps: list[tuple[tuple[int, int], Site | None]] = [(s.order, s) for s in sites]
        if needs_rotary(sites):
            steps.append((ROTARY_ORDER, None))
        steps.sort(key=lambda step: step[0])
        extra = {}
        if past_key_values is not None:
            # An explicit mask over the cached slots and the new tokens: nnsight 0.8.1 makes
            # one of the new tokens' width itself unless it sees `past_key_values`, and the
            # model then attends to none of the cache (see cgar_interp.compat).
            width = past_key_values.get_seq_length() + ids.shape[1]
            extra = {
                **cache_kwargs(module_tree(lm).forward, past_key_values),
                "attention_mask": torch.ones(
                    ids.shape[0], width, dtype=torch.long, device=ids.device
                ),
                "use_cache": True,
            }
        with grad_mode(grad or bool(grad_reads)), lm.trace(ids, remote=self.remote, **extra):
            rotary = None
            tracked: list[tuple[Site, Tensor]] = []  # grad sites' raw tensors, forward order
            for _, site in steps:
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
                if site in grad_reads:
                    if not raw.requires_grad:
                        raw.requires_grad_(True)
                    tracked.append((site, raw))
                canon = hf_to_canonical(site, raw, dims, rotary)
                writer, reader = writes.get(site), reads.get(site)
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
            if logits_index is not None:  # the unembedding sees only the wanted positions
                hidden = lm.lm_head.input  # [batch, pos, d_model]
                rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
                lm.lm_head.input = hidden[rows, logits_index.to(hidden.device)]
            output = lm.lm_head.output
            if tracked:
                total = objective(output).sum()
                with total.backward(inputs=[raw for _, raw in tracked]):
                    for site, raw in reversed(tracked):  # gradients arrive in reverse order
                        g = hf_to_canonical(site, raw.grad, dims, rotary)
                        grads[str(site)] = grad_reads[site](g.detach())
            captured = nnsight.save(results)  # a remote run sends back saved names only
            captured_grads = nnsight.save(grads)
            logits = nnsight.save(output.detach())
        return (
            logits,
            {site: captured[str(site)] for site in reads},
            {site: captured_grads[str(site)] for site in grad_reads},
        )


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

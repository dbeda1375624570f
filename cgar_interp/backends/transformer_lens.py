"""TransformerLens 4.x ``TransformerBridge``: reads and writes through its hook points."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..compat import bridge_attention_sees_cache, cache_kwargs
from ..sites import Site
from .base import Backend, Dims, Reader, Writer, grad_mode, unembed_only_at


def tl_to_canonical(site: Site, raw: Tensor) -> Tensor:
    if site.kind == "attn_pattern":  # [batch, n_heads, q, k] -> [batch, q, n_heads, k]
        return raw.permute(0, 2, 1, 3)
    return raw


def tl_from_canonical(site: Site, canonical: Tensor) -> Tensor:
    return canonical  # every patchable kind is canonical on the bridge already


def _unwrap(module):
    """The HF module a TransformerBridge component wraps (itself if it wraps nothing)."""
    while "_original_component" in getattr(module, "_modules", {}):
        module = module._modules["_original_component"]
    return module


def plain_view(wrapped: torch.nn.Module) -> torch.nn.Module:
    """A plain HF model tree sharing every parameter with the bridge's wrapped model.

    The bridge replaces HF submodules by hooked wrappers in place, which costs Python overhead
    on every call; hook-free engine paths (decode, suffix passes over a KV cache) run on this
    view instead. No weight is copied: each parameter *is* the bridge's tensor.
    """
    config = wrapped.config
    with torch.device("meta"):
        view = type(wrapped)(config)
    for name, _ in list(view.named_parameters(remove_duplicate=False)):
        *path, leaf = name.split(".")
        source, target = wrapped, view
        for part in path:
            source = _unwrap(source[int(part)] if part.isdigit() else getattr(source, part))
            target = target[int(part)] if part.isdigit() else getattr(target, part)
        setattr(target, leaf, getattr(_unwrap(source), leaf))
    # the rotary embedding holds buffers only: share the bridge's (unwrapped) module itself
    view.model.rotary_emb = _unwrap(wrapped.model.rotary_emb)
    leftover = [n for n, b in view.named_buffers() if b.is_meta]
    if leftover:
        raise RuntimeError(f"plain view of the bridge left buffers on the meta device: {leftover}")
    offloaded = sorted({n.rsplit(".", 1)[0] for n, p in view.named_parameters() if p.is_meta})
    if offloaded:  # accelerate's offload hooks sit on the bridge's modules, not on the view
        raise ValueError(
            f"the transformer_lens backend cannot run a model whose modules are offloaded to "
            f"CPU RAM or disk by its device map (offloaded: {', '.join(offloaded[:4])}"
            f"{', ...' if len(offloaded) > 4 else ''}): its hook-free engine paths would see "
            "meta tensors. Use backend='hf' or backend='nnsight' with device='auto', or give "
            "the model enough GPU memory"
        )
    return view.eval()


class TransformerLensBackend(Backend):
    """Hooks are passed to ``run_with_hooks`` for one call, so none outlive it."""

    name = "transformer_lens"

    def __init__(self, bridge, n_layers: int, dims: Dims | None = None):
        self.engine = bridge
        self.hf_model = plain_view(bridge.original_model)
        self.n_layers = n_layers
        if dims is None:  # the bridge's own config says the same
            cfg = bridge.cfg
            kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
            dims = Dims(cfg.n_heads, kv, cfg.d_head)
        self.dims = dims

    def forward(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        writes: Mapping[Site, Writer],
        past_key_values=None,
        logits_index: Tensor | None = None,
        grad: bool = False,
    ) -> tuple[Tensor, dict[Site, Tensor]]:
        results: dict[Site, Tensor] = {}
        hooks = []
        for site in sorted(set(reads) | set(writes), key=lambda s: s.order):
            reader, writer = reads.get(site), writes.get(site)

            def hook(tensor, hook, site=site, reader=reader, writer=writer):
                canon = tl_to_canonical(site, tensor)
                if writer is not None:
                    canon = writer(canon)
                if reader is not None:
                    results[site] = reader(canon)
                return tl_from_canonical(site, canon) if writer is not None else None

            hooks.append((site.tl_hook_name(self.n_layers), hook))
        # the bridge wraps HF modules in place; the hook goes on the HF lm_head it calls
        lm_head = _unwrap(self.engine.original_model.lm_head)
        # the bridge forwards keywords to the HF model; its attention reads the cache under
        # its own name (see cgar_interp.compat)
        extra = cache_kwargs(self.engine.original_model.forward, past_key_values)
        with (
            grad_mode(grad),
            unembed_only_at(lm_head, logits_index),
            bridge_attention_sees_cache(self.engine),
        ):
            logits = self.engine.run_with_hooks(ids, fwd_hooks=hooks, **extra)
        return logits, results


def load(
    path: str, *, device: str, dtype: torch.dtype, tokenizer, dims: Dims
) -> TransformerLensBackend:
    from transformer_lens.model_bridge import TransformerBridge

    placement = {"device_map": "auto"} if device == "auto" else {"device": device}
    bridge = TransformerBridge.boot_transformers(
        path, dtype=dtype, tokenizer=tokenizer, **placement
    )
    bridge.eval()
    return TransformerLensBackend(bridge, bridge.cfg.n_layers, dims)


BACKEND = TransformerLensBackend

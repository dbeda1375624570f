"""Plain ``transformers`` with PyTorch forward hooks: the reference backend for parity tests."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..compat import cache_kwargs
from ..sites import Site
from .base import (
    Backend,
    Dims,
    Reader,
    Writer,
    get_module,
    grad_mode,
    hf_from_canonical,
    hf_to_canonical,
    needs_rotary,
    unembed_only_at,
)


class HFBackend(Backend):
    """Forward hooks on a ``LlamaForCausalLM``; every hook is removed in ``finally``."""

    name = "hf"

    def __init__(self, model: torch.nn.Module, dims: Dims):
        self.hf_model = model
        self.engine = model
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
        rotary: list[tuple[Tensor, Tensor]] = []
        handles = []
        sites = sorted(set(reads) | set(writes), key=lambda s: s.order)

        def make_hook(site: Site):
            part = site.spec.hf_part
            reader, writer = reads.get(site), writes.get(site)

            def transform(raw: Tensor) -> Tensor | None:
                canon = hf_to_canonical(site, raw, self.dims, rotary[0] if rotary else None)
                if writer is not None:
                    canon = writer(canon)
                if reader is not None:
                    results[site] = reader(canon)
                return hf_from_canonical(site, canon) if writer is not None else None

            if part == "input0":

                def pre_hook(module, args):
                    new = transform(args[0])
                    return None if new is None else (new, *args[1:])

                return pre_hook, True

            def post_hook(module, args, output):
                if part == "output":
                    new = transform(output)
                    return new
                index = 0 if part == "output0" else 1
                new = transform(output[index])
                if new is None:
                    return None
                out = list(output)
                out[index] = new
                return tuple(out)

            return post_hook, False

        try:
            if needs_rotary(sites):
                handles.append(
                    self.hf_model.model.rotary_emb.register_forward_hook(
                        lambda m, a, out: rotary.append(out)
                    )
                )
            for site in sites:
                hook, is_pre = make_hook(site)
                module = get_module(self.hf_model, site.hf_module_path())
                if is_pre:
                    handles.append(module.register_forward_pre_hook(hook))
                else:
                    handles.append(module.register_forward_hook(hook))
            with grad_mode(grad), unembed_only_at(self.hf_model.lm_head, logits_index):
                logits = self.hf_model(
                    input_ids=ids,
                    use_cache=past_key_values is not None,
                    **cache_kwargs(self.hf_model.forward, past_key_values),
                ).logits
        finally:
            for handle in handles:
                handle.remove()
        return logits, results


def load(path: str, *, device: str, dtype: torch.dtype, tokenizer, dims: Dims) -> HFBackend:
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "attn_implementation": "eager"}
    if device == "auto":
        kwargs["device_map"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device != "auto":
        model = model.to(device)
    return HFBackend(model.eval(), dims)


BACKEND = HFBackend

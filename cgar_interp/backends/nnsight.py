"""nnsight 0.8: reads and writes inside one ``trace``, in execution order.

nnsight is imported lazily (inside :func:`load`), so its global patches never touch runs that
use another backend.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..sites import Site
from .base import (
    ROTARY_ORDER,
    Backend,
    Dims,
    Reader,
    Writer,
    get_module,
    hf_from_canonical,
    hf_to_canonical,
    needs_rotary,
    unembed_only_at,
)


class NNsightBackend(Backend):
    """Module paths are the HF ones (the envoy tree mirrors the model)."""

    name = "nnsight"

    def __init__(self, lm, dims: Dims):
        self.engine = lm
        self.hf_model = lm._module
        self.dims = dims

    def forward(
        self,
        ids: Tensor,
        reads: Mapping[Site, Reader],
        writes: Mapping[Site, Writer],
        past_key_values=None,
        logits_index: Tensor | None = None,
    ) -> tuple[Tensor, dict[Site, Tensor]]:
        import nnsight

        lm = self.engine
        sites = sorted(set(reads) | set(writes), key=lambda s: s.order)
        results: dict[Site, Tensor] = {}
        steps: list[tuple[tuple[int, int], Site | None]] = [(s.order, s) for s in sites]
        if needs_rotary(sites):
            steps.append((ROTARY_ORDER, None))
        steps.sort(key=lambda step: step[0])
        extra = (
            {}
            if past_key_values is None
            else {"past_key_values": past_key_values, "use_cache": True}
        )
        with (
            torch.no_grad(),
            unembed_only_at(self.hf_model.lm_head, logits_index),
            lm.trace(ids, **extra),
        ):
            rotary = None
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
                canon = hf_to_canonical(site, raw, self.dims, rotary)
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
                    results[site] = nnsight.save(reader(canon))
            logits = nnsight.save(lm.lm_head.output)
        return logits, dict(results)


def load(path: str, *, device: str, dtype: torch.dtype, tokenizer, dims: Dims) -> NNsightBackend:
    from nnsight.modeling.transformers import TransformersModel

    kwargs = {"dtype": dtype, "attn_implementation": "eager"}
    if device != "cpu":
        kwargs["device_map"] = device
    lm = TransformersModel(
        path, task="text-generation", tokenizer=tokenizer, dispatch=True, **kwargs
    )
    lm._module.eval()
    return NNsightBackend(lm, dims)

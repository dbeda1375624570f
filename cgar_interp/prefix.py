"""Prefix reuse through the KV cache: re-run only the last token, from any layer.

An intervention at the *last* position of a prompt changes nothing at earlier positions (the
model is causal). So for a group of equal-length prompts we run the prompt once, keep the keys
and values of positions ``0 .. n-2`` at every layer, and then push any number of replacement
residuals for the last position through blocks ``l .. L-1`` as *one token each*, attending to
the cached keys and values. This is exact (the same arithmetic as the full forward on those
positions), and the suffix costs one token per variant instead of the whole prompt.

Everything runs on the HF module tree that every backend wraps (TransformerBridge's blocks or
nnsight's module), reached through the backend's methods (:meth:`Backend.blocks
<cgar_interp.backends.base.Backend.blocks>` and its kin), with rotary embeddings and the causal
mask computed as the model does. Blocks
are called one by one, each with its inputs moved to its own device, so a model split over
several GPUs by ``device="auto"`` works too. A remote model (``remote=True``) has no modules
here: these paths raise :class:`~cgar_interp.remote.RemoteUnsupportedError` for it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .compat import cache_kwargs
from .devices import PerDevice, module_device
from .heap import trim_heap
from .models import ModelHandle, Patch, RunRequest
from .sites import site_name
from .tokens import TokenBatch


@dataclass
class LastTokenState:
    """Cached keys/values of a group of prompts and each last token's residuals.

    Attributes:
        cache: KV cache of cache slots ``0 .. W-1`` at every layer. Row ``i``'s suffix pass
            attends to slots ``0 .. lengths[i]-2`` only, so the cache may also hold the row's
            last token and right padding (a padded batch's capture pass), which are masked.
        resid: ``{l: [b, d_model]}`` residual after ``l`` blocks at each row's last position.
        lengths: ``[b]`` real lengths; row ``i``'s last token sits at ``lengths[i] - 1``.
    """

    cache: object
    resid: dict[int, Tensor]
    lengths: Tensor


def _blocks(
    handle: ModelHandle,
    h: Tensor,
    cache,
    positions: Tensor,
    record=None,
) -> Tensor:
    """Run ``h [rows, n, d]`` (row r's tokens at ``positions[r]``) through every block.

    ``positions`` is ``[rows | 1, n]``; the new tokens attend causally to every cached slot
    (the prefill and the capture of a last token: suffix passes over a padded cache use
    :func:`resume_staggered`). ``record`` (a dict) receives the residual after each block at
    the first new token.
    """
    from transformers.masking_utils import create_causal_mask

    backend = handle.backend
    blocks = backend.blocks()
    position_ids = positions.to(device=h.device, dtype=torch.long)
    rotary = backend.rotary_embedding()(h, position_ids=position_ids)
    mask = create_causal_mask(
        config=backend.config,
        inputs_embeds=h,
        attention_mask=None,
        position_ids=position_ids,
        **cache_kwargs(create_causal_mask, cache),
    )
    shared = PerDevice(attention_mask=mask, position_embeddings=rotary, position_ids=position_ids)
    for index in range(handle.arch.n_layers):
        block = blocks[index]
        device = module_device(block)  # blocks of a device map sit on several GPUs
        h = block(h.to(device), **shared.on(device), **cache_kwargs(block, cache), use_cache=True)
        if isinstance(h, tuple):
            h = h[0]
        if record is not None:
            record[index + 1] = h[:, 0]
    return h


def _prefill(handle: ModelHandle, ids: Tensor, cache) -> None:
    """Fill ``cache`` with ``ids [b, n]`` at positions ``0 .. n-1``.

    The model's own forward pass (embedding, then every block), block by block as in
    :func:`_blocks`, so that each block gets its inputs on its own device.
    """
    embed = handle.backend.embedding()
    h = embed(ids.to(module_device(embed)))
    _blocks(handle, h, cache, torch.arange(ids.shape[1])[None])


def last_token_state(handle: ModelHandle, ids: Tensor) -> LastTokenState:
    """Run equal-length prompts ``ids [b, n]`` (``n >= 2``) and keep what suffix passes need."""
    from transformers import DynamicCache

    handle.require_local("KV-cache prefix reuse (last_token_state)")
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"last_token_state needs [batch, n >= 2] ids; got {tuple(ids.shape)}")
    ids = ids.to(handle.input_device)
    b, n = ids.shape
    cache = DynamicCache(config=handle.backend.config)
    with torch.no_grad():
        _prefill(handle, ids[:, :-1], cache)
        prefix = copy.deepcopy(cache)  # positions 0..n-2; the last token's pass appends to `cache`
        h = handle.backend.embedding()(ids[:, -1:])
        resid = {0: h[:, 0]}
        _blocks(handle, h, cache, torch.full((b, 1), n - 1), record=resid)
    handle.stats.forward_calls += 1
    handle.stats.forward_rows += b
    return LastTokenState(prefix, resid, torch.full((b,), n, dtype=torch.long))


SUFFIX_PATCH_KINDS = ("z", "attn_out", "mlp_out")


@contextmanager
def suffix_patches(handle: ModelHandle, patches: Sequence[Patch]):
    """Apply ``patches`` to the new tokens of the suffix passes run inside the block.

    A suffix pass holds only last-position tokens (one per variant), so each patch must be at
    position ``-1``. Its function sees the canonical values of the new tokens, ``[b, n_var,
    ...]`` (column ``v`` is variant ``v``), and returns their replacement; a tensor value is
    added. Hooks sit on the HF module tree the suffix runs on (the site registry's
    ``hf_module``), for ``z``, ``attn_out`` and ``mlp_out``.
    """
    from .backends.base import hf_from_canonical, hf_to_canonical

    dims = handle.arch
    hooks = []
    try:
        for patch in patches:
            site = handle.site(patch.site)
            if site.kind not in SUFFIX_PATCH_KINDS:
                raise ValueError(
                    f"a suffix pass patches {', '.join(SUFFIX_PATCH_KINDS)}; got {site} (a "
                    "resid replacement is the h_last argument)"
                )
            if patch.positions not in (-1, [-1], (-1,)):
                raise ValueError(
                    f"a suffix pass holds only the last position; patch at {site} asks for "
                    f"positions {patch.positions!r} (valid: -1)"
                )
            module = handle.backend.module(site.spec.hf_module.format(l=site.layer))

            def change(raw: Tensor, site=site, value=patch.value) -> Tensor:
                canonical = hf_to_canonical(site, raw, dims, None)
                if callable(value):
                    new = value(canonical)
                else:
                    new = canonical + value.to(device=raw.device, dtype=raw.dtype)
                if new.shape != canonical.shape:
                    raise ValueError(
                        f"suffix patch at {site} returned shape {tuple(new.shape)}; expected "
                        f"{tuple(canonical.shape)}"
                    )
                return hf_from_canonical(site, new.to(raw.dtype)).reshape(raw.shape)

            if site.spec.hf_part == "input0":

                def pre(module, args, kwargs, change=change):
                    return (change(args[0]), *args[1:]), kwargs

                hooks.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            else:

                def post(module, args, output, change=change):
                    if isinstance(output, tuple):
                        return (change(output[0]), *output[1:])
                    return change(output)

                hooks.append(module.register_forward_hook(post))
        yield
    finally:
        for hook in hooks:
            hook.remove()


def fork_cache(cache):
    """A cache that shares ``cache``'s key/value tensors but not its layer objects.

    A dynamic cache layer appends by concatenation (a new tensor), never in place, so a suffix
    pass over the fork leaves ``cache`` as it was: no copy of the cached keys and values.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def select_state(state: LastTokenState, index: Tensor) -> LastTokenState:
    """Rows ``index`` of a kept state, its cache cut to the slots those rows' suffix passes see.

    The keys and values of rows ``index`` are gathered (a copy of those rows only) and cut to
    ``max(lengths) - 1`` slots: row ``i``'s suffix pass attends to slots ``0 .. lengths[i]-2``
    (:func:`resume_staggered`), so the slots dropped (the last tokens and right padding of a
    wider batch) are ones it masks anyway.

    Args:
        state: ``b`` rows.
        index: ``[r]`` row indices into ``state``.
    """
    index = torch.as_tensor(index, dtype=torch.long).cpu()
    lengths = state.lengths.cpu()[index]
    cache = fork_cache(state.cache)
    slots = max(int(lengths.max()) - 1, 1)
    for layer in cache.layers:
        for name in ("keys", "values"):
            value = getattr(layer, name)
            setattr(layer, name, value[index.to(value.device), :, :slots])
    resid = {layer: value[index.to(value.device)] for layer, value in state.resid.items()}
    return LastTokenState(cache, resid, lengths)


def resume_staggered(
    handle: ModelHandle,
    state: LastTokenState,
    entries: dict[int, Tensor],
    patches: Sequence[Patch] = (),
    grad: bool = False,
) -> dict[int, Tensor]:
    """Final residuals of replacement residuals that enter at different layers, in one pass.

    Each entry ``entries[l]`` (``[n_var_l, b, d_model]``) replaces the residual after ``l``
    blocks at each prompt's last position. Every variant runs as a new token of its prompt's
    row, all at the last token's position, attending to the cached slots ``0 .. lengths-2``
    and to itself only (an ``and`` mask over the causal one): the arithmetic of separate
    one-token passes, without repeating the cached keys and values per variant. Variants join
    the pass at their own layer, so each block runs once over every variant that passes
    through it: its weights are read once per prompt group, not once per entry layer.

    Args:
        state: from :func:`last_token_state`, or kept by a capture pass
            (:func:`cgar_interp.capture.capture_many` with ``keep_states``), for ``b`` prompts.
        entries: ``{layer 0 .. n_layers: [n_var_l, b, d_model]}`` (variant-major).
        patches: interventions inside the blocks at the last position (only with a single
            entry layer: a function sees ``[b, n_var, ...]``; see :func:`suffix_patches`).
        grad: run with gradient tracking (:func:`last_token_gradients`); the cached keys and
            values are constants.

    Returns:
        ``{layer: [n_var_l, b, d_model]}`` residuals after the last block (before the final
        norm; :meth:`~cgar_interp.models.ModelHandle.decode_residual` gives the logits).
    """
    from transformers.masking_utils import create_causal_mask

    handle.require_local("KV-cache suffix passes (resume_staggered)")
    n_layers = handle.arch.n_layers
    layers = _check_entries(handle, entries, patches)
    if not layers:
        return {}
    b = entries[layers[0]].shape[1]
    counts = [entries[layer].shape[0] for layer in layers]
    cache = fork_cache(state.cache)
    width = cache.get_seq_length()  # before any update: every layer holds the same slots
    last = state.lengths.cpu() - 1  # [b]: the last token's position, = the visible cache slots
    visible = torch.arange(width)[None] < last[:, None]  # [b, W]
    device, dtype = handle.input_device, handle.dtype
    backend = handle.backend
    blocks = backend.blocks()
    total = sum(counts)
    position_ids = last[:, None].expand(b, total).to(device=device, dtype=torch.long)
    probe = torch.zeros(b, total, handle.arch.d_model, device=device, dtype=dtype)
    cos, sin = backend.rotary_embedding()(
        probe, position_ids=position_ids
    )  # equal rows: slice by count

    def own_slot(batch_idx, head_idx, q_idx, kv_idx, width=width):
        return (kv_idx < width) | (kv_idx == q_idx)

    masks: dict[int, object] = {}  # tokens in the pass -> its mask (made before any update)

    def mask_for(n: int):
        if n not in masks and masks:
            # query q's row does not depend on how many tokens follow it: a wider pass's
            # [b, 1, n', W + n'] mask holds this one as its top-left corner
            wider = max(masks)
            full = masks[wider]
            if wider > n and isinstance(full, Tensor) and full.dim() == 4 and n > 1:
                masks[n] = full[:, :, :n, : width + n]
        if n not in masks:
            attend = torch.cat([visible, torch.ones(b, n, dtype=torch.bool)], dim=1)
            masks[n] = create_causal_mask(
                config=backend.config,
                inputs_embeds=probe[:, :n],
                attention_mask=attend.long().to(device),
                position_ids=position_ids[:, :n],
                and_mask_function=own_slot if n > 1 else None,
                **cache_kwargs(create_causal_mask, cache),
            )
        return masks[n]

    running = None
    for n in sorted(
        {sum(counts[: i + 1]) for i in range(len(layers)) if layers[i] < n_layers}, reverse=True
    ):
        mask_for(n)
    with torch.enable_grad() if grad else torch.no_grad(), suffix_patches(handle, patches):
        for index in range(layers[0], n_layers + 1):
            if index in entries:  # these variants join here
                h_new = entries[index].transpose(0, 1).to(device=device, dtype=dtype)
                running = h_new if running is None else torch.cat([running.to(device), h_new], 1)
            if index == n_layers:
                break
            n = running.shape[1]
            block = blocks[index]
            on = module_device(block)  # blocks of a device map sit on several GPUs
            shared = PerDevice(
                attention_mask=mask_for(n),
                position_embeddings=(cos[:, :n], sin[:, :n]),
                position_ids=position_ids[:, :n],
            )
            running = block(
                running.to(on), **shared.on(on), **cache_kwargs(block, cache), use_cache=True
            )
            if isinstance(running, tuple):
                running = running[0]
    trim_heap()  # the pass's per-block temporaries (cache concatenations, GQA-expanded keys)
    handle.stats.resume_calls += 1
    handle.stats.resume_rows += b * total
    handle.stats.resume_block_rows += b * sum(
        c * (n_layers - layer) for c, layer in zip(counts, layers, strict=True)
    )
    out, offset = {}, 0
    for layer, count in zip(layers, counts, strict=True):
        out[layer] = running[:, offset : offset + count].transpose(0, 1)  # [n_var, b, d]
        offset += count
    return out


def _check_entries(handle: ModelHandle, entries: dict[int, Tensor], patches) -> list[int]:
    """The entry layers, sorted, after checking them and the entries' shapes."""
    n_layers = handle.arch.n_layers
    layers = sorted(entries)
    if not layers:
        return layers
    if layers[0] < 0 or layers[-1] > n_layers:
        raise ValueError(f"entry layers {layers} are out of range 0..{n_layers}")
    if patches and len(layers) > 1:
        raise ValueError(f"suffix patches need a single entry layer; got layers {layers}")
    b = entries[layers[0]].shape[1]
    for layer in layers:
        if entries[layer].dim() != 3 or entries[layer].shape[1] != b:
            raise ValueError(
                f"entry at layer {layer} has shape {tuple(entries[layer].shape)}; expected "
                f"[n_var, {b}, d_model]"
            )
    return layers


def _replace_rows(index: Tensor, values: Tensor, x: Tensor) -> Tensor:
    """``x [rows, 1, d]`` with rows ``index [k]`` replaced by ``values [k, d]`` (only the
    replaced rows travel with a remote request)."""
    value = values.to(device=x.device, dtype=x.dtype)[:, None, :]
    return x.index_put((index.to(x.device),), value)


def _per_variant(fn, n_var: int, x: Tensor) -> Tensor:
    """A suffix-pass patch function (``[b, n_var, ...]``) applied to variant-major full-forward
    rows ``x [n_var * b, 1, ...]``."""
    b = x.shape[0] // n_var
    inner = x[:, 0].reshape(n_var, b, *x.shape[2:]).transpose(0, 1)  # [b, n_var, ...]
    out = fn(inner).transpose(0, 1).reshape(n_var * b, *x.shape[2:])
    return out[:, None]


def resume_full(
    handle: ModelHandle,
    batch: TokenBatch,
    entries: dict[int, Tensor],
    patches: Sequence[Patch] = (),
    max_rows: int | None = None,
) -> dict[int, Tensor]:
    """What :func:`resume_staggered` computes, as plain full forward passes (no KV cache).

    Each variant is a copy of its prompt in a batch whose residual after ``l`` blocks at the
    last position is replaced (a ``resid.{l}`` patch); the residual after the last block is
    read there. Earlier positions cannot see the last one, so this is the same computation as
    a one-token suffix pass over the prompt's cache. It is what a remote model runs (nothing
    lives on an NDIF server between requests), and the plain path the KV-cache shortcut is
    tested against.

    Args:
        batch: the ``b`` prompts (right-padded).
        entries: ``{layer 0 .. n_layers: [n_var_l, b, d_model]}`` (variant-major).
        patches: as in :func:`resume_staggered` (a single entry layer; a function sees
            ``[b, n_var, ...]``); then every variant goes in one forward pass.
        max_rows: most prompt copies per forward pass (``None``: all in one).

    Returns:
        ``{layer: [n_var_l, b, d_model]}`` residuals after the last block, before the norm.
    """
    if not _check_entries(handle, entries, patches):
        return {}
    return next(resume_full_many(handle, [(None, batch, entries, patches)], max_rows))[1]


def resume_full_many(
    handle: ModelHandle,
    jobs: Iterable[tuple[Any, TokenBatch, dict[int, Tensor], Sequence[Patch]]],
    max_rows: int | None = None,
) -> Iterator[tuple[Any, dict[int, Tensor]]]:
    """:func:`resume_full` of each ``(key, batch, entries, patches)`` job, yielding ``(key,
    result)`` in order. Every job's passes are independent of every other's, so they run
    through :meth:`~cgar_interp.models.ModelHandle.run_many` as one stream: on NDIF the
    passes of several chunks and jobs go as one request (an nnsight session). Jobs are taken
    from ``jobs`` as their passes are needed; each must have at least one entry layer."""
    final_site = site_name("resid", handle.arch.n_layers)

    def requests():
        for key, batch, entries, patches in jobs:
            layers = _check_entries(handle, entries, patches)
            if not layers:
                raise ValueError("a resume_full_many job needs at least one entry layer")
            b = batch.batch_size
            if entries[layers[0]].shape[1] != b:
                raise ValueError(
                    f"entries hold {entries[layers[0]].shape[1]} prompts; the batch {b}"
                )
            plan = [(layer, v) for layer in layers for v in range(entries[layer].shape[0])]
            step = len(plan) if patches or max_rows is None else max(1, max_rows // b)
            starts = range(0, len(plan), step)
            for start in starts:
                chunk = plan[start : start + step]
                copies = TokenBatch(
                    batch.ids.repeat(len(chunk), 1), batch.lengths.repeat(len(chunk))
                )
                writes = []
                for layer in sorted({layer for layer, _ in chunk}):
                    mine = [(i, v) for i, (lay, v) in enumerate(chunk) if lay == layer]
                    index = torch.cat([torch.arange(i * b, (i + 1) * b) for i, _ in mine])
                    values = torch.cat([entries[layer][v] for _, v in mine])  # [len(mine) * b, d]
                    writes.append(
                        Patch(site_name("resid", layer), -1, partial(_replace_rows, index, values))
                    )
                n_var = len(chunk)
                for patch in patches:  # a suffix patch's function sees [b, n_var, ...]
                    writes.append(Patch(patch.site, -1, partial(_per_variant, patch.value, n_var)))
                request = RunRequest(copies, (final_site,), -1, tuple(writes), want_logits=False)
                yield (key, layers, chunk, b, start == starts[-1]), request

    parts: dict[int, list[Tensor]] = {}
    for (key, layers, chunk, b, last), run in handle.run_many(requests()):
        final = run[final_site].reshape(len(chunk), b, -1)
        for i, (layer, _) in enumerate(chunk):
            parts.setdefault(layer, []).append(final[i])
        if last:
            yield key, {layer: torch.stack(parts[layer]) for layer in layers}
            parts = {}


def resume_last_token(
    handle: ModelHandle,
    state: LastTokenState,
    layer: int,
    h_last: Tensor,
    patches: Sequence[Patch] = (),
) -> Tensor:
    """Logits of replacement residuals at the last position, from layer ``layer`` on.

    One entry layer of :func:`resume_staggered` (variants as tokens of their prompt's row,
    each attending to the cache and itself), then the final norm and the unembedding.

    Args:
        state: from :func:`last_token_state`, or kept by a capture pass
            (:func:`cgar_interp.capture.capture_many` with ``keep_states``), for ``b`` prompts.
        layer: ``0 .. n_layers``; ``h_last`` replaces the residual after ``layer`` blocks.
        h_last: ``[n_var, b, d_model]`` replacement residuals (variant-major).
        patches: interventions inside blocks ``layer ..`` at the last position, applied to
            every variant (a function sees ``[b, n_var, ...]``; see :func:`suffix_patches`).

    Returns:
        ``[n_var, b, vocab]`` logits at the last position.
    """
    final = resume_staggered(handle, state, {layer: h_last}, patches)[layer]
    return handle.decode_residual(final)


def last_token_gradients(
    handle: ModelHandle, state: LastTokenState, layers: Sequence[int], objective
) -> dict[int, Tensor]:
    """The gradient of ``objective`` at each block's ``z`` (last position), from the kept cache.

    The last token's ``z`` at block ``l`` reaches only the last position's residual, in blocks
    ``l .. L-1`` (no earlier position attends to it), so its gradient needs the last token's
    path alone, with the cached keys and values of the earlier positions held constant: the
    last token runs again from its embedding as a one-token suffix pass with gradient
    tracking (a zero added at each block's ``z``, :func:`suffix_patches`), then the final norm
    and the unembedding, and one backward pass of ``L`` block-tokens per prompt. Equal to the
    gradient of a full forward and backward pass
    (:meth:`~cgar_interp.models.ModelHandle.gradients`), which the self-check (``grad_pass``)
    and the tests compare; no activation of the prompt is kept for it.

    Args:
        state: kept by a capture pass with ``resid.0`` read (the last token's embedding).
        layers: the blocks whose ``z`` gradient is wanted.
        objective: ``[b, vocab] -> [b]`` per-row function of the last position's logits.

    Returns:
        ``{block: [b, n_heads, d_head]}`` float32, detached.
    """
    handle.require_local("KV-cache suffix passes (last_token_gradients)")
    if 0 not in state.resid:
        raise ValueError("last_token_gradients needs the kept state's resid.0 (read it)")
    arch = handle.arch
    b = state.lengths.shape[0]
    deltas = {
        layer: torch.zeros(
            b, 1, arch.n_heads, arch.d_head, device=handle.input_device, requires_grad=True
        )
        for layer in layers
    }
    patches = [Patch(f"z.{layer}", -1, delta) for layer, delta in deltas.items()]
    h0 = state.resid[0].to(handle.input_device)[None]  # [1, b, d_model]
    final = resume_staggered(handle, state, {0: h0}, patches, grad=True)[0][0]  # [b, d]
    backend = handle.backend
    with torch.enable_grad():
        norm = backend.final_norm()
        logits = backend.lm_head()(norm(final.to(module_device(norm))))
        total = objective(logits.float()).sum()
        grads = torch.autograd.grad(total, list(deltas.values()), allow_unused=True)
    return {
        layer: (torch.zeros_like(delta) if g is None else g).detach()[:, 0].float()
        for (layer, delta), g in zip(deltas.items(), grads, strict=True)
    }


def resume_from_mid(
    handle: ModelHandle, state: LastTokenState, layer: int, h_mid: Tensor
) -> Tensor:
    """Logits of replacement mid-block residuals at the last position, from block ``layer``'s MLP.

    ``h_mid`` replaces ``resid_mid.{layer}`` (the residual after block ``layer``'s attention)
    at each prompt's last position. Block ``layer``'s MLP half runs as the model runs it
    (``x = h + mlp(post_attention_layernorm(h))``, position-wise, so it needs no cache), then
    blocks ``layer + 1 .. L-1`` as one-token suffix passes (:func:`resume_last_token`). A change
    to one attention head's output at the last position is exactly such a replacement:
    ``h_mid' = resid_mid + (new head_out - old head_out)``.

    Args:
        state: as for :func:`resume_last_token`, for ``b`` prompts.
        layer: block ``0 .. n_layers-1``.
        h_mid: ``[n_var, b, d_model]`` replacement mid-block residuals (variant-major).

    Returns:
        ``[n_var, b, vocab]`` logits at the last position.
    """
    handle.require_local("KV-cache suffix passes (resume_from_mid)")
    n_layers = handle.arch.n_layers
    if not 0 <= layer < n_layers:
        raise ValueError(f"resume_from_mid: block {layer} is out of range 0..{n_layers - 1}")
    x = mlp_half(handle.backend.block(layer), h_mid, handle.dtype)
    if layer + 1 == n_layers:  # nothing left to run: the final residual
        handle.stats.resume_calls += 1
        handle.stats.resume_rows += x.shape[0] * x.shape[1]
        return handle.decode_residual(x)
    return resume_last_token(handle, state, layer + 1, x)


def mlp_half(block, h_mid: Tensor, dtype: torch.dtype) -> Tensor:
    """``h + mlp(post_attention_layernorm(h))``: the rest of a block after its attention, as
    the model runs it (position-wise, so it needs no cache). ``h_mid [..., d_model]``."""
    with torch.no_grad():
        h = h_mid.to(device=module_device(block), dtype=dtype)
        return h + block.mlp(block.post_attention_layernorm(h))


def common_prefix_length(ids: Tensor, lengths: Tensor) -> int:
    """Tokens every row starts with, leaving at least one token per row after them."""
    ids, lengths = ids.cpu(), lengths.cpu()
    limit = int(lengths.min()) - 1
    if limit <= 0 or ids.shape[0] == 0:
        return 0
    same = (ids[:, :limit] == ids[:1, :limit]).all(dim=0)
    differing = (~same).nonzero()
    return int(differing[0]) if len(differing) else limit


def shared_prefix_cache(handle: ModelHandle, prefix_ids: Tensor):
    """KV cache of one prefix ``[p]`` (batch 1), run once on the plain HF module tree."""
    from transformers import DynamicCache

    handle.require_local("KV-cache prefix reuse (shared_prefix_cache)")
    cache = DynamicCache(config=handle.backend.config)
    with torch.no_grad():
        _prefill(handle, prefix_ids[None], cache)
    handle.stats.prefix_calls += 1
    return cache


def detach_cache(cache) -> None:
    """Drop the autograd graph from a KV cache a grad pass filled (in place), so the kept
    keys and values hold no activations of the backward alive."""
    for layer in cache.layers:
        for name in ("keys", "values"):
            value = getattr(layer, name, None)
            if isinstance(value, Tensor) and value.requires_grad:
                setattr(layer, name, value.detach())


def repeat_cache(cache, rows: int):
    """A copy of a batch-1 cache repeated over ``rows`` (the original stays reusable)."""
    out = copy.deepcopy(cache)
    if rows > 1:
        out.batch_repeat_interleave(rows)
    return out

"""Batched capture over many prompts: the engine loop every probe shares.

Prompts are sorted by length and cut into batches (less padding, and right padding never
changes a result), run through :meth:`ModelHandle.capture`, and put back in the caller's order.
Probes never write their own forward loop: they call :func:`capture_many` for reads, and
:func:`iter_batches` + :meth:`ModelHandle.resume` / ``run_with_patches`` for interventions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .heap import trim_heap
from .models import DECODE_ROWS, ModelHandle, RunRequest, RunResult
from .sites import Site, site_names
from .tokens import TokenBatch

# cached slots (rows x width) per gradient suffix pass (resume_gradients): its backward keeps
# each block's keys and values, expanded to the query heads, of every row it runs; on the
# embedded model 1024 slots hold about 160 MB of them, and a 16 x 210 batch about 650 MB
GRAD_PASS_SLOTS = 1024


@dataclass(frozen=True)
class CacheRead:
    """A quantity a capture pass computes from each batch's KV cache as the pass fills it,
    kept in place of the cache: a probe that reads the keys (not the values, and not to resume
    them) then holds kilobytes per prompt instead of the whole cache.

    Named ``"<kind>.<layer>"`` in a read (:func:`capture_many`'s ``cache_reads``, a
    :class:`~cgar_interp.probes.inputs.SharedRead`'s); ``outputs`` are the names of what one
    read yields, templates with ``{l}``.

    Attributes:
        kind: the registered name.
        outputs: output name templates, e.g. ``("head_scores.{l}", "key_norm_max.{l}")``.
        fn: ``fn(handle, state, captures, layer) -> {output name: [r, ...]}``: ``state`` is the
            batch's :class:`~cgar_interp.prefix.LastTokenState` (``r`` rows, its cache holding
            the batch's slots), ``captures`` the batch's last-position sites.
        key_axis: the output templates whose last axis is the key axis: padded with zeros to
            the batch's width, as ``attn_pattern`` is (a reader masks them by the lengths).
        sites: site templates the function reads from ``captures`` (read with it).
    """

    kind: str
    outputs: tuple[str, ...]
    fn: Callable
    key_axis: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()


CACHE_READS: dict[str, CacheRead] = {}


def register_cache_read(read: CacheRead) -> CacheRead:
    """Add a :class:`CacheRead` to the registry; a duplicate kind is refused."""
    if read.kind in CACHE_READS:
        raise ValueError(f"cache read {read.kind!r} is already registered")
    CACHE_READS[read.kind] = read
    return read


def parse_cache_read(name: str) -> tuple[CacheRead, int]:
    """``"<kind>.<layer>"`` -> (its :class:`CacheRead`, layer); a clear error otherwise."""
    kind, _, layer = str(name).rpartition(".")
    if kind not in CACHE_READS or not layer.isdigit():
        raise ValueError(
            f"unknown cache read {name!r}: use '<kind>.<layer>' with kind one of "
            f"{', '.join(sorted(CACHE_READS)) or '(none registered)'}"
        )
    return CACHE_READS[kind], int(layer)


def cache_read_outputs(names: Iterable[str]) -> list[str]:
    """The output names of cache reads ``names``, in order."""
    out = []
    for name in names:
        read, layer = parse_cache_read(name)
        out += [template.format(l=layer) for template in read.outputs]
    return out


def cache_read_sites(names: Iterable[str]) -> list[str]:
    """The last-position sites cache reads ``names`` need in the same pass."""
    out: list[str] = []
    for name in names:
        read, layer = parse_cache_read(name)
        out += [t.format(l=layer) for t in read.sites if t.format(l=layer) not in out]
    return out


def is_key_axis_output(name: str) -> bool:
    """Whether capture ``name`` is a cache read's output whose last axis is the key axis."""
    kind, _, layer = name.rpartition(".")
    return any(
        template.format(l=layer) == name
        for read in CACHE_READS.values()
        for template in read.key_axis
    )


@dataclass(frozen=True)
class SubBatch:
    """A slice of a larger batch: ``indices`` into it and the ids trimmed to their own width."""

    indices: Tensor
    batch: TokenBatch


def iter_batches(batch: TokenBatch, batch_size: int, sort: bool = True) -> Iterator[SubBatch]:
    """Cut ``batch`` into sub-batches of at most ``batch_size`` rows (sorted by length)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    lengths = batch.lengths.cpu()
    order = torch.argsort(lengths, stable=True) if sort else torch.arange(len(lengths))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = int(lengths[idx].max())
        yield SubBatch(idx, TokenBatch(batch.ids[idx, :width], lengths[idx]))


def capture_many(
    handle: ModelHandle,
    batch: TokenBatch,
    sites: Iterable[str | Site],
    positions: int | Sequence[int] = -1,
    *,
    batch_size: int = 16,
    with_logits: bool = True,
    progress: Callable[[int], None] | None = None,
    shared_prefix: bool | None = None,
    min_prefix: int = 16,
    keep_states: bool = False,
    grad_sites: Iterable[str | Site] = (),
    objective=None,
    cache_reads: Iterable[str] = (),
) -> RunResult:
    """Capture ``sites`` at ``positions`` (and last-position logits) for every row of ``batch``.

    When every row starts with the same tokens (ICL prompts whose demonstrations are shared by
    all queries), that common prefix runs once and its KV cache is reused for every row; only
    the rest of each prompt runs through the hooked model. Positions must then be negative
    (counted from each row's end), which is what probes use.

    Args:
        handle: the model.
        batch: all prompts, right-padded.
        sites: site names.
        positions: relative positions per row (default ``-1``, each row's last token), or
            ``None``: every position, ``[n, width, ...]`` (beyond a row's length: what its
            padding computed, or zeros; mask them by the batch's lengths).
        batch_size: rows per forward pass.
        with_logits: also keep logits at the last position, ``[n, vocab]``.
        progress: called with the number of rows finished after each batch.
        shared_prefix: reuse a common prefix's KV cache (``None``: when it has at least
            ``min_prefix`` tokens and every position is negative, and the model is not
            remote; ``False``: never).
        keep_states: also keep each sub-batch's KV cache and last-position residuals as a
            :class:`~cgar_interp.prefix.LastTokenState` (in ``RunResult.states``), so later
            interventions at the last position run as one-token suffix passes
            (:func:`resume_variants`) without a second forward pass. Needs ``positions=-1``
            and ``resid.{l}`` sites for the layers to resume from. A remote model keeps no
            cache (``LastTokenState.cache`` is None: nothing lives on the server between
            requests); :func:`resume_variants` then runs its variants as full forward passes.

        grad_sites: patchable sites whose gradient of ``objective`` is kept at ``positions``
            (``RunResult.grads``): each sub-batch then runs forward *and* backward
            (:meth:`~cgar_interp.models.ModelHandle.gradients`), reads and kept states as
            without. ``objective``: ``objective.rows(indices into batch)`` is a sub-batch's
            per-row function of the last position's logits, ``[b, vocab] -> [b]`` (e.g.
            :class:`~cgar_interp.metrics.GoldProbability`; a plain object a remote trace can
            carry).
        cache_reads: :class:`CacheRead` s (``"<kind>.<layer>"``) computed from each batch's KV
            cache as the pass fills it; their outputs join ``RunResult.captures`` and the cache
            is dropped unless ``keep_states``. Needs ``positions=-1`` and a local model (a
            remote model keeps no cache: the reads are skipped there, and their outputs absent).

    Returns:
        a :class:`RunResult` whose tensors are ``[n, ...]`` in the order of ``batch``'s rows,
        on the CPU.
    """
    job = CaptureJob(
        handle,
        batch,
        sites,
        positions,
        batch_size=batch_size,
        with_logits=with_logits,
        progress=progress,
        shared_prefix=shared_prefix,
        min_prefix=min_prefix,
        keep_states=keep_states,
        grad_sites=grad_sites,
        objective=objective,
        cache_reads=cache_reads,
    )
    return capture_jobs(handle, [job])[0]


def capture_jobs(handle: ModelHandle, jobs: Sequence[CaptureJob]) -> list[RunResult]:
    """Several :func:`capture_many` calls at once, their results in the order of ``jobs``.

    Every batch of every job is a pass independent of the others, so all of them go through
    :meth:`~cgar_interp.models.ModelHandle.run_many` as one stream: on NDIF, as few requests
    (nnsight sessions) as its caps allow; locally one pass after another, as the jobs would
    run one by one.
    """

    def requests() -> Iterator[tuple[tuple[int, object], RunRequest]]:
        for i, job in enumerate(jobs):
            for key, request in job.requests():
                yield (i, key), request

    for (i, key), run in handle.run_many(requests()):
        jobs[i].add(key, run)
    return [job.result() for job in jobs]


class CaptureJob:
    """One :func:`capture_many` call: its passes (:meth:`requests`), and its result made from
    theirs (:meth:`add` each, then :meth:`result`). Arguments as :func:`capture_many`'s."""

    def __init__(
        self,
        handle: ModelHandle,
        batch: TokenBatch,
        sites: Iterable[str | Site],
        positions: int | Sequence[int] | None = -1,
        *,
        batch_size: int = 16,
        with_logits: bool = True,
        progress: Callable[[int], None] | None = None,
        shared_prefix: bool | None = None,
        min_prefix: int = 16,
        keep_states: bool = False,
        grad_sites: Iterable[str | Site] = (),
        objective=None,
        cache_reads: Iterable[str] = (),
    ):
        from .prefix import common_prefix_length

        grad_sites = list(grad_sites)
        if grad_sites and objective is None:
            raise ValueError("grad_sites need an objective (e.g. metrics.GoldProbability)")
        if isinstance(positions, Tensor):
            raise ValueError(
                "capture_many takes relative positions (ints) or None (every position); pass "
                "e.g. -1 or [-2, -1]"
            )
        if keep_states and positions != -1:
            raise ValueError(
                f"keep_states needs positions=-1 (each row's last token); got {positions}"
            )
        # a remote model keeps no cache: its reader takes another path (the outputs are absent)
        self.cache_reads = [] if handle.remote else list(cache_reads)
        # parsed once (an unknown name fails here, before any pass)
        self._cache_reads = [parse_cache_read(name) for name in self.cache_reads]
        if self.cache_reads and positions != -1:
            raise ValueError(
                f"cache_reads need positions=-1 (each row's last token); got {positions}"
            )
        if shared_prefix:
            handle.require_local("capture_many(shared_prefix=True) (a KV cache run here)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.handle, self.batch, self.positions = handle, batch, positions
        sites = list(sites)
        sites += [s for s in cache_read_sites(self.cache_reads) if s not in map(str, sites)]
        self.sites, self.grad_sites, self.objective = sites, grad_sites, objective
        self.batch_size, self.with_logits, self.progress = batch_size, with_logits, progress
        self.keep_states = keep_states
        self.states: list[tuple[Tensor, object]] = []
        self.parts: dict[str, list[Tensor]] = {str(handle.site(s)): [] for s in self.sites}
        self.parts.update({name: [] for name in cache_read_outputs(self.cache_reads)})
        self.grad_parts: dict[str, list[Tensor]] = {str(handle.site(s)): [] for s in grad_sites}
        self.logits: list[Tensor] = []
        self.order: list[Tensor] = []
        self.every = positions is None  # every position: [n, width, ...], masked by lengths
        relative = not self.every and all(
            p < 0 for p in ([positions] if isinstance(positions, int) else positions)
        )
        self.prefix_len = common_prefix_length(batch.ids, batch.lengths) if relative else 0
        self.use_prefix = (
            self.prefix_len >= min_prefix and not handle.remote
            if shared_prefix is None
            else bool(shared_prefix) and self.prefix_len > 0
        )

    def requests(self) -> Iterator[tuple[tuple[SubBatch, object], RunRequest]]:
        """One pass per batch, keyed by ``(batch, its KV cache or None)``; built lazily, so a
        local run holds one batch's cache at a time until its pass is done."""
        from .prefix import repeat_cache, shared_prefix_cache

        handle, batch = self.handle, self.batch
        if self.use_prefix:
            cache = shared_prefix_cache(handle, batch.ids[0, : self.prefix_len])
            batch = TokenBatch(batch.ids[:, self.prefix_len :], batch.lengths - self.prefix_len)
        for sub in iter_batches(batch, self.batch_size):
            past = repeat_cache(cache, len(sub.indices)) if self.use_prefix else None
            if (self.keep_states or self.cache_reads) and past is None and not handle.remote:
                from transformers import DynamicCache

                past = DynamicCache(config=handle.backend.config)
            if self.grad_sites:
                request = RunRequest(
                    sub.batch,
                    tuple(self.sites),
                    self.positions,
                    logits_positions=-1,
                    past_key_values=past,
                    grad_sites=tuple(self.grad_sites),
                    objective=self.objective.rows(sub.indices),
                )
            else:
                request = RunRequest(
                    sub.batch,
                    tuple(self.sites),
                    self.positions,
                    logits_positions=-1,
                    want_logits=self.with_logits,  # without, the unembedding is skipped
                    past_key_values=past,
                )
            yield (sub, past), request

    def add(self, key: tuple[SubBatch, object], run: RunResult) -> None:
        """Keep one batch's result (``key`` as :meth:`requests` gave it)."""
        from .prefix import LastTokenState, detach_cache

        sub, past = key
        width = self.batch.ids.shape[1]
        if self.grad_sites:
            if past is not None:
                detach_cache(past)  # the kept keys and values carry no graph
            for name, value in run.grads.items():
                self.grad_parts[name].append(value.cpu())
        captures = dict(run.captures)
        if self.keep_states or self.cache_reads:
            # the cache now holds every slot of the batch; suffixes mask the rest
            resid = {
                site.layer: run.captures[str(site)]
                for site in map(self.handle.site, self.sites)
                if site.kind == "resid"
            }
            lengths = sub.batch.lengths + (self.prefix_len if self.use_prefix else 0)
            state = LastTokenState(past, resid, lengths)
            for read, layer in self._cache_reads:
                captures.update(read.fn(self.handle, state, run.captures, layer))
            if self.keep_states:
                self.states.append((sub.indices, state))
        for name, value in captures.items():
            if self.every:  # position axis: pad to the full batch width
                pad = [0, 0] * (value.dim() - 2) + [0, width - value.shape[1]]
                value = torch.nn.functional.pad(value, pad)
            if name.startswith("attn_pattern.") or is_key_axis_output(name):
                # key axis: pad to the full batch width
                value = torch.nn.functional.pad(value, (0, width - value.shape[-1]))
            self.parts[name].append(value.cpu())
        if self.with_logits:
            self.logits.append(run.logits.cpu())
        self.order.append(sub.indices)
        # the pass's freed temporaries go back to the OS before the next batch: glibc keeps
        # them (a kept cache lands between them), and each batch would add its own
        trim_heap()
        if self.progress:
            self.progress(len(sub.indices))

    def result(self) -> RunResult:
        """Every batch's results, in the order of the batch's rows, on the CPU."""
        inverse = torch.argsort(torch.cat(self.order))
        return RunResult(
            logits=torch.cat(self.logits)[inverse] if self.with_logits else None,
            captures={name: torch.cat(v)[inverse] for name, v in self.parts.items()},
            states=self.states if self.keep_states else None,
            grads={name: torch.cat(v)[inverse] for name, v in self.grad_parts.items()},
        )


def iter_equal_length(batch: TokenBatch, batch_size: int) -> Iterator[SubBatch]:
    """Sub-batches whose rows all have the same length (rectangular, no padding at all)."""
    lengths = batch.lengths.cpu()
    for length in torch.unique(lengths).tolist():
        rows = (lengths == length).nonzero()[:, 0]
        for start in range(0, len(rows), batch_size):
            idx = rows[start : start + batch_size]
            yield SubBatch(idx, TokenBatch(batch.ids[idx, :length], lengths[idx]))


def resume_gradients(
    handle: ModelHandle, states: Sequence[tuple[Tensor, object]], layers: Sequence[int], objective
) -> dict[str, Tensor]:
    """Gradients of ``objective`` at each block's ``z`` (last position) from kept states: the
    cache path of :meth:`~cgar_interp.models.ModelHandle.gradients` (one-token suffix passes
    with a backward, :func:`~cgar_interp.prefix.last_token_gradients`).

    Args:
        states: ``(row indices, LastTokenState)`` pairs covering ``0 .. n-1`` once, kept by a
            capture pass that read ``resid.0`` (:func:`capture_many` with ``keep_states``).
        layers: blocks.
        objective: ``objective.rows(indices)`` is those rows' ``[b, vocab] -> [b]`` function
            (:class:`~cgar_interp.metrics.GoldProbability`).

    Returns:
        ``{"z.<l>": [n, n_heads, d_head]}`` in row order, float32.
    """
    from .prefix import last_token_gradients, select_state

    parts: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    order = []
    for rows, state in states:
        # a backward keeps every block's keys and values (GQA-expanded) of the rows it runs:
        # chunks of about GRAD_PASS_SLOTS cached slots bound that, whatever the batch's width
        width = int(state.lengths.max())
        step = max(1, GRAD_PASS_SLOTS // width)
        for start in range(0, len(rows), step):
            index = torch.arange(start, min(len(rows), start + step))
            part = state if len(index) == len(rows) else select_state(state, index)
            grads = last_token_gradients(handle, part, layers, objective.rows(rows[index]))
            for layer in layers:
                parts[layer].append(grads[layer].cpu())
            order.append(rows[index])
    inverse = torch.argsort(torch.cat(order))
    return {f"z.{layer}": torch.cat(parts[layer])[inverse] for layer in layers}


def resume_variants(
    handle: ModelHandle,
    batch: TokenBatch,
    layers: Sequence[int],
    variants: Callable[[int, Tensor, Tensor], Tensor],
    score: Callable[[Tensor, Tensor], dict[str, Tensor]],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    states: Sequence[tuple[Tensor, object]] | None = None,
    patches: Sequence = (),
) -> dict[int, dict[str, Tensor]]:
    """Interventions at the last position, run at the cost of one token per variant.

    With ``states`` (``(row indices into batch, LastTokenState)`` pairs covering every row,
    kept by the capture pass, see :func:`capture_many`), no forward pass runs here at all.
    Without, prompts are grouped by length; each group runs once and keeps its KV cache
    (:func:`cgar_interp.prefix.last_token_state`). Per layer, ``variants(l, h_last, indices)``
    returns ``[n_var, b, d_model]`` replacement residuals for the last position (``h_last`` is
    ``[b, d_model]``, the unpatched residual after ``l`` blocks), and all of them run through
    blocks ``l .. L-1`` as single tokens over the cached prefix, every layer's variants in one
    pass that they join at their own layer (:func:`cgar_interp.prefix.resume_staggered`). ``score(logits [n_var, b, vocab], indices)``
    reduces them to per-query values ``[n_var, b]`` at once, so no full-vocabulary tensor
    outlives its group. ``patches`` (:class:`~cgar_interp.models.Patch` at position ``-1``)
    act inside the suffix blocks on every variant; a function sees ``[b, n_var, ...]``.

    Returns:
        ``{layer: {name: [n_var, n]}}`` in the order of ``batch``'s rows.
    """
    from .prefix import last_token_state, resume_full_many, resume_staggered

    parts: dict[int, dict[str, list[Tensor]]] = {layer: {} for layer in layers}
    order: list[Tensor] = []
    if states is None and handle.remote:  # the last residuals; no cache lives on the server
        states = capture_many(
            handle,
            batch,
            list(site_names("resid", layers)),
            -1,
            batch_size=batch_size,
            keep_states=True,
        ).states
    if states is None:
        groups = (
            (sub.indices, last_token_state(handle, sub.batch.ids))
            for sub in iter_equal_length(batch, batch_size)
        )
    else:
        covered = torch.cat([idx for idx, _ in states]) if states else torch.zeros(0)
        if sorted(covered.tolist()) != list(range(batch.batch_size)):
            raise ValueError(
                f"states cover rows {sorted(covered.tolist())[:8]}...; they must cover each of "
                f"the batch's {batch.batch_size} rows exactly once"
            )
        groups = iter(states)

    def entries_of(indices: Tensor, state) -> dict[int, Tensor]:
        missing = [layer for layer in layers if layer not in state.resid]
        if missing:
            raise ValueError(f"the kept states hold no residual at layers {missing}")
        return {
            layer: variants(layer, state.resid[layer].float(), indices)  # [n_var, b, d]
            for layer in layers
        }

    def finish(indices: Tensor, final: dict[int, Tensor]) -> None:
        # [n_var, b, vocab] per layer; the layers' few rows decoded together, and a layer's
        # many variants in slices of about DECODE_ROWS rows (scores are per variant and row),
        # so no more than one slice's full-vocabulary logits exist at a time
        step = max(1, DECODE_ROWS // max(1, len(indices)))
        pieces = [
            (layer, h[start : start + step])
            for layer in layers
            for h in (final.pop(layer),)
            for start in range(0, max(1, h.shape[0]), step)
        ]
        scored: dict[int, dict[str, list[Tensor]]] = {layer: {} for layer in layers}
        decoded = handle.decode_residuals([h for _, h in pieces])
        for (layer, _), logits in zip(pieces, decoded, strict=True):
            for name, value in score(logits, indices).items():
                scored[layer].setdefault(name, []).append(value.cpu())
        for layer in layers:
            for name, values in scored[layer].items():
                parts[layer].setdefault(name, []).append(torch.cat(values))
        order.append(indices)
        if progress:
            progress(len(indices))

    # a remote model's states hold no cache (none lives on the server): the same variants
    # as full forward passes
    if states is not None and any(state.cache is None for _, state in states):

        def jobs():  # every group's passes in one stream: on NDIF grouped into sessions
            for indices, state in groups:
                entries = entries_of(indices, state)
                rows = batch.select(indices)
                # patches act on one entry layer's variants: a job per layer
                split = [{layer: entries[layer]} for layer in layers] if patches else [entries]
                for i, group in enumerate(split):
                    yield (indices, i == len(split) - 1), rows, group, patches

        final: dict[int, Tensor] = {}
        for (indices, last), out in resume_full_many(handle, jobs(), handle.remote_rows):
            final.update(out)
            if last:
                finish(indices, final)
                final = {}
    else:
        for indices, state in groups:
            entries = entries_of(indices, state)
            if patches:  # patches act on one entry layer's variants: a pass per layer
                final = {
                    layer: resume_staggered(handle, state, {layer: entries[layer]}, patches)[layer]
                    for layer in layers
                }
            else:  # every layer's variants in one pass, each joining at its own layer
                final = resume_staggered(handle, state, entries)
            finish(indices, final)
    inverse = torch.argsort(torch.cat(order))
    return {
        layer: {name: torch.cat(values, dim=1)[:, inverse] for name, values in named.items()}
        for layer, named in parts.items()
    }

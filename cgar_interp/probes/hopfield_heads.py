"""Attention heads as modern Hopfield memories (docs/science.md#hopfield-heads-probe; "the memo"
is the reading of softmax attention as one modern-Hopfield retrieval step, written up in
docs/science.md#attention-as-modern-hopfield-retrieval).

At the query's last position, for every block ``l`` and query head ``h``, zero-shot and ICL
prompts of the same queries side by side. Ramsauer et al.'s reading of one attention step:
the state is the head's query ``q``, the stored patterns are its keys ``k_j`` (one per context
position), ``beta = 1/sqrt(d_head)`` (the model's own attention scaling), and the softmax
``p = softmax(beta K q)`` is the retrieval distribution over the context.

Read (engine only, :func:`~cgar_interp.capture.capture_many`): ``attn_pattern.{l}`` and
``q.{l}`` at the last position (the model's own softmax and its RoPE'd query), and ``k_rep.{l}``
at every position (keys after RoPE, expanded to query heads: GQA query head ``h`` reads KV
head ``h // (n_heads / n_kv_heads)``, reported as ``kv_head``). Scores
``s_j = beta q . k_j`` are recomputed from q and k; ``softmax(s)`` must equal the captured
pattern, and the largest difference is reported (metric ``recompute_err``).

Per query, head and prompt kind (tidy rows, bootstrap CIs over queries):

- ``entropy`` (nats) of ``p``, ``n_eff = exp(entropy)``;
- ``k90``: fewest keys covering ``mass`` (default 90%) of ``p``; ``k90_frac = k90 / n_keys``;
- regime, as the fraction of queries in each: ``frac_single`` (``k90 <= single_max_keys``),
  ``frac_global`` (``k90 >= global_min_fraction * n_keys``), ``frac_metastable`` otherwise
  (:func:`cgar_interp.theory.mhn.classify_softmax`; Ramsauer give no hard cut-offs);
- ``beta_eff``: standard deviation of the scaled scores ``s_j`` over the context's keys. With
  ``z`` the standardised scores, ``p = softmax(beta_eff z)``: the inverse temperature the head
  applies to unit-variance scores (small: global average; large: can single out one key);
- ``delta``: separation of the top key from the query's point of view, Ramsauer's
  ``Delta~ = q.k_top - max_{j != top} q.k_j`` in raw dot-product units
  (:func:`~cgar_interp.theory.mhn.score_margin`); ``delta_scaled = beta delta`` is the same gap
  in logits (``= ln p_top - ln p_second``). ``well_separated``: whether
  ``delta >= 2/(beta N) + beta^-1 ln(2 (N-1) N beta M^2)`` with ``N`` the number of keys and
  ``M = max_j |k_j|`` (:func:`~cgar_interp.theory.mhn.well_separated_threshold`). Ramsauer state
  the condition for a stored pattern's separation from the others; it is applied here to the
  query-view margin, which is the quantity that bounds ``1 - p_top <= (N-1) exp(-beta delta)``;
- ``top_mass`` (``max p``) and ``sink_mass`` (``p`` at position 0, the BOS token when one is
  prepended: many "single" heads retrieve only this attention sink);
- ``label_mass``: mass on the demonstrations' label tokens, ``gold_label_mass`` on those of the
  query's own class, ``n_label_positions``. A label position is one whose token is a class's
  first label token and whose preceding ``label_cue_tokens`` tokens equal the prompt's last
  ``label_cue_tokens`` tokens (the answer cue, e.g. ``"Sentiment:"``); the last position is
  never one. ``label_cue_tokens = 0`` counts every occurrence of a label token, including
  label words inside demonstration texts (" world" in an AG-News article). Zero-shot prompts
  hold no demonstrations, so their label masses are 0 under the cue rule;
- ``n_keys`` (context length) and ``recompute_err``.

``prompt_kind`` is ``zero_shot``, ``icl``, ``icl_random_labels`` or ``icl_minus_zero`` (per-query
paired differences of the metrics in :data:`PAIRED`). ``icl_random_labels`` is the length-matched
control (``length_control``): the same demonstrations with each label drawn at random,
independent of its input (Min et al., 2022; the task's ``icl_random`` prompts), so its context
holds as many keys as the ICL prompt's up to the label words' token counts. A regime cut-off
that scales with ``n_keys`` (``global_min_fraction``) compares like with like only there: the
zero-shot prompt is several times shorter.

Per query: the values of :data:`QUERY_METRICS` of every head and prompt kind are kept per
eval query (the ``hopfield_heads_queries`` table, split ``"eval"``; the claims ledger resamples
them), and ``label_mass`` and ``gold_label_mass`` of the ICL prompts of up to
``select_queries`` *fit* queries too (split ``"fit"``): the label-reading heads are chosen
there, never on the queries that judge them (claim 7b). The second table, ``hopfield_regimes``, has one row per
(layer, head): each prompt kind's majority regime over the queries (ties go to the sharper
regime), whether it changes under context and in which direction, and the share of queries
whose own regime changes.

Cost: none of its own in a suite: the patterns and queries are read in the suite's shared
capture pass (:class:`~cgar_interp.probes.base.SharedRead`), and the scores and key norms are
computed there from each batch's KV cache as the pass fills it (the cache read ``head_keys``,
:class:`~cgar_interp.capture.CacheRead`), so no cache is kept for this probe: per prompt and
block ``n_heads x n_keys`` scores instead of the whole cache (about 1/40 of it on the embedded
model). Run alone, one forward pass per prompt. Prompts: the eval queries' zero-shot, ICL and random-label prompts,
and the ICL prompts of the fit queries read for selection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..capture import CacheRead, capture_many, register_cache_read
from ..models import ModelHandle, RunResult
from ..sites import site_name, site_names
from ..theory.mhn import (
    REGIMES,
    classify_softmax,
    entropy,
    keys_for_mass,
    n_eff,
    score_margin,
    well_separated_threshold,
)
from ..tokens import TokenBatch
from .base import (
    ProbeContext,
    SharedRead,
    TaskInputs,
    first_non_finite,
    query_table_name,
    register_probe,
)
from .protocol import RANDOM_LABELS, ProbeConfig

KIND = "hopfield_heads"
TABLE = "hopfield_heads"  # tidy: per head, prompt kind and metric
REGIMES_TABLE = "hopfield_regimes"  # one row per head: majority regimes and their change
BLOCK_NAMES = ("all", "upper_half")


def check_block_spec(layers: str | tuple[int, ...]) -> None:
    """Refuse a ``layers`` value of a head probe that names no blocks (before any model)."""
    if isinstance(layers, str):
        if layers not in BLOCK_NAMES:
            raise ValueError(
                f"layers {layers!r} is not valid: use {' or '.join(BLOCK_NAMES)}, or a "
                "list of block indices"
            )
        return
    if len(layers) == 0:
        raise ValueError("layers is empty; give at least one block index, or 'all'")
    for item in layers:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(f"layers entry {item!r} is not an integer block index")


QUERY_SETS = ("eval", "all")
CONTROL_LABEL = "icl_random_labels"  # the length-matched control's prompt_kind in the tables
PROMPT_KINDS = {"zero": "zero_shot", "icl": "icl", RANDOM_LABELS: CONTROL_LABEL}
# what the per-query table keeps (the claims read these; the rest stays a per-head mean): the
# regimes, the label masses and the context length
QUERY_METRICS = (
    "frac_single",
    "frac_metastable",
    "frac_global",
    "label_mass",
    "gold_label_mass",
    "n_keys",
)
SELECT_METRICS = ("label_mass", "gold_label_mass")  # kept per fit query (where heads are chosen)
QUERIES_TABLE = query_table_name(KIND)  # hopfield_heads_queries
PAIRED = ("entropy", "n_eff", "k90_frac", "beta_eff", "delta_scaled", "top_mass", "sink_mass")


def resolve_blocks(
    spec: str | int | tuple | list, n_layers: int, what: str = "layers"
) -> tuple[int, ...]:
    """Block indices ``0 .. n_layers-1`` from ``"all"``, ``"upper_half"`` or integers.

    Negative integers count from the end (``-1`` is the last block).

    Raises:
        ValueError: an unknown name or a block out of range, naming it and the valid range.
    """
    if isinstance(spec, str):
        if spec == "all":
            return tuple(range(n_layers))
        if spec == "upper_half":
            return tuple(range(n_layers // 2, n_layers))
        raise ValueError(
            f"unknown {what} spec {spec!r}; valid names: {', '.join(BLOCK_NAMES)}, or a list of "
            f"block indices 0..{n_layers - 1}"
        )
    items = [spec] if isinstance(spec, int) else list(spec)
    if not items:
        raise ValueError(f"{what} is empty; give at least one block")
    out = set()
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(f"{what} entry {item!r} is not an integer block index")
        block = item + n_layers if item < 0 else item
        if not 0 <= block < n_layers:
            raise ValueError(
                f"{what} entry {item} is out of range for a model with {n_layers} blocks: valid "
                f"blocks are 0..{n_layers - 1} (or -1..-{n_layers} from the end)"
            )
        out.add(block)
    return tuple(sorted(out))


@dataclass(frozen=True)
class HopfieldHeadsConfig(ProbeConfig):
    """Options of the Hopfield-heads probe (TOML ``kind = "hopfield_heads"``).

    Attributes:
        layers: attention blocks to read: ``"all"`` (``0 .. n_layers-1``), ``"upper_half"``,
            or block indices (negative from the end). Not residual layers: ``attn_pattern.l``
            belongs to block ``l``.
        mass: the mass fraction ``k90`` must cover, in ``(0, 1]`` (Ramsauer: 0.9).
        single_max_keys: largest ``k90`` counted as a single-pattern head (>= 1).
        global_min_fraction: ``k90 >= global_min_fraction * n_keys`` counts as a global average,
            in ``(0, 1]``.
        label_cue_tokens: tokens before a label token that must equal the prompt's answer cue
            (its last tokens) for the position to count as a demonstration label (>= 0; 0
            counts every occurrence of a label token).
        queries: ``"eval"`` (the held-out queries, as the context-gate probe scores) or
            ``"all"``.
        max_queries: read only the first ``max_queries`` of that set (>= 1; ``None``: all).
            Queries are ordered class by class in rounds, so a prefix stays balanced; the
            cost is one forward pass per query and prompt kind.
        select_queries: ICL prompts of the first ``select_queries`` fit queries also read
            (>= 0; ``None``: every fit query), their ``label_mass`` and ``gold_label_mass``
            kept per query with split ``"fit"``: where claim 7b chooses its label-reading
            heads. One forward pass each; fit queries already among ``queries`` are not read
            twice.
        length_control: also read the random-label ICL prompts (``icl_random``, the same
            demonstrations and length; table ``prompt_kind = "icl_random_labels"``) of the
            same queries: claim 7a's length-matched control. One forward pass per query.
    """

    layers: str | tuple[int, ...] = "all"
    mass: float = 0.9
    single_max_keys: int = 1
    global_min_fraction: float = 0.5
    label_cue_tokens: int = 2
    queries: str = "eval"
    max_queries: int | None = None
    select_queries: int | None = 16
    length_control: bool = True

    def __post_init__(self):
        check_block_spec(self.layers)
        if not (isinstance(self.mass, int | float) and 0 < self.mass <= 1):
            raise ValueError(f"mass={self.mass!r} is not valid: it must be in (0, 1]")
        if not isinstance(self.single_max_keys, int) or self.single_max_keys < 1:
            raise ValueError(
                f"single_max_keys={self.single_max_keys!r} is not valid: it must be an int >= 1"
            )
        if not (
            isinstance(self.global_min_fraction, int | float) and 0 < self.global_min_fraction <= 1
        ):
            raise ValueError(
                f"global_min_fraction={self.global_min_fraction!r} is not valid: it must be in "
                "(0, 1]"
            )
        if not isinstance(self.label_cue_tokens, int) or self.label_cue_tokens < 0:
            raise ValueError(
                f"label_cue_tokens={self.label_cue_tokens!r} is not valid: it must be an int >= 0"
            )
        if self.queries not in QUERY_SETS:
            raise ValueError(
                f"queries={self.queries!r} is not valid: use one of {', '.join(QUERY_SETS)}"
            )
        if self.max_queries is not None and (
            not isinstance(self.max_queries, int)
            or isinstance(self.max_queries, bool)
            or self.max_queries < 1
        ):
            raise ValueError(
                f"max_queries={self.max_queries!r} is not valid: it must be an int >= 1 or None"
            )
        if self.select_queries is not None and (
            not isinstance(self.select_queries, int)
            or isinstance(self.select_queries, bool)
            or self.select_queries < 0
        ):
            raise ValueError(
                f"select_queries={self.select_queries!r} is not valid: it must be an int >= 0 "
                "or None"
            )
        if not isinstance(self.length_control, bool):
            raise ValueError(
                f"length_control={self.length_control!r} is not valid: it must be true or false"
            )

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position: none (this probe reads its own sites)."""
        return ()

    def blocks(self, n_layers: int) -> tuple[int, ...]:
        """The blocks read on a model with ``n_layers`` blocks."""
        return resolve_blocks(self.layers, n_layers, "layers")

    def prompt_kinds(self) -> frozenset[str]:
        """Zero-shot and ICL prompts, and with ``length_control`` the random-label ones."""
        return super().prompt_kinds() | ({RANDOM_LABELS} if self.length_control else set())

    def query_rows(self, inputs: TaskInputs) -> Tensor:
        """``[n]`` the queries read: the eval set (or all), the first ``max_queries``."""
        rows = inputs.eval if self.queries == "eval" else torch.arange(inputs.gold.shape[0])
        return rows[: self.max_queries]

    def select_rows(self, inputs: TaskInputs) -> Tensor:
        """``[m]`` the fit queries whose ICL prompts are read for selection only: the first
        ``select_queries`` fit queries, less those :meth:`query_rows` reads anyway."""
        fit = inputs.fit[: self.select_queries]
        taken = set(self.query_rows(inputs).tolist())
        return torch.tensor([int(q) for q in fit.tolist() if q not in taken], dtype=torch.long)

    def kinds_read(self, inputs: TaskInputs) -> tuple[str, ...]:
        """The prompt kinds read: zero-shot, ICL and (``length_control``, when the task has
        them) the random-label prompts."""
        control = self.length_control and getattr(inputs, RANDOM_LABELS, None) is not None
        return tuple(k for k in PROMPT_KINDS if k != RANDOM_LABELS or control)

    def rows_of(self, kind: str, inputs: TaskInputs) -> Tensor:
        """The queries read of prompt ``kind``: :meth:`query_rows`, and for ICL also
        :meth:`select_rows` after them."""
        rows = self.query_rows(inputs)
        return torch.cat([rows, self.select_rows(inputs)]) if kind == "icl" else rows

    def shared_reads(self, inputs: TaskInputs, n_layers: int) -> tuple[SharedRead, ...]:
        """Patterns and queries at the last position of every prompt kind read, with their KV
        caches (the keys): read in the suite's shared capture pass."""
        blocks = self.blocks(n_layers)
        return tuple(
            SharedRead.of(
                kind, self.rows_of(kind, inputs), head_sites(blocks), cache_reads=key_reads(blocks)
            )
            for kind in self.kinds_read(inputs)
        )

    def self_check_paths(self) -> frozenset[str]:
        """Captured patterns vs softmax(beta q.k) recomputed, on a few rows before the run
        (and on every row the probe reads, during it)."""
        return super().self_check_paths() | {"head_patterns", "recompute_err"}


# --------------------------------------------------------------------------------------------
# reads


@dataclass(frozen=True)
class HeadReads:
    """One block's heads at the last position of ``n`` prompts (padded to the batch width).

    Attributes:
        pattern: ``[n, n_heads, width]`` the model's attention (zero beyond each row's length).
        scores: ``[n, n_heads, width]`` ``scale * q . k_j`` from the captured q and k_rep
            (``-inf`` beyond each row's length).
        key_norm_max: ``[n, n_heads]`` ``M = max_j |k_j|`` over the row's keys.
        lengths: ``[n]`` context lengths (number of keys).
        scale: the attention's scaling ``beta`` (``1/sqrt(d_head)`` in Llama).
    """

    pattern: Tensor
    scores: Tensor
    key_norm_max: Tensor
    lengths: Tensor
    scale: float


def attention_scale(handle: ModelHandle, block: int) -> float:
    """The block's attention scaling (the module's ``scaling``; ``1/sqrt(d_head)`` otherwise).

    A remote model's modules are built here from its config, so their ``scaling`` is the
    server's too."""
    return handle.backend.attention_scale(block)


def head_sites(blocks: tuple[int, ...]) -> tuple[str, ...]:
    """The sites :func:`read_heads` reads at the last position (beside :func:`key_reads`)."""
    return site_names("attn_pattern", blocks) + site_names("q", blocks)


def key_reads(blocks: tuple[int, ...]) -> tuple[str, ...]:
    """The cache reads (:data:`HEAD_KEYS`) of :func:`read_heads`: each block's scores and key
    norms, computed from a pass's KV cache as it fills it, so the cache need not be kept."""
    return tuple(f"{HEAD_KEYS.kind}.{b}" for b in blocks)


def key_scores(
    handle: ModelHandle, keys: Tensor, q: Tensor, lengths: Tensor, block: int
) -> tuple[Tensor, Tensor]:
    """Scaled scores of every key from the last position's query, and the keys' largest norm.

    Args:
        keys: ``[r, n_kv_heads, slots, d_head]`` keys after RoPE (a KV cache layer's, or the
            ``k`` site transposed); slots beyond a row's length are ignored.
        q: ``[r, n_heads, d_head]`` the last position's queries.
        lengths: ``[r]`` context lengths.
        block: the block (its attention scaling).

    Returns:
        ``scores [r, n_heads, slots]`` (``scale * q . k_j``, ``-inf`` beyond each row's
        length) and ``key_norm_max [r, n_heads]`` (``max_j |k_j|`` over the row's keys).
    """
    group = handle.arch.n_heads // handle.arch.n_kv_heads
    slots = int(keys.shape[2])
    k = keys.float().cpu().transpose(1, 2)  # [r, slots, n_kv, d_head]
    k = k.repeat_interleave(group, dim=2)  # [r, slots, n_heads, d_head] (k_rep)
    valid = torch.arange(slots)[None, :] < lengths.cpu()[:, None]  # [r, slots]
    s = torch.einsum("bhd,bkhd->bhk", q.float().cpu(), k) * attention_scale(handle, block)
    s = s.masked_fill(~valid[:, None, :], float("-inf"))
    norms = k.norm(dim=-1).masked_fill(~valid[:, :, None], 0.0)  # [r, slots, n_heads]
    return s, norms.amax(1)


def _cache_key_scores(handle: ModelHandle, state, captures, block: int) -> dict[str, Tensor]:
    """:data:`HEAD_KEYS` of one batch: :func:`key_scores` of its cache's keys at ``block``,
    zero beyond each row's length (so the pass's finiteness check sees real values only;
    :func:`read_heads` masks those slots again)."""
    keys = state.cache.layers[block].keys
    lengths = state.lengths.cpu()
    scores, big_m = key_scores(handle, keys, captures[site_name("q", block)], lengths, block)
    valid = torch.arange(scores.shape[-1])[None, :] < lengths[:, None]
    return {
        f"head_scores.{block}": scores.masked_fill(~valid[:, None, :], 0.0),
        f"key_norm_max.{block}": big_m,
    }


# the keys' scores and norms of a block, computed in the capture pass from its KV cache
HEAD_KEYS = register_cache_read(
    CacheRead(
        "head_keys",
        outputs=("head_scores.{l}", "key_norm_max.{l}"),
        fn=_cache_key_scores,
        key_axis=("head_scores.{l}",),
        sites=("q.{l}",),
    )
)


def read_heads(
    handle: ModelHandle,
    batch: TokenBatch,
    blocks: tuple[int, ...],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    run: RunResult | None = None,
) -> dict[int, HeadReads]:
    """Attention patterns and recomputed scores of every head at each prompt's last position.

    Args:
        handle: the model.
        batch: ``[n]`` prompts.
        blocks: blocks to read.
        batch_size: rows per forward pass.
        progress: called with rows finished.
        run: :func:`head_sites` of ``batch``'s rows at the last position with the cache reads
            :func:`key_reads` (or, without their outputs, the KV caches: ``keep_states``),
            read already (e.g. :meth:`ProbeContext.read` from the suite's shared pass);
            ``None``: one capture pass here.

    Returns:
        ``{block: HeadReads}``.
    """
    n, width = batch.batch_size, int(batch.ids.shape[1])
    n_heads = handle.arch.n_heads
    # One forward pass: patterns and queries at the last position are captured, and the keys of
    # every position are read from the KV cache that pass fills (RoPE applied, as attention
    # used them) as it fills it (the cache read HEAD_KEYS). A right-padded row's cache also
    # holds its padding slots: masked by the lengths.
    last = run
    if last is None:
        last = capture_many(
            handle,
            batch,
            list(head_sites(blocks)),
            -1,
            batch_size=batch_size,
            progress=progress,
            cache_reads=key_reads(blocks),
        )
    lengths = batch.lengths.cpu()
    scores = {b: torch.full((n, n_heads, width), float("-inf")) for b in blocks}
    big_m = {b: torch.zeros(n, n_heads) for b in blocks}
    if all(f"head_scores.{b}" in last.captures for b in blocks):  # computed in the pass
        valid = torch.arange(width)[None, :] < lengths[:, None]  # [n, width]
        for b in blocks:
            got = last[f"head_scores.{b}"].float()[:, :, :width]
            scores[b][:, :, : got.shape[-1]] = got
            scores[b] = scores[b].masked_fill(~valid[:, None, :], float("-inf"))
            big_m[b] = last[f"key_norm_max.{b}"].float()
    else:
        states = last.states
        keys = None
        if states is None or any(state.cache is None for _, state in states):
            # a remote model keeps no cache: the keys of every position, in a pass of their own
            keys = capture_many(
                handle,
                batch,
                list(site_names("k", blocks)),
                None,
                batch_size=batch_size,
                with_logits=False,
            )
            states = [(torch.arange(n), None)]
        for rows, state in states:
            for b in blocks:
                if keys is None:
                    cached = state.cache.layers[b].keys  # [r, n_kv_heads, slots, d_head]
                else:
                    # [r, n_kv_heads, width, d_head]
                    cached = keys[site_name("k", b)][rows].transpose(1, 2)
                slots = min(int(cached.shape[2]), width)
                s, m = key_scores(
                    handle,
                    cached[:, :, :slots],
                    last[site_name("q", b)][rows],
                    lengths[rows],
                    b,
                )
                scores[b][rows, :, :slots] = s
                big_m[b][rows] = m
    return {
        b: HeadReads(
            pattern=last[site_name("attn_pattern", b)].float(),
            scores=scores[b],
            key_norm_max=big_m[b],
            lengths=lengths,
            scale=attention_scale(handle, b),
        )
        for b in blocks
    }


def label_positions(ids: Tensor, label_ids: Tensor, cue_tokens: int) -> Tensor:
    """Class index at each demonstration label position of one prompt, ``-1`` elsewhere.

    A position ``j < L-1`` counts when ``ids[j]`` is class ``k``'s first label token and the
    ``cue_tokens`` tokens before it equal the prompt's last ``cue_tokens`` tokens (the answer
    cue that every label follows); ``cue_tokens = 0`` counts every occurrence.

    Args:
        ids: ``[L]`` one prompt's token ids (no padding).
        label_ids: ``[K]`` first label token of each class (distinct).
        cue_tokens: length of the answer cue to match (>= 0).

    Returns:
        ``[L]`` long tensor.

    >>> label_positions(torch.tensor([1, 7, 8, 50, 9, 7, 8]), torch.tensor([40, 50]), 2).tolist()
    [-1, -1, -1, 1, -1, -1, -1]
    """
    ids = ids.cpu()
    length = ids.shape[0]
    out = torch.full((length,), -1, dtype=torch.long)
    cue = ids[length - cue_tokens :] if cue_tokens else ids[:0]
    for k, token in enumerate(label_ids.cpu().tolist()):
        for j in (ids[: length - 1] == token).nonzero()[:, 0].tolist():
            if j >= cue_tokens and torch.equal(ids[j - cue_tokens : j], cue):
                out[j] = k
    return out


def head_metrics(
    reads: HeadReads,
    batch: TokenBatch,
    label_ids: Tensor,
    gold: Tensor,
    config: HopfieldHeadsConfig,
) -> dict[str, np.ndarray]:
    """Per-query, per-head Hopfield diagnostics of one block: metric -> ``[n, n_heads]``.

    Also ``"regime"``: ``[n, n_heads]`` strings (single / metastable / global).
    """
    n, n_heads, _ = reads.pattern.shape
    out: dict[str, np.ndarray] = {}
    names = (
        "entropy",
        "n_eff",
        "k90",
        "k90_frac",
        "beta_eff",
        "delta",
        "delta_scaled",
        "well_separated",
        "top_mass",
        "sink_mass",
        "label_mass",
        "gold_label_mass",
        "n_label_positions",
        "n_keys",
        "recompute_err",
    )
    for name in names:
        out[name] = np.zeros((n, n_heads))
    out["regime"] = np.empty((n, n_heads), dtype=object)
    recomputed = torch.softmax(reads.scores.double(), dim=-1)
    for i in range(n):
        length = int(reads.lengths[i])
        if length < 2:
            raise ValueError(
                f"prompt row {i} has {length} token(s); head separation needs >= 2 keys"
            )
        p = reads.pattern[i, :, :length].double().numpy()  # [H, L]
        s = reads.scores[i, :, :length].double().numpy()  # [H, L]
        k90 = keys_for_mass(p, config.mass)
        out["entropy"][i] = entropy(p)
        out["n_eff"][i] = n_eff(p)
        out["k90"][i] = k90
        out["k90_frac"][i] = k90 / length
        out["regime"][i] = classify_softmax(
            p,
            mass=config.mass,
            single_max_keys=config.single_max_keys,
            global_min_fraction=config.global_min_fraction,
        )
        out["beta_eff"][i] = s.std(-1)
        margin = np.asarray(score_margin(s))  # [H], in scaled (logit) units
        out["delta_scaled"][i] = margin
        out["delta"][i] = margin / reads.scale
        out["well_separated"][i] = [
            out["delta"][i, h]
            >= well_separated_threshold(length, reads.scale, float(reads.key_norm_max[i, h]))
            for h in range(n_heads)
        ]
        out["top_mass"][i] = p.max(-1)
        out["sink_mass"][i] = p[:, 0]
        ids = batch.ids[i, :length]
        classes = label_positions(ids, label_ids, config.label_cue_tokens).numpy()
        out["label_mass"][i] = p[:, classes >= 0].sum(-1)
        out["gold_label_mass"][i] = p[:, classes == int(gold[i])].sum(-1)
        out["n_label_positions"][i] = int((classes >= 0).sum())
        out["n_keys"][i] = length
        out["recompute_err"][i] = (
            (recomputed[i, :, :length] - reads.pattern[i, :, :length].double()).abs().amax(-1)
        ).numpy()
    return out


def majority_regime(regimes: np.ndarray) -> str:
    """Most frequent regime of ``[n]`` labels; ties go to the sharper one (single first)."""
    counts = [int((regimes == r).sum()) for r in REGIMES]
    return REGIMES[int(np.argmax(counts))]


# --------------------------------------------------------------------------------------------
# the probe


def run_hopfield_heads(config: HopfieldHeadsConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Hopfield diagnostics of every head, zero-shot vs ICL vs the length-matched random-label
    control; tidy rows (per-query values kept), regime changes, and the fit queries' label
    masses for selection."""
    handle, inputs = ctx.handle, ctx.inputs
    blocks = config.blocks(handle.n_layers)
    rows_idx = config.query_rows(inputs)
    n = len(rows_idx)
    select_idx = config.select_rows(inputs)
    kinds = config.kinds_read(inputs)
    group = handle.arch.n_heads // handle.arch.n_kv_heads
    per_kind: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    fit_icl: dict[int, dict[str, np.ndarray]] = {}
    for kind in kinds:
        read_idx = config.rows_of(kind, inputs)
        batch = getattr(inputs, kind).select(read_idx)
        tick = (
            ctx.progress(f"{inputs.task}: hopfield heads {kind}", len(read_idx))
            if ctx.progress
            else None
        )
        run = ctx.read(
            kind, read_idx, head_sites(blocks), cache_reads=key_reads(blocks), progress=tick
        )
        reads = read_heads(handle, batch, blocks, batch_size=ctx.batch_size, run=run)
        metrics = {
            b: head_metrics(reads[b], batch, inputs.label_ids, inputs.gold[read_idx], config)
            for b in blocks
        }
        per_kind[kind] = {b: {m: v[:n] for m, v in metrics[b].items()} for b in blocks}
        if kind == "icl":  # the fit queries read for selection follow the table's queries
            fit_icl = {b: {m: metrics[b][m][n:] for m in SELECT_METRICS} for b in blocks}
    if ctx.self_check is not None:  # every row read, not only the self-check's few
        worst = max(
            float(np.nanmax(per_kind[kind][b]["recompute_err"]))
            for kind in per_kind
            for b in blocks
        )
        ctx.self_check.record(
            "recompute_err",
            inputs.task,
            worst,
            rows=n + len(select_idx),
            detail=f"{len(blocks)} blocks x {len(kinds)} prompt kinds",
        )
    base = {"task": inputs.task, "probe": KIND}
    rows, regime_rows = [], []
    for b in blocks:
        zero, icl = per_kind["zero"][b], per_kind["icl"][b]
        for h in range(handle.arch.n_heads):
            keys = {**base, "layer": b, "head": h, "kv_head": h // group}
            for kind in kinds:
                metrics = per_kind[kind][b]
                per_query = {m: v[:, h] for m, v in metrics.items() if m != "regime"}
                for regime in REGIMES:
                    per_query[f"frac_{regime}"] = (metrics["regime"][:, h] == regime).astype(float)
                rows += ctx.rows(
                    per_query,
                    queries=rows_idx,
                    query_metrics=QUERY_METRICS,
                    **keys,
                    prompt_kind=PROMPT_KINDS[kind],
                )
            if len(select_idx):  # selection only: per query, no tidy row
                ctx.record_queries(
                    {m: fit_icl[b][m][:, h] for m in SELECT_METRICS},
                    select_idx,
                    SELECT_METRICS,
                    **keys,
                    prompt_kind=PROMPT_KINDS["icl"],
                )
            paired = {m: icl[m][:, h] - zero[m][:, h] for m in PAIRED}
            rows += ctx.rows(paired, **keys, prompt_kind="icl_minus_zero")
            r_zero = majority_regime(zero["regime"][:, h])
            r_icl = majority_regime(icl["regime"][:, h])
            step = REGIMES.index(r_icl) - REGIMES.index(r_zero)
            regime_rows.append(
                {
                    **keys,
                    "regime_zero": r_zero,
                    "regime_icl": r_icl,
                    "changed": r_zero != r_icl,
                    "direction": "sharper" if step < 0 else "broader" if step > 0 else "same",
                    "share_changed": float((zero["regime"][:, h] != icl["regime"][:, h]).mean()),
                    "n_eff_zero": float(zero["n_eff"][:, h].mean()),
                    "n_eff_icl": float(icl["n_eff"][:, h].mean()),
                    "k90_frac_zero": float(zero["k90_frac"][:, h].mean()),
                    "k90_frac_icl": float(icl["k90_frac"][:, h].mean()),
                    "sink_mass_zero": float(zero["sink_mass"][:, h].mean()),
                    "sink_mass_icl": float(icl["sink_mass"][:, h].mean()),
                    "label_mass_icl": float(icl["label_mass"][:, h].mean()),
                    "well_separated_zero": float(zero["well_separated"][:, h].mean()),
                    "well_separated_icl": float(icl["well_separated"][:, h].mean()),
                    "n": n,
                }
            )
    table = pd.DataFrame(rows)
    bad = first_non_finite(table)
    if bad is not None:
        raise FloatingPointError(
            f"non-finite Hopfield-head metric {bad.metric!r} for task {inputs.task!r} at layer "
            f"{bad.layer}, head {bad.head} ({bad.prompt_kind}); try dtype float32"
        )
    return {TABLE: table, REGIMES_TABLE: pd.DataFrame(regime_rows)}


register_probe(
    KIND,
    HopfieldHeadsConfig,
    zero_shot_rows=lambda name, frame: (
        frame["prompt_kind"] == "zero_shot" if name in (TABLE, QUERIES_TABLE) else False
    ),
)(run_hopfield_heads)

"""Which heads carry the task: causal head mediation and function vectors (Todd et al., 2024).

Every choice this probe makes is made on the *fit* queries and judged on the *eval* queries
(``docs/science.md#head-mediation``). Per block ``l`` and query head ``h`` (every head of the
blocks in ``layers``):

- **a_lh**: the mean over the fit queries of the head's output at the last position of the
  clean ICL prompt (``head_out.l``, its contribution ``W_O z`` to the residual).
- **AIE** (average indirect effect): ICL prompts under a label control are the corrupted runs
  (``corrupted``: by default ``permuted``, the prompt's labels permuted across its
  demonstrations, as Todd et al.; or ``random_labels``, ``flipped``). For each query and head,
  the head's output at the last position is replaced by ``a_lh``; the effect is the change of
  the gold label's probability (first label token, full vocabulary; metric ``gold_mass``). It
  is computed on the fit queries (the first ``max_queries``; ``aie_fit``: the ranking that
  *chooses* the top-AIE heads) and on the eval queries (the first ``max_queries``; ``aie``,
  with a bootstrap interval: the figure and the Spearman join). The intervention sits at the
  last position only, so it is exact and cheap: ``resid_mid.l' = resid_mid.l + a_lh -
  head_out_lh`` for all heads of a block at once as variants, then block ``l``'s MLP and the
  blocks above as one-token suffix passes over the corrupted prompt's KV cache
  (:func:`cgar_interp.prefix.resume_from_mid`).
- **Label attention** (the Hopfield view): each head's attention mass at the last position on
  the demonstrations' label positions under ICL
  (:func:`~cgar_interp.probes.hopfield_heads.label_positions`, the Hopfield probe's
  definition). The label-reading heads (``top_label``) are chosen by it on the fit queries'
  ICL prompts (``label_attention_fit``). When the suite runs ``hopfield_heads`` first, that
  table's ICL ``label_mass`` (its eval queries) is reported as ``label_attention`` and joins
  the AIE in the Spearman correlation; otherwise ``label_attention`` is the fit-query value.
  ``label_attention_source`` in the join table says which.
- **Function vector**: ``FV = sum of a_lh`` over the ``top_k`` heads by fit AIE, added to the
  zero-shot residual at the last position at each residual layer of ``fv_layers``; full-vocab
  accuracy and label mass per layer on the eval queries (``part = "function_vector"``,
  ``set = "top_aie"``), beside zero-shot and full ICL (``part = "baseline"``). The same with
  the ``top_k`` label-reading heads (``set = "top_label"``) asks whether those heads are
  *sufficient*. The FV is scored on the fit queries too (per query only, in
  ``head_mediation_queries``, ``split = "fit"``): the best layer (``fv_best_layer``) is chosen
  there and its eval accuracy reported. When the suite runs ``task_vectors`` first, its curve
  is copied beside the FV curves (``part = "task_vector"``, ``set = "theta"``) and the join
  names its best layer (chosen by that probe, ``tv_best_layer_selected_on``).
- **Ablation** (``part = "ablation"``): the ``z`` of a set of heads at the last position of the
  clean ICL prompts of the eval queries (the first ``max_queries``) replaced by their mean
  over the fit queries' *zero-shot* prompts (``ablation = "zero_mean"``) or over the fit
  queries' *ICL* prompts (``ablation = "icl_mean"``: removes what a head does on one prompt
  beyond what it does on every ICL prompt, without leaving the ICL distribution). Sets: the
  fit-chosen ``top_aie`` and ``top_label``, and for each of them ``n_random`` seeded random
  sets *matched by layer* (the same number of heads in every block as the tested set, drawn
  from that block's heads outside both tested sets): ``set = "random_top_label"`` with
  ``draw = 0, 1, ...`` per draw and ``draw = -1`` for the per-query mean over draws. Per-query
  changes (ablated - clean, metrics ``*_drop``) of label mass, full-vocab accuracy and gold
  mass, every one kept per query (``head_mediation_queries``). Every set is one variant of a
  suffix pass over the clean prompts' KV cache, from the lowest ablated block, with the sets'
  ``z`` replacements inside the blocks (:func:`cgar_interp.prefix.suffix_patches`).

Tables: ``head_mediation`` (tidy: eval queries), ``head_mediation_queries`` (per query, fit and
eval), ``head_mediation_heads`` (one row per head) and ``head_mediation_join`` (one row per
task: the chosen sets and the split that chose them, the Spearman rank correlation of AIE with
label attention and its permutation p-value, the overlap of the two top-``overlap_k`` sets
against chance, the best FV layer, and per ablation and tested set the matched random draws'
distribution of mean changes with the tested set's percentile in it and a permutation-style
p-value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..capture import capture_many, resume_gradients, resume_variants
from ..layers import resolve_layers
from ..models import Patch, RunResult
from ..prefix import mlp_half, resume_staggered
from ..sites import SiteKindName, site_name, site_names
from . import hopfield_heads, task_vectors
from .base import ProbeContext, SharedRead, TaskInputs, first_non_finite, register_probe
from .hopfield_heads import check_block_spec, label_positions, resolve_blocks
from .protocol import FLIPPED, PERMUTED, RANDOM_LABELS, ProbeConfig

KIND = "head_mediation"
TABLE = "head_mediation"  # tidy: AIE per head, function vectors, baselines, ablations
HEADS_TABLE = "head_mediation_heads"  # one row per head
JOIN_TABLE = "head_mediation_join"  # one row per task: AIE against label attention

# the corrupted runs of the AIE: config value -> the label-control prompt kind
CORRUPTED = {"permuted": PERMUTED, "random_labels": RANDOM_LABELS, "flipped": FLIPPED}

ABLATION_METRICS = ("label_mass", "vocab_correct", "gold_mass")
FV_METRICS = ("vocab_correct", "label_mass", "gold_mass")
TESTED_SETS = ("top_aie", "top_label")  # chosen on the fit queries
# how an ablated head's z is replaced: its mean z over the fit queries' prompts of this kind
ABLATIONS = {"zero_mean": "zero", "icl_mean": "icl"}
JOIN_METRICS = ("label_mass_drop", "vocab_correct_drop")
MAX_VARIANTS = 24  # ablated sets per suffix pass (bounds the [variants, rows, vocab] logits)
# how the AIE of every head is obtained (docs/science.md#attribution-patching)
METHODS = ("exact", "attribution", "attribution+verify")

Head = tuple[int, int]  # (block, head)


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid: it must be an int >= {minimum}")


@dataclass(frozen=True)
class HeadMediationConfig(ProbeConfig):
    """Options of the head-mediation probe (TOML ``kind = "head_mediation"``).

    Attributes:
        layers: attention blocks whose heads are measured: ``"all"``, ``"upper_half"`` or block
            indices (negative from the end).
        top_k: heads in the function vector and in each ablated set (>= 1).
        fv_layers: residual layers the function vector is added at (a layer spec as in
            ``task_vectors``: ``"all"`` is ``0 .. n_layers``).
        n_random: seeded layer-matched random sets per tested set and ablation (>= 0).
        max_queries: fit queries whose AIE chooses the top-AIE heads, and eval queries used
            for the reported AIE and the ablations (the first ones of each split; >= 1, or
            None for all). The function vector is scored on every fit and eval query.
        label_cue_tokens: as in ``hopfield_heads``: the answer cue a label position follows.
        overlap_k: size of the two top sets whose overlap is reported (>= 1).
        n_permutations: permutations for the Spearman p-value (>= 1).
        corrupted: the prompts of the AIE's corrupted runs: ``"permuted"`` (each prompt's
            demonstration labels permuted across its demonstrations, Todd et al. 2024),
            ``"random_labels"`` (each label uniform over the classes, Min et al. 2022) or
            ``"flipped"`` (every label through one derangement of the classes).
        method: how each head's AIE is obtained. ``"exact"``: every head patched, its MLP
            and the blocks above resumed (today's engine). ``"attribution"``: the first-order
            estimate ``(a_lh - head_out_lh) . dP(gold)/d head_out_lh`` of every head from one
            forward and one backward pass per batch (attribution patching); the top-AIE heads
            are chosen by it. ``"attribution+verify"``: the estimate of every head, then the
            exact AIE of the ``verify_top`` heads of largest fit-query estimate and of
            ``verify_random`` seeded random other heads; the top-AIE heads are chosen among
            the verified heads by their *exact* fit AIE, and the join reports the estimate's
            Spearman correlation and top-k recall against the exact values.
        verify_top: heads of largest estimate whose exact AIE is computed (>= 1; more than
            there are heads: every head, the full comparison).
        verify_random: seeded random heads outside those, verified too (>= 0): they show
            whether the estimate misses heads it ranks low.
    """

    layers: str | tuple[int, ...] = "all"
    top_k: int = 10
    fv_layers: str | tuple[int, ...] = "all"
    n_random: int = 20
    max_queries: int | None = 24
    label_cue_tokens: int = 2
    overlap_k: int = 10
    n_permutations: int = 2000
    corrupted: str = "permuted"
    method: str = "exact"
    verify_top: int = 20
    verify_random: int = 10

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not valid: one of {', '.join(METHODS)}")
        _positive_int("verify_top", self.verify_top)
        _positive_int("verify_random", self.verify_random, 0)
        if self.corrupted not in CORRUPTED:
            raise ValueError(
                f"corrupted={self.corrupted!r} is not valid: the AIE's corrupted runs are one "
                f"of {', '.join(CORRUPTED)}"
            )
        check_block_spec(self.layers)
        _positive_int("top_k", self.top_k)
        _positive_int("n_random", self.n_random, 0)
        if self.max_queries is not None:
            _positive_int("max_queries", self.max_queries)
        _positive_int("label_cue_tokens", self.label_cue_tokens, 0)
        _positive_int("overlap_k", self.overlap_k)
        _positive_int("n_permutations", self.n_permutations)

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position: those the function vector is added at."""
        return resolve_layers(self.fv_layers, n_layers, "fv_layers")

    def blocks(self, n_layers: int) -> tuple[int, ...]:
        return resolve_blocks(self.layers, n_layers, "layers")

    def shared_reads(self, inputs: TaskInputs, n_layers: int) -> tuple[SharedRead, ...]:
        """What the probe reads at the last position, in the suite's shared capture pass: head
        outputs, ``z`` and patterns of the fit queries' ICL prompts (a_lh, the ICL-mean
        ablation, the label attention that chooses ``top_label``), the fit queries' zero-shot
        ``z`` with their KV caches (the zero-mean ablation; the function vector scored on the
        fit queries), the corrupted prompts of the AIE's fit and eval queries with their KV
        caches, and the clean ICL prompts the ablations resume."""
        blocks = self.blocks(n_layers)
        fit, ev = inputs.fit, inputs.eval[: self.max_queries]
        kind = self.corrupted_kind
        reads = []
        if len(fit):
            reads += [
                SharedRead.of("icl", fit, fit_icl_sites(blocks, self.method == "exact")),
                SharedRead.of(
                    "zero",
                    fit,
                    fit_zero_sites(blocks, self.needed_layers(n_layers)),
                    keep_states=True,
                ),
            ]
            if getattr(inputs, kind) is not None:
                reads.append(self._corrupted_read(kind, fit[: self.max_queries], blocks))
        reads.append(SharedRead.of("icl", ev, site_names("resid", blocks), keep_states=True))
        if getattr(inputs, kind) is not None:
            reads.append(self._corrupted_read(kind, ev, blocks))
        return tuple(reads)

    def _corrupted_read(self, kind: str, rows, blocks) -> SharedRead:
        """The corrupted prompts of the AIE, with their KV caches: the exact AIE resumes them
        (:func:`effect_sites`); the attribution estimate takes its gradients over them
        (:func:`attribution_sites` and ``resid.0``, :func:`last_token_gradients`), and
        ``attribution+verify`` resumes them for the verified heads too. A remote model takes
        a grad pass of its own instead (local only)."""
        if self.method == "exact":
            return SharedRead.of(kind, rows, effect_sites(blocks), keep_states=True)
        sites = grad_read_sites(blocks, verify=self.method == "attribution+verify")
        return SharedRead.of(kind, rows, sites, keep_states=True, local_only=True)

    @property
    def verifies(self) -> bool:
        """Whether exact AIEs are computed (``exact``: every head; ``attribution+verify``:
        the verified heads)."""
        return self.method != "attribution"

    @property
    def corrupted_kind(self) -> str:
        """The prompt kind of the corrupted runs (``icl_permuted``, ...)."""
        return CORRUPTED[self.corrupted]

    @property
    def resumes_zero_shot(self) -> bool:
        """The function vector patches the last position of the eval queries' zero-shot prompts."""
        return True

    @classmethod
    def key_numbers(cls, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Per task, where exact AIEs were verified against the attribution estimate: the
        heads compared, Spearman's rho (eval and fit queries), top-k recall and the heads
        where the estimate is most wrong (estimate/exact)."""
        join = tables.get(JOIN_TABLE)
        if join is None or "attribution_spearman" not in join.columns:
            return {}
        rows = []
        for r in join[join["attribution_spearman"].notna()].itertuples():
            rows.append(
                {
                    "task": r.task,
                    "heads compared": f"{r.n_verified} ({r.n_verified_top} top by estimate, "
                    f"{r.n_verified_random} random)",
                    "Spearman (eval)": f"{r.attribution_spearman:.3f}",
                    "Spearman (fit)": f"{r.attribution_spearman_fit:.3f}",
                    f"top-{r.attribution_recall_k} recall (eval)": (
                        f"{r.attribution_top_k_recall:.2f}"
                    ),
                    "largest |estimate - exact|": f"{r.attribution_max_abs_error:.4f}",
                    "most wrong (estimate/exact)": r.attribution_worst,
                }
            )
        if not rows:
            return {}
        return {"Attribution estimate against the exact AIE": pd.DataFrame(rows)}

    def remote_unsupported(self) -> str | None:
        """Why the probe cannot run on NDIF (checked when a remote suite is parsed): the
        exact AIE of every head (``method = "exact"``) is one full forward pass per head and
        query on a server. The attribution methods run there: the estimate from one forward
        and backward pass per batch (the backward inside the trace), the verified heads' exact
        AIE as ``z``-patched forward passes, ``a_lh`` from the server's ``o_proj``."""
        if self.method != "exact":
            return None
        return (
            "method = 'exact' resumes each head's MLP and the blocks above it from the "
            "corrupted prompt's KV cache (on a server: one full forward pass per head and "
            "query); use method = 'attribution+verify' (or 'attribution') remotely"
        )

    def prompt_kinds(self) -> frozenset[str]:
        """The corrupted runs of the AIE are the ``corrupted`` label control's ICL prompts."""
        return super().prompt_kinds() | {self.corrupted_kind}

    def self_check_paths(self) -> frozenset[str]:
        """The function vector's resume paths, a head's output replaced through the kept
        cache (the AIE) and ``z`` patched inside suffix passes (the ablations)."""
        paths = {"head_resume", "suffix_patch"}
        if self.method != "exact":  # the attribution estimate's gradients
            paths.add("grad_pass")
        return super().self_check_paths() | paths

    def check_suite(self, index: int, probes) -> None:
        """The Hopfield view is read from ``hopfield_heads``: it must run first, with the
        same label positions (``label_cue_tokens``)."""
        for j, entry in enumerate(probes):
            if not isinstance(entry.config, hopfield_heads.HopfieldHeadsConfig):
                continue
            if j > index:
                raise ValueError(
                    "head_mediation reads the hopfield_heads table of the same run; list the "
                    f"hopfield_heads probe (now [[probe]] {j + 1}) before head_mediation"
                )
            if entry.config.label_cue_tokens != self.label_cue_tokens:
                raise ValueError(
                    f"label_cue_tokens={self.label_cue_tokens} differs from hopfield_heads' "
                    f"{entry.config.label_cue_tokens}; the two must read the same label positions"
                )


# --------------------------------------------------------------------------------------------
# statistics


def spearman_permutation(
    x: np.ndarray, y: np.ndarray, n_permutations: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Spearman's rho of ``x`` and ``y`` (``[n]``, average ranks for ties) and a two-sided
    permutation p-value ``(1 + #{|rho_perm| >= |rho|}) / (1 + n_permutations)``, seeded.

    >>> rho, p = spearman_permutation(np.arange(10.0), np.arange(10.0) ** 2, 200)
    >>> round(rho, 6), p < 0.05
    (1.0, True)
    """
    from scipy.stats import rankdata

    rx = rankdata(np.asarray(x, dtype=float))
    ry = rankdata(np.asarray(y, dtype=float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    if denom == 0.0:
        return float("nan"), float("nan")
    rho = float((rx * ry).sum() / denom)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_permutations, rx.size)), axis=1)
    null = (ry[perms] * rx).sum(axis=1) / denom
    p = (1 + int((np.abs(null) >= abs(rho) - 1e-12).sum())) / (1 + n_permutations)
    return rho, float(p)


def top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> tuple[int, float]:
    """Size of the overlap of the top-``k`` index sets of ``a`` and ``b``, and its chance
    expectation ``k * k / n`` (hypergeometric mean)."""
    n = len(a)
    k = min(k, n)
    top_a = set(np.argsort(-np.asarray(a), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.asarray(b), kind="stable")[:k].tolist())
    return len(top_a & top_b), k * k / n


def top_heads(values: dict[Head, float], k: int) -> list[Head]:
    """The ``k`` heads of largest value (ties: the lower block, then the lower head), sorted
    by (block, head)."""
    order = sorted(values, key=lambda bh: (-values[bh], bh))
    return sorted(order[: min(k, len(order))])


def layer_histogram(heads: list[Head]) -> dict[int, int]:
    """``{block: number of heads of the set in it}``, blocks ascending."""
    out: dict[int, int] = {}
    for b, _ in sorted(heads):
        out[b] = out.get(b, 0) + 1
    return out


def matched_random_sets(
    tested: list[Head],
    exclude: set[Head],
    n_heads: int,
    n_draws: int,
    rng: np.random.Generator,
) -> list[list[Head]]:
    """``n_draws`` random head sets with ``tested``'s layer histogram: per block, as many
    heads as ``tested`` has there, drawn without replacement from that block's ``n_heads``
    heads outside ``exclude`` (the tested sets). A block where the heads outside ``exclude``
    are too few draws from its heads outside ``tested`` alone (the other tested set's heads
    may then be drawn: never the tested heads themselves). Empty when even that leaves too few
    (no matched control exists); each draw sorted by (block, head).

    >>> sets = matched_random_sets([(0, 1), (2, 0), (2, 3)], {(0, 1), (2, 0), (2, 3)}, 4, 3,
    ...                            np.random.default_rng(0))
    >>> [layer_histogram(s) for s in sets] == [{0: 1, 2: 2}] * 3
    True
    >>> full = matched_random_sets([(0, 0)], {(0, 0), (0, 1)}, 2, 1, np.random.default_rng(0))
    >>> full  # block 0's other head belongs to the other tested set: drawn, never (0, 0)
    [[(0, 1)]]
    """
    histogram = layer_histogram(tested)
    own = set(tested)
    pools = {}
    for b, count in histogram.items():
        pool = [h for h in range(n_heads) if (b, h) not in exclude]
        if len(pool) < count:  # the other tested set fills the block: only the tested are out
            pool = [h for h in range(n_heads) if (b, h) not in own]
        pools[b] = pool
    if any(len(pools[b]) < count for b, count in histogram.items()):
        return []
    draws = []
    for _ in range(n_draws):
        draw = []
        for b, count in histogram.items():
            picked = rng.choice(len(pools[b]), size=count, replace=False)
            draw += [(b, pools[b][int(i)]) for i in picked]
        draws.append(sorted(draw))
    return draws


def draw_test(tested: float, draws: np.ndarray) -> tuple[float, float]:
    """Where a tested set's mean change (ablated - clean; more negative = a larger drop)
    lies among the random draws' mean changes: ``(percentile, p)`` with ``percentile`` the
    share (in %) of draws whose drop is smaller than the tested set's and
    ``p = (1 + #{draws whose drop >= the tested drop}) / (1 + n_draws)`` (a permutation-style
    p-value of "the tested set's drop is no larger than a random set's"); NaN without draws.

    >>> percentile, p = draw_test(-0.5, np.array([-0.1, -0.2, -0.6]))
    >>> round(percentile, 4), p
    (66.6667, 0.5)
    """
    draws = np.asarray(draws, dtype=float)
    if draws.size == 0:
        return float("nan"), float("nan")
    percentile = 100.0 * float((draws > tested).mean())
    p = (1 + int((draws <= tested).sum())) / (1 + draws.size)
    return percentile, float(p)


# --------------------------------------------------------------------------------------------
# the probe


def mean_sites(blocks, kind: SiteKindName, with_patterns: bool = False) -> list[str]:
    """The sites :func:`head_means` reads."""
    return list(site_names(kind, blocks)) + (
        list(site_names("attn_pattern", blocks)) if with_patterns else []
    )


def fit_icl_sites(blocks, head_out: bool = True) -> list[str]:
    """What the fit queries' ICL prompts are read at: ``z`` (the ICL mean of the ablation and,
    projected, ``a_lh``), the attention patterns (the label attention that chooses the
    label-reading heads) and, for the exact method, the head outputs themselves (a_lh as the
    mean of ``head_out``, the exact path's definition; the attribution methods project the
    mean ``z`` through ``W_O`` instead, which is the same up to rounding and runs remotely)."""
    heads = list(site_names("head_out", blocks)) if head_out else []
    return heads + list(site_names("attn_pattern", blocks)) + list(site_names("z", blocks))


def fit_zero_sites(blocks, fv_layers) -> list[str]:
    """What the fit queries' zero-shot prompts are read at (with their KV caches): ``z`` (the
    zero-shot mean of the ablation) and the residuals the function vector is added to."""
    return list(site_names("z", blocks)) + list(site_names("resid", fv_layers))


def effect_sites(blocks) -> list[str]:
    """The sites :func:`head_effects` reads (with the KV caches kept)."""
    return [site_name(kind, b) for b in blocks for kind in ("resid_mid", "head_out")]


def head_means(
    handle,
    batch,
    blocks,
    kind: SiteKindName,
    batch_size: int,
    with_patterns: bool = False,
    run: RunResult | None = None,
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Per block: ``kind`` (``head_out`` or ``z``) at the last position, mean over rows
    (``[n_heads, ...]``), and (optionally) the attention patterns ``[n, n_heads, width]``.
    ``run``: :func:`mean_sites` of ``batch`` read already; ``None``: a capture pass here."""
    if run is None:
        sites = mean_sites(blocks, kind, with_patterns)
        run = capture_many(handle, batch, sites, -1, batch_size=batch_size, with_logits=False)
    means = {b: run[site_name(kind, b)].float().mean(0) for b in blocks}
    patterns = (
        {b: run[site_name("attn_pattern", b)].float() for b in blocks} if with_patterns else {}
    )
    return means, patterns


def label_attention_per_query(
    patterns: Tensor, batch, label_ids: Tensor, cue_tokens: int
) -> Tensor:
    """``[n, n_heads]`` each row's attention mass on its demonstrations' label positions."""
    per_row = []
    for i in range(batch.batch_size):
        length = int(batch.lengths[i])
        classes = label_positions(batch.ids[i, :length], label_ids, cue_tokens)
        per_row.append(patterns[i, :, :length][:, classes >= 0].sum(-1))
    return torch.stack(per_row)


def label_attention(patterns: Tensor, batch, label_ids: Tensor, cue_tokens: int) -> Tensor:
    """``[n_heads]`` mean over rows of the attention mass on demonstration label positions."""
    return label_attention_per_query(patterns, batch, label_ids, cue_tokens).mean(0)


def head_effects(
    handle,
    corrupted,
    indices: Tensor,
    blocks,
    means: dict[int, Tensor],
    score,
    batch_size: int,
    progress=None,
    run: RunResult | None = None,
    heads: dict[int, list[int]] | None = None,
) -> tuple[dict[int, Tensor], Tensor]:
    """Effect of putting ``means[l][h]`` in place of each head's output at the last position.

    ``score(logits [..., b, vocab], query indices [b]) -> [..., b]`` (e.g. gold probability).
    ``run``: :func:`effect_sites` of ``corrupted`` with logits and KV caches, read already
    (e.g. in the suite's shared pass); ``None``: a capture pass here. ``heads``: per block,
    the heads to patch (``None``: every head of ``blocks``); the others' effects are NaN.
    Returns ``({block: [n_heads, n]} patched - corrupted, [n] corrupted score)``.
    """
    if run is None:
        run = capture_many(
            handle,
            corrupted,
            effect_sites(blocks),
            -1,
            batch_size=batch_size,
            keep_states=True,
            progress=progress,
        )
    base = score(run.logits.float(), indices)  # [n]
    n_heads, n = handle.arch.n_heads, corrupted.batch_size
    chosen = {b: list(range(n_heads)) for b in blocks} if heads is None else heads
    chosen = {b: hs for b, hs in chosen.items() if hs}
    fill = 0.0 if heads is None else float("nan")
    effects = {b: torch.full((n_heads, n), fill, dtype=torch.float64) for b in blocks}
    decoder_layers = handle.backend.blocks()
    for rows, state in run.states:
        entries = {}  # after block b's MLP the variants of block b join the pass at layer b + 1
        for b, hs in chosen.items():
            mid = run[site_name("resid_mid", b)][rows].float()  # [r, d]
            out = run[site_name("head_out", b)][rows].float().transpose(0, 1)[hs]  # [h, r, d]
            h_mid = mid[None] + (means[b][hs][:, None, :] - out)  # [h, r, d]
            entries[b + 1] = mlp_half(decoder_layers[b], h_mid, handle.dtype)
        final = resume_staggered(handle, state, entries) if entries else {}
        blocks_done = list(chosen.items())
        decoded = handle.decode_residuals([final.pop(b + 1) for b, _ in blocks_done])
        for (b, hs), logits in zip(blocks_done, decoded, strict=True):  # [h, r, vocab]
            patched = score(logits.float(), indices[rows]).cpu().double()
            effects[b][hs, rows[:, None]] = (patched - base[rows].cpu().double()).T
    return effects, base


def verify_patched(
    ctx: ProbeContext,
    kind: str,
    queries: Tensor,
    heads: dict[int, list[int]],
    z_means: dict[int, Tensor],
    blocks,
) -> dict[int, Tensor]:
    """The exact AIE of ``heads`` as :func:`head_effects` computes it, without a KV cache:
    each head's ``z`` at the last position of the ``kind`` prompts set to its mean
    ``z_means`` (the same replacement as ``head_out := a_lh``, ``W_O`` being linear), one
    head per variant of a patched pass (:func:`ablate_sets`: full forward passes on a remote
    model). Effects are gold-label probability changes; NaN for heads not listed.

    Returns:
        ``{block: [n_heads, n]}``, float64.
    """
    n_heads = ctx.handle.arch.n_heads
    effects = {
        b: torch.full((n_heads, len(queries)), float("nan"), dtype=torch.float64) for b in blocks
    }
    sets = {f"L{b}H{h}": [(b, h)] for b, hs in heads.items() for h in hs}
    if not sets:
        return effects
    batch = getattr(ctx.inputs, kind).select(queries)
    clean, patched = ablate_sets(ctx, batch, queries, sets, z_means, kind=kind)
    for b, hs in heads.items():
        for h in hs:
            change = patched[f"L{b}H{h}"]["gold_mass"] - clean["gold_mass"]
            effects[b][h] = change.double()
    return effects


def grad_read_sites(blocks, verify: bool) -> list[str]:
    """What the attribution methods read of the corrupted prompts (with their KV caches) on a
    local model: ``z`` (the estimate's ``z_lh``), ``resid.0`` (the last token's embedding,
    where :func:`~cgar_interp.prefix.last_token_gradients` starts) and, to verify,
    :func:`effect_sites`."""
    return (effect_sites(blocks) if verify else []) + attribution_sites(blocks) + ["resid.0"]


def attribution_sites(blocks) -> list[str]:
    """Where the attribution estimate takes its gradient: each block's ``z`` (the per-head
    input of ``W_O``; a change of a head's output is ``W_O`` of a change of its ``z``)."""
    return list(site_names("z", blocks))


def head_attribution(run: RunResult, blocks, z_means: dict[int, Tensor]) -> dict[int, Tensor]:
    """First-order estimate of every head's AIE from one grad pass (attribution patching).

    Replacing head ``(l, h)``'s output at the last position by ``a_lh`` changes the
    residual there by ``a_lh - head_out_lh = W_O,h (zbar_lh - z_lh)`` (``zbar``: the mean
    ``z`` over the fit queries' clean ICL prompts, so ``a_lh = W_O,h zbar_lh``), hence

        AIE_lh ~= (a_lh - head_out_lh) . dP/d head_out_lh = (zbar_lh - z_lh) . dP/d z_lh,

    with ``dP/dz`` the gradient of the gold label's probability at the last position (``run``
    from a grad pass at :func:`attribution_sites`, reading ``z`` too).

    Returns:
        ``{block: [n_heads, n]}`` per query, float64.
    """
    out = {}
    for b in blocks:
        name = site_name("z", b)
        z = run[name].double()  # [n, H, d_head]
        grad = run.grads[name].double()  # [n, H, d_head]
        delta = z_means[b].double()[None] - z
        out[b] = (delta * grad).sum(-1).T.contiguous()  # [H, n]
    return out


def verify_heads(
    estimate: dict[int, Tensor], n_top: int, n_random: int, rng: np.random.Generator
) -> dict[Head, str]:
    """The heads whose exact AIE ``attribution+verify`` computes: the ``n_top`` of largest
    mean estimate (``{block: [n_heads, n]}``; ties: lower block, then head) as ``"top"`` and
    ``n_random`` drawn uniformly (seeded) from the rest as ``"random"``.

    >>> est = {0: torch.tensor([[0.3], [0.1]]), 1: torch.tensor([[0.2], [0.0]])}
    >>> sorted(verify_heads(est, 2, 1, np.random.default_rng(0)).values())
    ['random', 'top', 'top']
    """
    means = {(b, h): float(v[h].mean()) for b, v in estimate.items() for h in range(len(v))}
    order = sorted(means, key=lambda bh: (-means[bh], bh))
    top = order[:n_top]
    rest = sorted(order[n_top:])
    picked = rng.choice(len(rest), size=min(n_random, len(rest)), replace=False) if rest else []
    out = {bh: "top" for bh in top}
    out.update({rest[int(i)]: "random" for i in picked})
    return out


def heads_by_block(heads, blocks) -> dict[int, list[int]]:
    """``{block: [head, ...]}`` (heads ascending) of ``(block, head)`` pairs, every block of
    ``blocks`` present: the ``heads`` argument of :func:`head_effects` and
    :func:`verify_patched`.

    >>> heads_by_block({(1, 3): "top", (0, 2): "random", (1, 0): "top"}, (0, 1, 2))
    {0: [2], 1: [0, 3], 2: []}
    """
    out: dict[int, list[int]] = {b: [] for b in blocks}
    for b, h in sorted(heads):
        out[b].append(h)
    return out


def top_k_recall(estimate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Share of the ``k`` heads of largest exact AIE that are among the ``k`` of largest
    estimate (the same heads, in the same order, in both arrays).

    >>> top_k_recall(np.array([3.0, 2.0, 1.0, 0.0]), np.array([3.0, 0.0, 2.0, 1.0]), 2)
    0.5
    """
    k = min(k, len(exact))
    top_exact = set(np.argsort(-np.asarray(exact), kind="stable")[:k].tolist())
    top_est = set(np.argsort(-np.asarray(estimate), kind="stable")[:k].tolist())
    return len(top_exact & top_est) / k if k else float("nan")


def ablation_patches(
    sets: list[list[Head]], means: dict[int, Tensor], n_heads: int
) -> tuple[int, list[Patch]]:
    """The lowest ablated block and one ``z`` patch per ablated block for a suffix pass whose
    variant ``v`` ablates ``sets[v]``: those heads' ``z`` set to ``means[block][head]`` (their
    zero-shot or ICL mean ``z`` over the fit queries)."""
    chosen = sorted({b for heads in sets for b, _ in heads})
    masks = {b: torch.zeros(len(sets), n_heads, dtype=torch.bool) for b in chosen}
    for v, heads in enumerate(sets):
        for b, h in heads:
            masks[b][v, h] = True
    patches = []
    for b in chosen:

        def replace(z: Tensor, mask=masks[b], mean=means[b]) -> Tensor:
            # z: [rows, n_var, n_heads, d_head]; mask [n_var, n_heads]; mean [n_heads, d_head]
            mask = mask.to(z.device)[None, :, :, None]
            return torch.where(mask, mean.to(device=z.device, dtype=z.dtype), z)

        patches.append(Patch(site_name("z", b), -1, replace))
    return chosen[0], patches


def ablate_sets(
    ctx: ProbeContext,
    batch,
    indices: Tensor,
    sets: dict[str, list[Head]],
    means: dict[int, Tensor],
    max_variants: int = MAX_VARIANTS,
    kind: str = "icl",
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Per-query metrics of ``batch`` clean and with each set of heads mean-ablated at the
    last position (``z`` := ``means``): one capture pass (KV cache kept), then the sets as
    variants of suffix passes (at most ``max_variants`` per pass) from the lowest ablated
    block. Returns ``(clean {metric: [n]}, {set: {metric: [n]}})``. ``batch`` is the ICL
    prompts of the queries ``indices``: read from the suite's shared pass where the probe
    declared them (:meth:`ProbeContext.read`)."""
    names = list(sets)
    clean: dict[str, Tensor] = {}
    ablated: dict[str, dict[str, Tensor]] = {}
    for first in range(0, len(names), max_variants):
        chunk = names[first : first + max_variants]
        n_var = len(chunk)
        start, patches = ablation_patches([sets[n] for n in chunk], means, ctx.handle.arch.n_heads)
        run = ctx.read(kind, indices, [site_name("resid", start)], keep_states=True)
        if not clean:
            clean = {m: v.cpu() for m, v in ctx.score(run.logits.float(), indices).items()}
        out = resume_variants(
            ctx.handle,
            batch,
            [start],
            lambda _, h_last, idx, n=n_var: h_last[None].expand(n, *h_last.shape),
            lambda logits, idx: {
                m: v
                for m, v in ctx.score(logits.float(), indices[idx]).items()
                if m in ABLATION_METRICS
            },
            batch_size=ctx.batch_size,
            states=run.states,
            patches=patches,
        )[start]
        ablated.update({n: {m: out[m][v] for m in out} for v, n in enumerate(chunk)})
    return clean, ablated


def hopfield_label_attention(
    tables: dict[str, pd.DataFrame], task: str, blocks, n_heads: int
) -> dict[int, Tensor] | None:
    """``{block: [n_heads]}`` ICL label-token attention from the run's ``hopfield_heads``
    table (``prompt_kind = icl``, ``metric = label_mass``), or None when it lacks a head."""
    table = tables.get(hopfield_heads.TABLE)
    if table is None:
        return None
    rows = table[
        (table["task"] == task)
        & (table["prompt_kind"] == "icl")
        & (table["metric"] == "label_mass")
    ]
    values = {(int(r.layer), int(r.head)): float(r.value) for r in rows.itertuples()}
    if any((b, h) not in values for b in blocks for h in range(n_heads)):
        return None
    return {
        b: torch.tensor([values[(b, h)] for h in range(n_heads)], dtype=torch.float64)
        for b in blocks
    }


def best_layer(per_layer: dict[int, dict[str, Tensor]]) -> int:
    """The layer of the largest mean ``vocab_correct`` (then ``label_mass``; ties: the lowest
    layer) of ``{layer: {metric: [n]}}``."""
    scores = [
        (float(m["vocab_correct"].mean()), float(m["label_mass"].mean()), -layer)
        for layer, m in per_layer.items()
    ]
    return -max(scores)[2]


def attribution_agreement(heads: pd.DataFrame, k: int, n_worst: int = 5) -> dict:
    """The estimate against the exact AIE on the verified heads (``heads``: one task's
    ``head_mediation_heads`` rows with ``aie_estimate`` and, where verified, ``aie``): Spearman's
    rho (eval and fit queries), top-``k`` recall (eval), the verified heads, and the
    ``n_worst`` heads of largest ``|estimate - exact|`` (eval)."""
    from scipy.stats import spearmanr

    ver = heads[heads["verified"]]
    out: dict = {
        "n_verified": len(ver),
        "n_verified_top": int((ver["verified_as"] == "top").sum()),
        "n_verified_random": int((ver["verified_as"] == "random").sum()),
        "attribution_recall_k": min(k, len(ver)),
    }
    for suffix, est, exact in (
        ("", "aie_estimate", "aie"),
        ("_fit", "aie_estimate_fit", "aie_fit"),
    ):
        varies = len(ver) > 2 and np.ptp(ver[est]) > 0 and np.ptp(ver[exact]) > 0
        rho = spearmanr(ver[est], ver[exact]).statistic if varies else float("nan")
        out[f"attribution_spearman{suffix}"] = float(rho)
        out[f"attribution_top_k_recall{suffix}"] = top_k_recall(
            ver[est].to_numpy(), ver[exact].to_numpy(), k
        )
    error = (ver["aie_estimate"] - ver["aie"]).abs()
    worst = ver.assign(error=error).sort_values(
        ["error", "layer", "head"], ascending=[False, True, True]
    )
    out["attribution_worst"] = ",".join(
        f"{r.name}:{r.aie_estimate:+.4f}/{r.aie:+.4f}" for r in worst.head(n_worst).itertuples()
    )
    out["attribution_max_abs_error"] = float(error.max()) if len(ver) else float("nan")
    return out


def _keys(part: str, **keys) -> dict:
    """The key columns of a tidy row (every row has all of them)."""
    out = {"part": part, "layer": -1, "head": -1, "set": "", "ablation": "none", "draw": -1}
    out.update(keys)
    return out


def run_head_mediation(config: HeadMediationConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """AIE of every head, function vectors, label-reading heads and ablations; tidy rows.

    Every choice (the top-AIE and label-reading heads, the function vector's best layer) is
    made on the fit queries; the tidy rows score the eval queries."""
    handle, inputs = ctx.handle, ctx.inputs
    corrupted = config.corrupted_kind
    if getattr(inputs, corrupted) is None:
        raise ValueError(
            f"head_mediation needs {corrupted!r} prompts (the corrupted runs, corrupted="
            f"{config.corrupted!r}); prepare the task with label_controls=({corrupted!r},) "
            "(a suite with this probe does so)"
        )
    if not len(inputs.fit):
        raise ValueError(
            f"head_mediation chooses its heads on the fit queries; task {inputs.task!r} has none"
        )
    n_heads = handle.arch.n_heads
    blocks = config.blocks(handle.n_layers)
    fit, ev_all = inputs.fit, inputs.eval
    ev, fit_aie = ev_all[: config.max_queries], fit[: config.max_queries]
    base = {"task": inputs.task, "probe": KIND}

    def tick(what: str, n: int):
        return ctx.progress(f"{inputs.task}: head mediation {what}", n) if ctx.progress else None

    # 1. on the fit queries' clean ICL prompts: a_lh, the ICL mean z, the label attention that
    #    chooses the label-reading heads; on their zero-shot prompts: the zero-shot mean z
    icl_fit = inputs.icl.select(fit)
    exact = config.method == "exact"
    icl_run = ctx.read("icl", fit, fit_icl_sites(blocks, exact))
    icl_z, patterns = head_means(handle, icl_fit, blocks, "z", ctx.batch_size, True, icl_run)
    if exact:  # a_lh: the mean head output
        a, _ = head_means(handle, icl_fit, blocks, "head_out", ctx.batch_size, run=icl_run)
    else:  # the same, as W_O of the mean z (the server's o_proj on a remote model)
        a = handle.head_outputs(icl_z)
    attention_fit = {  # [n_fit, n_heads]
        b: label_attention_per_query(
            patterns[b], icl_fit, inputs.label_ids, config.label_cue_tokens
        ).double()
        for b in blocks
    }
    fv_layers = config.needed_layers(handle.n_layers)
    zero_run = ctx.read("zero", fit, fit_zero_sites(blocks, fv_layers), keep_states=True)
    zero_z, _ = head_means(handle, None, blocks, "z", ctx.batch_size, run=zero_run)
    means = {"zero_mean": zero_z, "icl_mean": icl_z}
    reported = hopfield_label_attention(ctx.tables, inputs.task, blocks, n_heads)
    if reported is None:
        source = f"head_mediation (fit queries, n={len(fit)})"
        reported = {b: attention_fit[b].mean(0) for b in blocks}
    else:
        source = "hopfield_heads (icl label_mass)"

    # 2. AIE on the corrupted prompts: the fit queries' choose, the eval queries' are reported
    def effects_on(queries, what):
        return head_effects(
            handle,
            getattr(inputs, corrupted).select(queries),
            queries,
            blocks,
            a,
            ctx.gold_probability,
            ctx.batch_size,
            run=ctx.read(
                corrupted,
                queries,
                effect_sites(blocks),
                keep_states=True,
                progress=tick(what, len(queries)),
            ),
        )[0]

    # locally the gradients come from the corrupted prompts' kept caches (one-token suffix
    # passes with a backward) and the verified heads' exact AIE resumes them; a remote model
    # keeps no cache: one forward and backward pass per batch on the server, and the verified
    # heads as z-patched forward passes (verify_patched)
    resume_here = not handle.remote

    def attribute_on(queries, what):
        """The estimate of every head on ``queries`` and the run it came from (locally with
        the reads and KV caches the exact AIE of the verified heads resumes)."""
        if not resume_here:
            run = ctx.read_gradients(
                corrupted,
                queries,
                attribution_sites(blocks),
                attribution_sites(blocks),
                progress=tick(what, len(queries)),
            )
            return head_attribution(run, blocks, icl_z), run
        sites = grad_read_sites(blocks, verify=config.method == "attribution+verify")
        run = ctx.read(
            corrupted, queries, sites, keep_states=True, progress=tick(what, len(queries))
        )
        run.grads = resume_gradients(handle, run.states, blocks, ctx.gold_objective(queries))
        return head_attribution(run, blocks, icl_z), run

    estimates = estimates_fit = None
    verified: dict[Head, str] = {}
    if config.method == "exact":
        effects_fit = effects_on(fit_aie, "AIE (fit queries)")
        effects = effects_on(ev, "AIE")
        verified = {(b, h): "all" for b in blocks for h in range(n_heads)}
    else:
        estimates_fit, run_fit = attribute_on(fit_aie, "AIE estimate (fit queries)")
        estimates, run_ev = attribute_on(ev, "AIE estimate")
        effects_fit = effects = None
        if config.method == "attribution+verify":
            verify_rng = np.random.default_rng([ctx.seed, 28])  # apart from the draws' rng
            verified = verify_heads(
                estimates_fit, config.verify_top, config.verify_random, verify_rng
            )
            subset = heads_by_block(verified, blocks)

            def exact_on(queries, run):
                if not resume_here:
                    return verify_patched(ctx, corrupted, queries, subset, icl_z, blocks)
                return head_effects(
                    handle,
                    getattr(inputs, corrupted).select(queries),
                    queries,
                    blocks,
                    a,
                    ctx.gold_probability,
                    ctx.batch_size,
                    run=run,
                    heads=subset,
                )[0]

            effects_fit = exact_on(fit_aie, run_fit)
            effects = exact_on(ev, run_ev)
            del run_fit, run_ev  # the kept caches
    rows, head_rows = [], []
    nan = float("nan")
    for b in blocks:
        for h in range(n_heads):
            keys = _keys("aie", layer=b, head=h, set="all")
            row = {"value": nan, "ci_low": nan, "ci_high": nan, "n": len(ev)}
            if (b, h) in verified:
                (row,) = ctx.rows({"aie": effects[b][h]}, queries=ev, **base, **keys)
                ctx.record_queries({"aie": effects_fit[b][h]}, fit_aie, **base, **keys)
                rows.append(row)
            extra = {}
            if estimates is not None:
                (est_row,) = ctx.rows({"aie_estimate": estimates[b][h]}, queries=ev, **base, **keys)
                ctx.record_queries({"aie_estimate": estimates_fit[b][h]}, fit_aie, **base, **keys)
                rows.append(est_row)
                extra = {
                    "aie_estimate": est_row["value"],
                    "aie_estimate_ci_low": est_row["ci_low"],
                    "aie_estimate_ci_high": est_row["ci_high"],
                    "aie_estimate_fit": float(estimates_fit[b][h].mean()),
                    "verified": (b, h) in verified,
                    "verified_as": verified.get((b, h), ""),
                }
            ctx.record_queries(
                {"label_attention": attention_fit[b][:, h]},
                fit,
                **base,
                **_keys("label_attention", layer=b, head=h, set="all"),
            )
            head_rows.append(
                {
                    **base,
                    "layer": b,
                    "head": h,
                    "name": f"L{b}H{h}",
                    "aie": row["value"],
                    "aie_ci_low": row["ci_low"],
                    "aie_ci_high": row["ci_high"],
                    "aie_fit": float(effects_fit[b][h].mean()) if (b, h) in verified else nan,
                    **extra,
                    "label_attention": float(reported[b][h]),
                    "label_attention_fit": float(attention_fit[b][:, h].mean()),
                    "corrupted": config.corrupted,
                    "method": config.method,
                    "n": row["n"],
                    "n_fit_aie": len(fit_aie),
                    "n_fit": len(fit),
                }
            )
    heads = pd.DataFrame(head_rows)
    k = min(config.top_k, len(heads))
    by_head = {(int(r.layer), int(r.head)): r for r in heads.itertuples()}
    # the top-AIE heads: by exact fit AIE (every head, or the verified ones), else by estimate
    aie_column = "aie_fit" if config.verifies else "aie_estimate_fit"
    chooser = {
        bh: getattr(r, aie_column)
        for bh, r in by_head.items()
        if np.isfinite(getattr(r, aie_column))
    }
    sets: dict[str, list[Head]] = {
        "top_aie": top_heads(chooser, k),
        "top_label": top_heads({bh: r.label_attention_fit for bh, r in by_head.items()}, k),
    }

    def sort_key(value: float) -> float:  # a head without a value ranks last
        return -value if np.isfinite(value) else float("inf")

    for name, column in ((("rank_aie", aie_column)), ("rank_label", "label_attention_fit")):
        order = sorted(by_head, key=lambda bh, c=column: (sort_key(getattr(by_head[bh], c)), bh))
        rank = {bh: i + 1 for i, bh in enumerate(order)}
        heads[name] = [
            rank[(int(b), int(h))] for b, h in zip(heads.layer, heads["head"], strict=True)
        ]
    for name in TESTED_SETS:
        chosen = set(sets[name])
        heads[name] = [
            (int(b), int(h)) in chosen for b, h in zip(heads.layer, heads["head"], strict=True)
        ]
    heads["selected_on"] = "fit"
    heads["rank_aie_by"] = aie_column

    # 3. function vectors (top AIE heads; top label-reading heads) in the zero-shot pass: the
    #    eval queries (tidy rows) and the fit queries (per query: the best layer is chosen there)
    fvs = torch.stack([sum(a[b][h] for b, h in sets[name]) for name in TESTED_SETS])

    def fv_scores(queries, states, what):
        return resume_variants(
            handle,
            inputs.zero.select(queries),
            fv_layers,
            lambda layer, h_last, idx: h_last[None] + fvs[:, None, :].to(h_last.dtype),
            lambda logits, idx: {
                m: v for m, v in ctx.score(logits.float(), queries[idx]).items() if m in FV_METRICS
            },
            batch_size=ctx.batch_size,
            progress=tick(what, len(queries)),
            states=states,
        )

    out = fv_scores(ev_all, ctx.zero_states(), "function vector")
    out_fit = fv_scores(fit, zero_run.states, "function vector (fit queries)")
    fv_eval: dict[str, dict[int, dict[str, Tensor]]] = {name: {} for name in TESTED_SETS}
    fv_fit: dict[str, dict[int, dict[str, Tensor]]] = {name: {} for name in TESTED_SETS}
    for layer in fv_layers:
        for v, name in enumerate(TESTED_SETS):
            keys = _keys("function_vector", layer=layer, set=name)
            fv_eval[name][layer] = {m: val[v] for m, val in out[layer].items()}
            fv_fit[name][layer] = {m: val[v] for m, val in out_fit[layer].items()}
            rows += ctx.rows(fv_eval[name][layer], queries=ev_all, **base, **keys)
            ctx.record_queries(fv_fit[name][layer], fit, **base, **keys)
    tv = ctx.tables.get(task_vectors.TABLE)
    if tv is not None:  # the task-vector curve of the same run, beside the FV curves
        tv = tv[tv["task"] == inputs.task]
        for r in tv[tv["metric"].isin(FV_METRICS)].itertuples():
            rows.append(
                {
                    **base,
                    **_keys("task_vector", layer=int(r.layer), set="theta"),
                    "metric": r.metric,
                    "value": float(r.value),
                    "n": int(r.n),
                    "ci_low": float(r.ci_low),
                    "ci_high": float(r.ci_high),
                }
            )
    cap = ctx.captures()
    for kind, name in (("zero", "zero_shot"), ("icl", "icl")):
        scores = ctx.score(cap.logits[kind][ev_all], ev_all)
        rows += ctx.rows({m: scores[m] for m in FV_METRICS}, **base, **_keys("baseline", set=name))

    # 4. ablations on the clean ICL prompts of the eval queries: the tested sets and their
    #    layer-matched random sets, z replaced by the zero-shot mean and by the ICL mean
    rng = np.random.default_rng(ctx.seed)
    tested_heads = set(sets["top_aie"]) | set(sets["top_label"])
    draws = {
        name: matched_random_sets(sets[name], tested_heads, n_heads, config.n_random, rng)
        for name in TESTED_SETS
    }
    ablated_sets = {name: sets[name] for name in TESTED_SETS}
    for name in TESTED_SETS:
        for i, heads_i in enumerate(draws[name]):
            ablated_sets[f"random_{name}/{i}"] = heads_i
    batch = inputs.icl.select(ev)
    changes: dict[str, dict[str, dict[str, Tensor]]] = {}
    clean = None
    for ablation in ABLATIONS:
        clean, ablated = ablate_sets(ctx, batch, ev, ablated_sets, means[ablation])
        changes[ablation] = {
            name: {f"{m}_drop": ablated[name][m] - clean[m] for m in ABLATION_METRICS}
            for name in ablated_sets
        }
    rows += ctx.rows(
        {m: clean[m] for m in ABLATION_METRICS},
        queries=ev,
        **base,
        **_keys("ablation", set="clean"),
    )
    for ablation in ABLATIONS:
        per_set = changes[ablation]
        for name in TESTED_SETS:
            keys = {"ablation": ablation}
            rows += ctx.rows(
                per_set[name], queries=ev, **base, **_keys("ablation", set=name, **keys)
            )
            per_draw = [per_set[f"random_{name}/{i}"] for i in range(len(draws[name]))]
            if not per_draw:
                continue
            mean_draw = {m: torch.stack([d[m] for d in per_draw]).mean(0) for m in per_draw[0]}
            rows += ctx.rows(
                mean_draw, queries=ev, **base, **_keys("ablation", set=f"random_{name}", **keys)
            )
            for i, values in enumerate(per_draw):
                rows += ctx.rows(
                    values,
                    queries=ev,
                    **base,
                    **_keys("ablation", set=f"random_{name}", draw=i, **keys),
                )

    # 5. the join: the chosen sets, rank correlation, top-set overlap, best layers, draws
    # AIE against label attention over every head: exact AIEs where every head has one,
    # else the estimate (named in the join)
    every_aie = "aie" if config.method == "exact" else "aie_estimate"
    rho, p = spearman_permutation(
        heads[every_aie].to_numpy(),
        heads["label_attention"].to_numpy(),
        config.n_permutations,
        ctx.seed,
    )
    overlap, chance = top_overlap(
        heads[every_aie].to_numpy(), heads["label_attention"].to_numpy(), config.overlap_k
    )
    join = {
        **base,
        "n_heads": len(heads),
        "label_attention_source": source,
        "corrupted": config.corrupted,
        "method": config.method,
        "spearman_aie": every_aie,
        "spearman_rho": rho,
        "spearman_p": p,
        "n_permutations": config.n_permutations,
        "overlap_k": min(config.overlap_k, len(heads)),
        "overlap": overlap,
        "overlap_chance": chance,
        "top_aie": ",".join(f"L{b}H{h}" for b, h in sets["top_aie"]),
        "top_label": ",".join(f"L{b}H{h}" for b, h in sets["top_label"]),
        "selected_on": "fit",
        "top_aie_selected_by": (
            f"{'exact AIE' if config.verifies else 'AIE estimate'} on the fit queries' "
            f"corrupted prompts (n={len(fit_aie)})"
            + (
                f", among the {len(verified)} verified heads"
                if config.method == "attribution+verify"
                else ""
            )
        ),
        "top_label_selected_by": f"ICL label attention on the fit queries (n={len(fit)})",
        "n": len(ev),
        "n_fit": len(fit),
    }
    if config.method == "attribution+verify":
        join.update(attribution_agreement(heads, config.overlap_k))
    for name, prefix in (("top_aie", "fv"), ("top_label", "fv_top_label")):
        chosen = best_layer(fv_fit[name])
        in_sample = best_layer(fv_eval[name])
        join[f"{prefix}_best_layer"] = chosen
        join[f"{prefix}_best_layer_selected_on"] = "fit"
        join[f"{prefix}_best_vocab_correct"] = float(fv_eval[name][chosen]["vocab_correct"].mean())
        join[f"{prefix}_best_vocab_correct_fit"] = float(
            fv_fit[name][chosen]["vocab_correct"].mean()
        )
        join[f"{prefix}_best_layer_in_sample"] = in_sample  # eval argmax: descriptive only
        join[f"{prefix}_best_vocab_correct_in_sample"] = float(
            fv_eval[name][in_sample]["vocab_correct"].mean()
        )
    if tv is not None and len(tv):
        acc = tv[tv["metric"] == "vocab_correct"]
        if "best_layer" in tv.columns and int(tv["best_layer"].iloc[0]) in set(acc["layer"]):
            chosen = int(tv["best_layer"].iloc[0])
            split = str(tv.get("best_layer_selected_on", pd.Series(["fit"])).iloc[0])
        elif len(acc):  # an older table: the eval maximum, labelled as such
            chosen = int(acc.sort_values(["value", "layer"], ascending=[False, True]).layer.iloc[0])
            split = "eval (in-sample)"
        else:
            chosen = None
        if chosen is not None:
            join["tv_best_layer"] = chosen
            join["tv_best_layer_selected_on"] = split
            join["tv_best_vocab_correct"] = float(acc[acc["layer"] == chosen].value.iloc[0])
    for name in TESTED_SETS:
        join[f"random_{name}_n_draws"] = len(draws[name])
        join[f"random_{name}_layers"] = ",".join(
            f"L{b}:{c}" for b, c in layer_histogram(sets[name]).items()
        )
        join[f"random_{name}_sets"] = ";".join(  # draw i's heads, in draw order
            ",".join(f"L{b}H{h}" for b, h in heads_i) for heads_i in draws[name]
        )
        for ablation in ABLATIONS:
            per_set = changes[ablation]
            for metric in JOIN_METRICS:
                tested = float(per_set[name][metric].mean())
                per_draw = np.array(
                    [
                        float(per_set[f"random_{name}/{i}"][metric].mean())
                        for i in range(len(draws[name]))
                    ]
                )
                percentile, p_draws = draw_test(tested, per_draw)
                stem = f"{ablation}_{name}_{metric}"
                rand = f"{ablation}_random_{name}_{metric}"
                join[stem] = tested
                join[f"{rand}_mean"] = float(per_draw.mean()) if per_draw.size else float("nan")
                join[f"{rand}_sd"] = (
                    float(per_draw.std(ddof=1)) if per_draw.size > 1 else float("nan")
                )
                join[f"{rand}_q05"] = (
                    float(np.quantile(per_draw, 0.05)) if per_draw.size else float("nan")
                )
                join[f"{rand}_q95"] = (
                    float(np.quantile(per_draw, 0.95)) if per_draw.size else float("nan")
                )
                join[f"{stem}_percentile"] = percentile
                join[f"{stem}_p"] = p_draws
    table = pd.DataFrame(rows)
    bad = first_non_finite(table)
    if bad is not None:
        raise FloatingPointError(
            f"non-finite head-mediation value {bad.metric!r} ({bad.part}, layer {bad.layer}, "
            f"head {bad.head}) for task {inputs.task!r}; try dtype float32"
        )
    return {
        TABLE: table,
        HEADS_TABLE: heads,
        JOIN_TABLE: pd.DataFrame([join]),
    }


register_probe(
    KIND,
    HeadMediationConfig,
    zero_shot_rows=lambda name, frame: (
        (frame["part"] == "baseline") & (frame["set"] == "zero_shot") if name == TABLE else False
    ),
)(run_head_mediation)

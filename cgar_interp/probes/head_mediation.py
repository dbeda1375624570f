"""Which heads carry the task: causal head mediation and function vectors (Todd et al., 2024).

Per block ``l`` and query head ``h`` (every head of the blocks in ``layers``):

- **a_lh**: the mean over the *fit* queries of the head's output at the last position of the
  clean ICL prompt (``head_out.l``, its contribution ``W_O z`` to the residual).
- **AIE** (average indirect effect): the eval queries' ICL prompts under a label control are
  the corrupted runs (``corrupted``: by default ``permuted``, the prompt's labels permuted
  across its demonstrations, as Todd et al.; or ``random_labels``, ``flipped``). For each query and head, the head's output at the
  last position is replaced by ``a_lh``; the effect is the change of the gold label's
  probability (first label token, full vocabulary; metric ``gold_mass``). AIE is the mean over
  the eval queries (the first ``max_queries``), with a bootstrap interval. The intervention sits
  at the last position only, so it is exact and cheap: ``resid_mid.l' = resid_mid.l + a_lh -
  head_out_lh`` for all heads of a block at once as variants, then block ``l``'s MLP and the
  blocks above as one-token suffix passes over the corrupted prompt's KV cache
  (:func:`cgar_interp.prefix.resume_from_mid`).
- **Function vector**: ``FV = sum of a_lh`` over the ``top_k`` heads by AIE, added to the
  zero-shot residual at the last position at each residual layer of ``fv_layers``; full-vocab
  accuracy and label mass per layer (``part = "function_vector"``, ``set = "top_aie"``), beside
  zero-shot and full ICL (``part = "baseline"``). The same with the ``top_k`` label-reading
  heads (``set = "top_label"``) asks whether those heads are *sufficient*. When the suite runs
  ``task_vectors`` before this probe, its accuracy and label mass per layer are copied beside
  the FV curves (``part = "task_vector"``, ``set = "theta"``, for the figure) and the join table
  names both best layers (``fv_best_layer``, ``tv_best_layer``) and their accuracies.
- **Label attention** (the Hopfield view): each head's attention mass at the last position on
  the demonstrations' label positions under ICL. When the suite runs ``hopfield_heads`` first
  (it must come before this probe), this probe reads that table of the same run (``prompt_kind
  = icl``, ``metric = label_mass``: the eval queries it read); otherwise it computes the same
  quantity (:func:`~cgar_interp.probes.hopfield_heads.label_positions`, the Hopfield probe's
  definition) on the fit queries. ``label_attention_source`` in the join table says which.
- **Ablation** (``part = "ablation"``): heads' ``z`` at the last position of the clean ICL
  prompts replaced by their *zero-shot* mean (fit queries), ``top_k`` heads at a time: the top
  AIE heads, the top label-reading heads and ``n_random`` seeded random sets. Per-query drops
  (ablated - clean) of label mass and full-vocab accuracy; random sets as the mean over draws
  (``set = "random"``, per query, CI over queries) and each draw (``random_00`` ...). Every
  set is one variant of one suffix pass over the clean prompts' KV cache, from the lowest
  ablated block, with the sets' ``z`` replacements inside the blocks
  (:func:`cgar_interp.prefix.suffix_patches`).

Tables: ``head_mediation`` (tidy), ``head_mediation_heads`` (one row per head) and
``head_mediation_join`` (one row per task: Spearman rank correlation of AIE with label attention
and its permutation p-value, the overlap of the two top-``overlap_k`` sets against chance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..capture import capture_many, resume_variants
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
        n_random: seeded random sets of ``top_k`` heads to ablate (>= 0).
        max_queries: eval queries used for AIE and ablation (the first ones; >= 1, or None
            for all). The function vector is scored on every eval query.
        label_cue_tokens: as in ``hopfield_heads``: the answer cue a label position follows.
        overlap_k: size of the two top sets whose overlap is reported (>= 1).
        n_permutations: permutations for the Spearman p-value (>= 1).
        corrupted: the prompts of the AIE's corrupted runs: ``"permuted"`` (each prompt's
            demonstration labels permuted across its demonstrations, Todd et al. 2024),
            ``"random_labels"`` (each label uniform over the classes, Min et al. 2022) or
            ``"flipped"`` (every label through one derangement of the classes).
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

    def __post_init__(self):
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
        """What the probe reads at the last position, in the suite's shared capture pass:
        head outputs (and patterns, for label attention without ``hopfield_heads``) of the fit
        queries' ICL prompts, their zero-shot ``z``, the corrupted prompts of the AIE with their
        KV caches, and the clean ICL prompts the ablations resume."""
        blocks = self.blocks(n_layers)
        fit, ev = inputs.fit, inputs.eval[: self.max_queries]
        reads = [
            SharedRead.of("icl", fit, mean_sites(blocks, "head_out", with_patterns=True)),
            SharedRead.of("zero", fit, mean_sites(blocks, "z")),
            SharedRead.of("icl", ev, site_names("resid", blocks), keep_states=True),
        ]
        kind = self.corrupted_kind
        if getattr(inputs, kind) is not None:
            reads.append(SharedRead.of(kind, ev, effect_sites(blocks), keep_states=True))
        return tuple(reads)

    @property
    def corrupted_kind(self) -> str:
        """The prompt kind of the corrupted runs (``icl_permuted``, ...)."""
        return CORRUPTED[self.corrupted]

    @property
    def resumes_zero_shot(self) -> bool:
        """The function vector patches the last position of the eval queries' zero-shot prompts."""
        return True

    def remote_unsupported(self) -> str:
        """Why the probe cannot run on NDIF (checked when a remote suite is parsed)."""
        return (
            "the AIE of every head resumes each head's MLP and the blocks above it from the "
            "corrupted prompt's KV cache, and head outputs need every block's W_O in this "
            "process; on a server that is one full forward pass per head and query"
        )

    def prompt_kinds(self) -> frozenset[str]:
        """The corrupted runs of the AIE are the ``corrupted`` label control's ICL prompts."""
        return super().prompt_kinds() | {self.corrupted_kind}

    def self_check_paths(self) -> frozenset[str]:
        """The function vector's resume paths, a head's output replaced through the kept
        cache (the AIE) and ``z`` patched inside suffix passes (the ablations)."""
        return super().self_check_paths() | {"head_resume", "suffix_patch"}

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


# --------------------------------------------------------------------------------------------
# the probe


def mean_sites(blocks, kind: SiteKindName, with_patterns: bool = False) -> list[str]:
    """The sites :func:`head_means` reads."""
    return list(site_names(kind, blocks)) + (
        list(site_names("attn_pattern", blocks)) if with_patterns else []
    )


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


def label_attention(patterns: Tensor, batch, label_ids: Tensor, cue_tokens: int) -> Tensor:
    """``[n_heads]`` mean over rows of the attention mass on demonstration label positions."""
    per_row = []
    for i in range(batch.batch_size):
        length = int(batch.lengths[i])
        classes = label_positions(batch.ids[i, :length], label_ids, cue_tokens)
        per_row.append(patterns[i, :, :length][:, classes >= 0].sum(-1))
    return torch.stack(per_row).mean(0)


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
) -> tuple[dict[int, Tensor], Tensor]:
    """Effect of putting ``means[l][h]`` in place of each head's output at the last position.

    ``score(logits [..., b, vocab], query indices [b]) -> [..., b]`` (e.g. gold probability).
    ``run``: :func:`effect_sites` of ``corrupted`` with logits and KV caches, read already
    (e.g. in the suite's shared pass); ``None``: a capture pass here.
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
    effects = {b: torch.zeros(n_heads, n, dtype=torch.float64) for b in blocks}
    decoder_layers = handle.backend.blocks()
    for rows, state in run.states:
        entries = {}  # after block b's MLP the variants of block b join the pass at layer b + 1
        for b in blocks:
            mid = run[site_name("resid_mid", b)][rows].float()  # [r, d]
            out = run[site_name("head_out", b)][rows].float().transpose(0, 1)  # [H, r, d]
            h_mid = mid[None] + (means[b][:, None, :] - out)  # [H, r, d]
            entries[b + 1] = mlp_half(decoder_layers[b], h_mid, handle.dtype)
        final = resume_staggered(handle, state, entries)
        for b in blocks:
            logits = handle.decode_residual(final.pop(b + 1))  # [H, r, vocab]
            patched = score(logits.float(), indices[rows]).cpu().double()
            effects[b][:, rows] = patched - base[rows].cpu().double()
    return effects, base


def ablation_patches(
    sets: list[list[tuple[int, int]]], zero_z: dict[int, Tensor], n_heads: int
) -> tuple[int, list[Patch]]:
    """The lowest ablated block and one ``z`` patch per ablated block for a suffix pass whose
    variant ``v`` ablates ``sets[v]``: those heads' ``z`` set to their zero-shot mean."""
    chosen = sorted({b for heads in sets for b, _ in heads})
    masks = {b: torch.zeros(len(sets), n_heads, dtype=torch.bool) for b in chosen}
    for v, heads in enumerate(sets):
        for b, h in heads:
            masks[b][v, h] = True
    patches = []
    for b in chosen:

        def replace(z: Tensor, mask=masks[b], mean=zero_z[b]) -> Tensor:
            # z: [rows, n_var, n_heads, d_head]; mask [n_var, n_heads]; mean [n_heads, d_head]
            mask = mask.to(z.device)[None, :, :, None]
            return torch.where(mask, mean.to(device=z.device, dtype=z.dtype), z)

        patches.append(Patch(site_name("z", b), -1, replace))
    return chosen[0], patches


def ablate_sets(
    ctx: ProbeContext, batch, indices: Tensor, sets: dict[str, list[tuple[int, int]]], zero_z
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """Per-query metrics of ``batch`` clean and with each set of heads mean-ablated at the
    last position: one capture pass (KV cache kept), then every set as a variant of one suffix
    pass from the lowest ablated block. Returns ``(clean {metric: [n]}, {set: {metric: [n]}})``.
    ``batch`` is the ICL prompts of the queries ``indices``: read from the suite's shared pass
    where the probe declared them (:meth:`ProbeContext.read`)."""
    names = list(sets)
    start, patches = ablation_patches([sets[n] for n in names], zero_z, ctx.handle.arch.n_heads)
    run = ctx.read("icl", indices, [site_name("resid", start)], keep_states=True)
    clean = {m: v.cpu() for m, v in ctx.score(run.logits.float(), indices).items()}
    out = resume_variants(
        ctx.handle,
        batch,
        [start],
        lambda _, h_last, idx: h_last[None].expand(len(names), *h_last.shape),
        lambda logits, idx: {
            m: v
            for m, v in ctx.score(logits.float(), indices[idx]).items()
            if m in ABLATION_METRICS
        },
        batch_size=ctx.batch_size,
        states=run.states,
        patches=patches,
    )[start]
    return clean, {n: {m: out[m][v] for m in out} for v, n in enumerate(names)}


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


def run_head_mediation(config: HeadMediationConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """AIE of every head, function vectors, label-reading heads and ablations; tidy rows."""
    handle, inputs = ctx.handle, ctx.inputs
    corrupted = config.corrupted_kind
    if getattr(inputs, corrupted) is None:
        raise ValueError(
            f"head_mediation needs {corrupted!r} prompts (the corrupted runs, corrupted="
            f"{config.corrupted!r}); prepare the task with label_controls=({corrupted!r},) "
            "(a suite with this probe does so)"
        )
    n_heads = handle.arch.n_heads
    blocks = config.blocks(handle.n_layers)
    fit, ev_all = inputs.fit, inputs.eval
    ev = ev_all[: config.max_queries]
    base = {"task": inputs.task, "probe": KIND}

    def tick(what: str, n: int):
        return ctx.progress(f"{inputs.task}: head mediation {what}", n) if ctx.progress else None

    # 1. a_lh on the fit queries' clean ICL prompts; label attention read from the run's
    #    hopfield_heads table (else on the same prompts); zero-shot mean z
    icl_fit = inputs.icl.select(fit)
    attention = hopfield_label_attention(ctx.tables, inputs.task, blocks, n_heads)
    source = "hopfield_heads (icl label_mass)"
    with_patterns = attention is None
    a, patterns = head_means(
        handle,
        icl_fit,
        blocks,
        "head_out",
        ctx.batch_size,
        with_patterns,
        run=ctx.read("icl", fit, mean_sites(blocks, "head_out", with_patterns)),
    )
    if attention is None:
        source = f"head_mediation (fit queries, n={len(fit)})"
        attention = {
            b: label_attention(patterns[b], icl_fit, inputs.label_ids, config.label_cue_tokens)
            for b in blocks
        }
    zero_z, _ = head_means(
        handle,
        inputs.zero.select(fit),
        blocks,
        "z",
        ctx.batch_size,
        run=ctx.read("zero", fit, mean_sites(blocks, "z")),
    )

    # 2. AIE on the eval queries' corrupted prompts
    effects, _ = head_effects(
        handle,
        getattr(inputs, corrupted).select(ev),
        ev,
        blocks,
        a,
        ctx.gold_probability,
        ctx.batch_size,
        run=ctx.read(
            corrupted,
            ev,
            effect_sites(blocks),
            keep_states=True,
            progress=tick("AIE", len(ev)),
        ),
    )
    rows, head_rows = [], []
    for b in blocks:
        for h in range(n_heads):
            (row,) = ctx.rows(
                {"aie": effects[b][h]}, **base, part="aie", layer=b, head=h, set="all"
            )
            rows.append(row)
            head_rows.append(
                {
                    **base,
                    "layer": b,
                    "head": h,
                    "name": f"L{b}H{h}",
                    "aie": row["value"],
                    "aie_ci_low": row["ci_low"],
                    "aie_ci_high": row["ci_high"],
                    "label_attention": float(attention[b][h]),
                    "corrupted": config.corrupted,
                    "n": row["n"],
                }
            )
    heads = pd.DataFrame(head_rows)
    heads["rank_aie"] = heads["aie"].rank(ascending=False, method="first").astype(int)
    heads["rank_label"] = heads["label_attention"].rank(ascending=False, method="first")
    heads["rank_label"] = heads["rank_label"].astype(int)
    k = min(config.top_k, len(heads))
    pick = {
        "top_aie": heads.nsmallest(k, "rank_aie"),
        "top_label": heads.nsmallest(k, "rank_label"),
    }
    sets = {
        name: list(zip(f.layer.tolist(), f["head"].tolist(), strict=True))
        for name, f in pick.items()
    }

    # 3. function vectors (top AIE heads; top label-reading heads) in the zero-shot pass
    fv_layers = config.needed_layers(handle.n_layers)
    fvs = torch.stack([sum(a[b][h] for b, h in sets[name]) for name in ("top_aie", "top_label")])
    out = resume_variants(
        handle,
        inputs.zero.select(ev_all),
        fv_layers,
        lambda layer, h_last, idx: h_last[None] + fvs[:, None, :].to(h_last.dtype),
        lambda logits, idx: {
            m: v for m, v in ctx.score(logits.float(), ev_all[idx]).items() if m in FV_METRICS
        },
        batch_size=ctx.batch_size,
        progress=tick("function vector", len(ev_all)),
        states=ctx.zero_states(),
    )
    for layer in fv_layers:
        for v, name in enumerate(("top_aie", "top_label")):
            rows += ctx.rows(
                {m: val[v] for m, val in out[layer].items()},
                **base,
                part="function_vector",
                layer=layer,
                head=-1,
                set=name,
            )
    tv = ctx.tables.get(task_vectors.TABLE)
    if tv is not None:  # the task-vector curve of the same run, beside the FV curves
        tv = tv[(tv["task"] == inputs.task) & tv["metric"].isin(FV_METRICS)]
        for r in tv.itertuples():
            rows.append(
                {
                    **base,
                    "part": "task_vector",
                    "layer": int(r.layer),
                    "head": -1,
                    "set": "theta",
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
        rows += ctx.rows(
            {m: scores[m] for m in FV_METRICS}, **base, part="baseline", layer=-1, head=-1, set=name
        )

    # 4. ablations on the clean ICL prompts of the eval queries (zero-shot mean z)
    rng = np.random.default_rng(ctx.seed)
    all_heads = [(b, h) for b in blocks for h in range(n_heads)]
    for i in range(config.n_random):
        choice = rng.choice(len(all_heads), size=k, replace=False)
        sets[f"random_{i:02d}"] = [all_heads[j] for j in sorted(choice.tolist())]
    clean, ablated = ablate_sets(ctx, inputs.icl.select(ev), ev, sets, zero_z)
    drops: dict[str, dict[str, Tensor]] = {
        name: {f"{m}_drop": ablated[name][m] - clean[m] for m in ABLATION_METRICS} for name in sets
    }
    if config.n_random:
        randoms = [drops[n] for n in sets if n.startswith("random_")]
        drops["random"] = {m: torch.stack([d[m] for d in randoms]).mean(0) for m in randoms[0]}
    rows += ctx.rows(
        {m: clean[m] for m in ABLATION_METRICS},
        **base,
        part="ablation",
        layer=-1,
        head=-1,
        set="clean",
    )
    for name, per_query in drops.items():
        rows += ctx.rows(per_query, **base, part="ablation", layer=-1, head=-1, set=name)

    # 5. the join: rank correlation and top-set overlap
    rho, p = spearman_permutation(
        heads["aie"].to_numpy(),
        heads["label_attention"].to_numpy(),
        config.n_permutations,
        ctx.seed,
    )
    overlap, chance = top_overlap(
        heads["aie"].to_numpy(), heads["label_attention"].to_numpy(), config.overlap_k
    )
    join = {
        **base,
        "n_heads": len(heads),
        "label_attention_source": source,
        "corrupted": config.corrupted,
        "spearman_rho": rho,
        "spearman_p": p,
        "n_permutations": config.n_permutations,
        "overlap_k": min(config.overlap_k, len(heads)),
        "overlap": overlap,
        "overlap_chance": chance,
        "top_aie": ",".join(pick["top_aie"]["name"]),
        "top_label": ",".join(pick["top_label"]["name"]),
        "n": len(ev),
    }
    for part, where, prefix in (
        ("function_vector", "top_aie", "fv"),
        ("task_vector", "theta", "tv"),
    ):
        acc = [
            r
            for r in rows
            if r["part"] == part and r["set"] == where and r["metric"] == "vocab_correct"
        ]
        if acc:
            best = max(acc, key=lambda r: (r["value"], -r["layer"]))  # ties: the lowest layer
            join[f"{prefix}_best_layer"] = best["layer"]
            join[f"{prefix}_best_vocab_correct"] = best["value"]
    if config.n_random:
        for metric in ("label_mass_drop", "vocab_correct_drop"):
            per_draw = [float(drops[n][metric].mean()) for n in sets if n.startswith("random_")]
            join[f"random_{metric}_mean"] = float(np.mean(per_draw))
            join[f"random_{metric}_sd"] = (
                float(np.std(per_draw, ddof=1)) if len(per_draw) > 1 else 0.0
            )
            join[f"random_{metric}_q05"] = float(np.quantile(per_draw, 0.05))
            join[f"random_{metric}_q95"] = float(np.quantile(per_draw, 0.95))
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

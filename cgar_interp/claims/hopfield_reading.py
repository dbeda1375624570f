"""Claim 7: heads read the demonstrations like Hopfield retrieval.

It reads ``tables/hopfield_heads_queries.parquet`` (:mod:`cgar_interp.probes.hopfield_heads`):
per task, head, prompt kind, metric and query the value of that query, with the split the query
belongs to. Every aggregate and interval of a verdict row comes from these per-query values;
the tidy ``hopfield_heads`` table (per-head means) only names the tasks of a run that lacks them.

- 7a: per eval query, the share of heads in a retrieval regime (single-pattern or metastable,
  i.e. ``1 - frac_global``), the mean over every head read. The Hopfield reading of context
  gating is that context sharpens retrieval (docs/science.md#first-order-retrieval-bound:
  "context gating both separates and sparsifies"), so the share must rise under ICL. The
  global cut-off scales with the context (``k90 >= global_min_fraction * n_keys``) and ICL
  prompts are several times longer than zero-shot ones, so against zero-shot the prompt's
  length alone can move the share. The claim's test (key ``icl_vs_length_matched``) is
  therefore ICL against the length-matched control: the same demonstrations with random labels
  (Min et al., 2022; ``prompt_kind = "icl_random_labels"``), whose context has as many keys up to
  the label words' token counts. ICL against zero-shot stays beside it (key
  ``icl_vs_zero_shot``), labelled length-confounded, so that a reader sees both. Both are
  paired over the same eval queries; pooled over tasks as one stratum per task.
- 7b: the label-reading heads are the 10 heads with the largest mean ICL ``label_mass`` on the
  *fit* queries (``selected_on = "fit"``); on the eval queries, the share of their label-token
  attention that lands on the query's own class, ``sum_q sum_h gold_label_mass / sum_q sum_h
  label_mass``, against ``1/K``: the share under attention that ignores the class (every class
  has the same number of demonstrations). A ratio of means, resampled as one (a
  :class:`~cgar_interp.claims.stats.Samples` with a vectorised statistic). The note lists the
  heads and, labelled in-sample, the share of the heads the eval queries themselves would pick:
  ``gold_label_mass`` is part of ``label_mass``, so heads picked on the judged queries carry
  their own noise into the share. Pooled over tasks, the statistic is the mean over tasks of
  ``share - 1/K`` (``K`` differs between tasks) against 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .base import UNTESTABLE, Claim, ClaimDefinition
from .per_query import paired, paired_fields, query_table, select
from .stats import Samples
from .sweep import at_largest_k_noted, shots_note

REGIME_MARGIN = 0.05
GOLD_SHARE_MARGIN = 0.05
TOP_HEADS = 10
DESCRIBE_BOOT = 1000  # resamples of a row's descriptive intervals (the verdict reads its own)

TABLE = "hopfield_heads"
QUERIES = "hopfield_heads_queries"
ICL, ZERO, CONTROL = "icl", "zero_shot", "icl_random_labels"
KEY_MATCHED, KEY_ZERO, KEY_GOLD = "icl_vs_length_matched", "icl_vs_zero_shot", "own_class_share"

TITLE = "Heads read the demonstrations like Hopfield retrieval"
CLAIM_7A = (
    f"{TITLE}: under context more (head, query) pairs retrieve (single-pattern or metastable) "
    "rather than average globally"
)
CLAIM_7B = (
    f"{TITLE}: label-reading heads attend to the demonstrations of the query's own class more "
    "than to the others"
)


def n_classes(task: str, manifest: dict) -> int | None:
    """``K`` of a task from the manifest's label record (``None`` when it is not there).

    In a k-shot sweep the manifest keys tasks as ``"<task>/shots-<k>"``; any of them will do.
    """
    tasks = manifest.get("tasks") or {}
    entries = [tasks[task]] if task in tasks else []
    entries += [v for key, v in tasks.items() if str(key).startswith(f"{task}/")]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        labels = entry.get("labels") or {}
        for field in ("first_ids", "words"):
            if labels.get(field):
                return len(labels[field])
        classes = ((entry.get("prompts") or {}).get("task") or {}).get("classes")
        if classes:
            return len(classes)
    return None


def head_name(layer: int, head: int) -> str:
    """``L17H3``: block 17, query head 3."""
    return f"L{int(layer)}H{int(head)}"


# --------------------------------------------------------------------------------------------
# per-query quantities


def retrieval_share(frame: pd.DataFrame, task: str, kind: str, split: str = "eval") -> pd.Series:
    """Per query (index, sorted): the mean over heads of ``1 - frac_global`` of prompt
    ``kind``: the share of the heads read that retrieve (single-pattern or metastable)."""
    sel = select(frame, split, task=task, prompt_kind=kind, metric="frac_global")
    if sel.empty:
        return pd.Series(dtype=float)
    return 1 - sel.groupby("query")["value"].mean().sort_index()


def regime_shares(frame: pd.DataFrame, task: str, kind: str) -> dict[str, float]:
    """Each regime's share of the (head, eval query) pairs of prompt ``kind``."""
    out = {}
    for regime in ("single", "metastable", "global"):
        sel = select(frame, "eval", task=task, prompt_kind=kind, metric=f"frac_{regime}")
        if len(sel):
            out[regime] = float(sel["value"].mean())
    return out


def mean_keys(frame: pd.DataFrame, task: str, kind: str) -> pd.Series:
    """Per eval query, the context length (``n_keys``) of prompt ``kind``."""
    sel = select(frame, "eval", task=task, prompt_kind=kind, metric="n_keys")
    return sel.groupby("query")["value"].first().sort_index()


def label_mass_by_head(frame: pd.DataFrame, task: str, split: str) -> pd.DataFrame:
    """Mean ICL ``label_mass`` per head over the queries of ``split``: columns layer, head,
    value (and n, the queries)."""
    sel = select(frame, split, task=task, prompt_kind=ICL, metric="label_mass")
    if sel.empty:
        return pd.DataFrame(columns=["layer", "head", "value", "n"])
    return sel.groupby(["layer", "head"], as_index=False).agg(
        value=("value", "mean"), n=("query", "nunique")
    )


def label_reading_heads(
    frame: pd.DataFrame, task: str, split: str = "fit", top: int = TOP_HEADS
) -> pd.DataFrame:
    """The ``top`` heads by mean ICL ``label_mass`` on the ``split`` queries (ties by layer,
    head): columns layer, head, value."""
    mass = label_mass_by_head(frame, task, split).sort_values(
        ["value", "layer", "head"], ascending=[False, True, True], kind="mergesort"
    )
    return mass.head(top).reset_index(drop=True)


def head_sums(
    frame: pd.DataFrame, task: str, heads: pd.DataFrame, split: str = "eval"
) -> tuple[np.ndarray, np.ndarray]:
    """``(gold [n], label [n])``: per query of ``split``, ``gold_label_mass`` and ``label_mass``
    of the ICL prompt summed over ``heads``, on the queries both have, in query order."""
    sel = select(frame, split, task=task, prompt_kind=ICL)
    sel = sel[sel.metric.isin(["gold_label_mass", "label_mass"])]
    sel = sel.merge(heads[["layer", "head"]], on=["layer", "head"])
    sums = sel.groupby(["metric", "query"])["value"].sum()
    if sums.empty:
        return np.zeros(0), np.zeros(0)
    gold = sums.get("gold_label_mass", pd.Series(dtype=float))
    label = sums.get("label_mass", pd.Series(dtype=float))
    return paired(gold.sort_index(), label.sort_index())


def own_class_share(gold: np.ndarray, label: np.ndarray) -> float:
    """``sum gold / sum label`` (nan without label mass)."""
    total = float(np.sum(label))
    return float(np.sum(gold)) / total if total > 0 else math.nan


def share_samples(
    gold: Sequence[np.ndarray], label: Sequence[np.ndarray], chance: Sequence[float]
) -> Samples:
    """The own-class share as a resampled ratio of means, one stratum per task.

    One stratum: value ``mean(gold) / mean(label)`` of the resampled queries, control ``1/K``
    (``chance[0]``). Several: value the mean over strata of ``share - chance``, control 0.
    """
    gold = tuple(np.asarray(g, float) for g in gold)
    label = tuple(np.asarray(m, float) for m in label)
    pooled = len(gold) > 1

    def statistic(indices):
        shares = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for g, m, c, i in zip(gold, label, chance, indices, strict=True):
                ratio = g[i].mean(-1) / m[i].mean(-1)
                shares.append(ratio - c if pooled else ratio)
        value = np.mean(shares, 0)
        return value, np.full_like(value, 0.0 if pooled else chance[0])

    return Samples(gold, None, statistic)


def describe(samples: Samples, constant: float) -> tuple[float, float, float, float, float, float]:
    """Value and control of ``samples`` with descriptive 95% percentile intervals (a bootstrap
    of :data:`DESCRIBE_BOOT` resamples, seed 0; the verdict reads its own paired one)."""
    value, control = samples.point(constant)
    boot = samples.bootstrap(constant, DESCRIBE_BOOT, seed=0)
    boot = boot[np.isfinite(boot).all(1)]
    if not len(boot):
        return value, math.nan, math.nan, control, math.nan, math.nan
    lo, hi = np.quantile(boot, [0.025, 0.975], axis=0)
    c_lo, c_hi = (control, control) if samples.control is None else (lo[1], hi[1])
    return value, float(lo[0]), float(hi[0]), control, float(c_lo), float(c_hi)


def _untestable(claim_id, claim, task, key, test, reads, why, k) -> Claim:
    return Claim(
        claim_id=claim_id,
        claim=claim,
        test=test,
        reads=reads,
        task=task,
        kind="untestable",
        verdict=UNTESTABLE,
        key=key,
        figure=f"hopfield_heads-{task}" if task != "all" else "",
        note=why + shots_note(k),
    )


# --------------------------------------------------------------------------------------------
# 7a


def _fmt_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.3f}" for name, v in shares.items()) or "no rows"


def _regime_rows(frame: pd.DataFrame, task: str, k: int | None) -> tuple[list[Claim], dict]:
    """7a's two rows of one task, and the per-query arrays for pooling (key -> (a, b))."""
    icl = retrieval_share(frame, task, ICL)
    sel = select(frame, "eval", task=task, prompt_kind=ICL, metric="frac_global")
    n_heads = len(sel[["layer", "head"]].drop_duplicates())
    n_blocks = sel.layer.nunique()
    keys = {kind: mean_keys(frame, task, kind) for kind in (ICL, CONTROL, ZERO)}
    shares = {kind: regime_shares(frame, task, kind) for kind in (ICL, CONTROL, ZERO)}
    lengths = ", ".join(
        f"{name} {keys[kind].mean():.1f}"
        for kind, name in ((ICL, "ICL"), (CONTROL, "random-label ICL"), (ZERO, "zero-shot"))
        if len(keys[kind])
    )
    common = (
        f"share of heads in the single-pattern or metastable regime (1 - frac_global) per eval "
        f"query, mean over the {n_heads} heads of {n_blocks} blocks"
    )
    reads = (
        f"hopfield_heads_queries: task {task}, split eval, metric frac_global (and frac_single, "
        "frac_metastable, n_keys), every layer and head, prompt_kind icl and "
    )
    note_shares = (
        f"Regime shares over (head, query) pairs: ICL {_fmt_shares(shares[ICL])}; random-label "
        f"ICL {_fmt_shares(shares[CONTROL])}; zero-shot {_fmt_shares(shares[ZERO])}. Mean keys "
        f"per prompt: {lengths}. Many single-pattern heads retrieve only the attention sink "
        "(sink_mass)."
    )
    rows, arrays = [], {}
    control = retrieval_share(frame, task, CONTROL)
    if len(icl) and len(control):
        a, b = paired(icl, control)
        gap = paired(keys[ICL], keys[CONTROL])
        gap_note = (
            f" Per query, |n_keys(ICL) - n_keys(random labels)| <= "
            f"{np.max(np.abs(gap[0] - gap[1])):.0f} keys."
            if len(gap[0])
            else ""
        )
        arrays[KEY_MATCHED] = (a, b)
        rows.append(
            Claim(
                claim_id="7a",
                claim=CLAIM_7A,
                test=f"the claim's test: {common}, ICL against the length-matched control (the "
                "same demonstrations with random labels, Min et al. 2022: as many keys, so the "
                "length-scaled global cut-off compares like with like), paired over the same "
                f"eval queries; supported means the share rises under ICL; margin "
                f"{REGIME_MARGIN:g}",
                reads=reads + "icl_random_labels",
                task=task,
                **paired_fields(a, b),
                control="random-label ICL (length-matched) share of the same heads and queries",
                kind="difference",
                margin=REGIME_MARGIN,
                selected_on="pre-specified",
                key=KEY_MATCHED,
                figure=f"hopfield_heads-{task}",
                note=note_shares + gap_note + shots_note(k),
            )
        )
    else:
        rows.append(
            _untestable(
                "7a",
                CLAIM_7A,
                task,
                KEY_MATCHED,
                f"the claim's test: {common}, ICL against random-label ICL (length-matched)",
                reads + "icl_random_labels",
                "The per-query table has no "
                + ("ICL" if not len(icl) else "random-label ICL (length-matched)")
                + " rows for this task: rerun hopfield_heads with length_control = true (it "
                "reads the task's icl_random prompts). ICL against zero-shot alone is "
                "length-confounded (row icl_vs_zero_shot).",
                k,
            )
        )
    zero = retrieval_share(frame, task, ZERO)
    if len(icl) and len(zero):
        a, b = paired(icl, zero)
        arrays[KEY_ZERO] = (a, b)
        rows.append(
            Claim(
                claim_id="7a",
                claim=CLAIM_7A,
                test=f"length-confounded, beside the claim's test (icl_vs_length_matched): "
                f"{common}, ICL against zero-shot, paired over the same eval queries; margin "
                f"{REGIME_MARGIN:g}",
                reads=reads + "zero_shot",
                task=task,
                **paired_fields(a, b),
                control="zero-shot share of the same heads and queries (shorter prompts)",
                kind="difference",
                margin=REGIME_MARGIN,
                selected_on="pre-specified",
                key=KEY_ZERO,
                figure=f"hopfield_heads-{task}",
                note="LENGTH-CONFOUNDED: the global cut-off is k90 >= global_min_fraction "
                "n_keys and the ICL prompt is longer than the zero-shot one, so prompt length "
                "alone can move this share; the length-matched row (icl_vs_length_matched) is "
                "the claim's test. " + note_shares + shots_note(k),
            )
        )
    return rows, arrays


def _pooled_regime(key: str, first: Claim, arrays: list[tuple], tasks, k) -> Claim:
    samples = Samples(tuple(a for a, _ in arrays), tuple(b for _, b in arrays))
    v, lo, hi, c, c_lo, c_hi = describe(samples, math.nan)
    role = "the claim's test" if key == KEY_MATCHED else "length-confounded"
    return Claim(
        claim_id="7a",
        claim=CLAIM_7A,
        test=f"{role}: mean over the {len(tasks)} tasks of each task's mean per-query share, value and "
        "control; paired bootstrap with the queries of each task resampled within it (one "
        "stratum per task); each task's row gives its test",
        reads=first.reads.replace(f"task {first.task}", f"tasks {', '.join(tasks)}"),
        task="all",
        value=v,
        ci_low=lo,
        ci_high=hi,
        control=f"mean over tasks of: {first.control}",
        control_value=c,
        control_ci_low=c_lo,
        control_ci_high=c_hi,
        kind="difference",
        margin=first.margin,
        selected_on="pre-specified",
        key=key,
        samples=samples,
        n=samples.n,
        note=("LENGTH-CONFOUNDED (see each task's row). " if key == KEY_ZERO else "")
        + "Pooled over tasks: see each task's row for its figure and details."
        + shots_note(k),
    )


# --------------------------------------------------------------------------------------------
# 7b


def _heads_note(heads: pd.DataFrame, frame: pd.DataFrame, task: str) -> str:
    parts = []
    for _, h in heads.iterrows():
        one = pd.DataFrame({"layer": [h["layer"]], "head": [h["head"]]})
        share = own_class_share(*head_sums(frame, task, one))
        parts.append(
            f"{head_name(h['layer'], h['head'])} (fit label mass {h['value']:.3f}, eval own "
            f"class {share:.2f})"
        )
    return ", ".join(parts) or "none"


def _in_sample_note(frame: pd.DataFrame, task: str, chosen: pd.DataFrame) -> str:
    heads = label_reading_heads(frame, task, split="eval")
    if heads.empty:
        return ""
    share = own_class_share(*head_sums(frame, task, heads))
    same = len(heads.merge(chosen[["layer", "head"]], on=["layer", "head"]))
    return (
        f" In-sample (NOT the test: heads chosen on the eval queries and judged on them): the "
        f"top {len(heads)} heads by eval label mass give own-class share {share:.3f}; "
        f"{same} of them are among the fit-chosen heads."
    )


def _gold_row(frame: pd.DataFrame, task: str, manifest: dict, k: int | None):
    """7b of one task, and (gold, label, 1/K) for pooling (None when untestable)."""
    n_k = n_classes(task, manifest)
    chance = 1 / n_k if n_k else math.nan
    heads = label_reading_heads(frame, task, split="fit")
    n_fit = int(label_mass_by_head(frame, task, "fit")["n"].max()) if len(heads) else 0
    test = (
        f"label-reading heads = the {TOP_HEADS} heads with the largest mean ICL label_mass on the "
        "fit queries (chosen by label mass, on other queries than those judged); on the eval "
        "queries, share = sum gold_label_mass / sum label_mass over those heads and queries (a "
        f"ratio of means, resampled as one), against 1/K (K = {n_k}: the share when a head "
        "ignores the class, every class having as many demonstrations); supported means above "
        f"1/K; margin {GOLD_SHARE_MARGIN:g}"
    )
    reads = (
        f"hopfield_heads_queries: task {task}, prompt_kind icl, metric label_mass (split fit: "
        "the choice) and label_mass, gold_label_mass (split eval: the test) of the listed heads"
    )
    if heads.empty:
        why = (
            "The per-query table has no fit-split ICL label masses for this task (select_queries "
            "= 0, or an older run): choosing the heads on the eval queries would judge them on "
            "the queries that chose them."
            + _in_sample_note(frame, task, pd.DataFrame(columns=["layer", "head"]))
        )
        return _untestable("7b", CLAIM_7B, task, KEY_GOLD, test, reads, why, k), None
    gold, label = head_sums(frame, task, heads)
    if not len(gold) or not n_k:
        why = (
            "K is not in the manifest: no verdict."
            if len(gold)
            else "No eval-split ICL label masses of the chosen heads."
        )
        return _untestable("7b", CLAIM_7B, task, KEY_GOLD, test, reads, why, k), None
    samples = share_samples([gold], [label], [chance])
    v, lo, hi, c, _, _ = describe(samples, chance)
    row = Claim(
        claim_id="7b",
        claim=CLAIM_7B,
        test=test,
        reads=reads,
        task=task,
        value=v,
        ci_low=lo,
        ci_high=hi,
        control="1/K (attention blind to the class)",
        control_value=chance,
        control_ci_low=chance,
        control_ci_high=chance,
        kind="difference",
        margin=GOLD_SHARE_MARGIN,
        selected_on="fit",
        key=KEY_GOLD,
        samples=samples,
        n=len(gold),
        figure=f"hopfield_heads-{task}",
        note=f"Heads chosen on {n_fit} fit queries: {_heads_note(heads, frame, task)}."
        + _in_sample_note(frame, task, heads)
        + shots_note(k),
    )
    return row, (gold, label, chance)


def _pooled_gold(first: Claim, parts: list[tuple], tasks, k) -> Claim:
    samples = share_samples([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
    v, lo, hi, c, _, _ = describe(samples, 0.0)
    chances = ", ".join(f"{t} {p[2]:.3g}" for t, p in zip(tasks, parts, strict=True))
    return Claim(
        claim_id="7b",
        claim=CLAIM_7B,
        test=f"mean over the {len(tasks)} tasks of (own-class share - 1/K), each task's heads "
        "chosen on its fit queries and its share read on its eval queries, against 0 (K "
        "differs between tasks, so the excess over chance is pooled); the queries of each task "
        f"resampled within it; margin {GOLD_SHARE_MARGIN:g}",
        reads=first.reads.replace(f"task {first.task}", f"tasks {', '.join(tasks)}"),
        task="all",
        value=v,
        ci_low=lo,
        ci_high=hi,
        control="0 (each task's share at its 1/K)",
        control_value=0.0,
        control_ci_low=0.0,
        control_ci_high=0.0,
        kind="difference",
        margin=GOLD_SHARE_MARGIN,
        selected_on="fit",
        key=KEY_GOLD,
        samples=samples,
        n=samples.n,
        note=f"Pooled over tasks: the value is the mean excess of the own-class share over 1/K "
        f"({chances}); see each task's row for its heads." + shots_note(k),
    )


# --------------------------------------------------------------------------------------------
# the claim


def claim_heads(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """7a (retrieval regimes: ICL vs length-matched random labels, and vs zero-shot) and 7b
    (the own-class share of the fit-chosen label-reading heads vs 1/K)."""
    frame = query_table(tables, "hopfield_heads")
    tidy = tables.get(TABLE)
    if frame is None:
        if tidy is None or tidy.empty:
            return []
        _, k = at_largest_k_noted(tidy)
        why = (
            "The run has no per-query table hopfield_heads_queries (an older run): the verdict "
            "resamples per-query values; rerun the hopfield_heads probe."
        )
        return [
            _untestable(cid, claim, t, key, "needs per-query values", TABLE, why, k)
            for t in tidy.task.unique()
            for cid, claim, key in (("7a", CLAIM_7A, KEY_MATCHED), ("7b", CLAIM_7B, KEY_GOLD))
        ]
    _, k = at_largest_k_noted(tidy if tidy is not None and not tidy.empty else frame)
    tasks = list(frame.task.unique())
    rows: list[Claim] = []
    pooled_regime: dict[str, list] = {KEY_MATCHED: [], KEY_ZERO: []}
    firsts: dict[str, Claim] = {}
    for task in tasks:
        task_rows, arrays = _regime_rows(frame, task, k)
        rows.extend(task_rows)
        for r in task_rows:
            firsts.setdefault(r.key, r)
        for key, pair in arrays.items():
            pooled_regime[key].append(pair)
    if len(tasks) > 1:
        for key in (KEY_MATCHED, KEY_ZERO):
            if len(pooled_regime[key]) == len(tasks):
                rows.append(_pooled_regime(key, firsts[key], pooled_regime[key], tasks, k))
    gold_parts = []
    gold_rows = []
    for task in tasks:
        row, part = _gold_row(frame, task, manifest, k)
        gold_rows.append(row)
        gold_parts.append(part)
    rows.extend(gold_rows)
    if len(tasks) > 1 and all(p is not None for p in gold_parts):
        rows.append(_pooled_gold(gold_rows[0], gold_parts, tasks, k))
    return rows


HOPFIELD_READING_CLAIM = ClaimDefinition("7", TITLE, (TABLE, QUERIES), claim_heads)

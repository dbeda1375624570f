"""Claim 7: heads read the demonstrations like Hopfield retrieval.

It reads ``tables/hopfield_heads.parquet`` (:mod:`cgar_interp.probes.hopfield_heads`),
per (task, layer, head, prompt kind) the mean over queries of each metric with a bootstrap
interval over queries.

- 7a: the share of (head, query) pairs in a retrieval regime (single-pattern or metastable,
  i.e. ``1 - frac_global``), averaged over every head read, under ICL against zero-shot. The
  Hopfield reading of context gating is that context sharpens retrieval
  (docs/science.md#first-order-retrieval-bound:
  "context gating both separates and sparsifies"), so the share must rise.
- 7b: for the label-reading heads (the 10 heads with the largest ICL ``label_mass``), the
  share of their label-token attention that lands on the query's own class,
  ``sum gold_label_mass / sum label_mass`` over those heads, against ``1/K``: the share under
  attention that ignores the class (every class has the same number of demonstrations).

Intervals of averages over heads: the heads share their queries, so their errors are
correlated and unknown in covariance; the standard error of a sum is at most the sum of the
standard errors (triangle inequality), which is used throughout: conservative. Tasks use
different queries and are pooled (task ``"all"``) as independent samples.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .base import Z95, Claim, ClaimDefinition, se_from_ci
from .sweep import at_largest_k_noted, shots_note

REGIME_MARGIN = 0.05
GOLD_SHARE_MARGIN = 0.05
TOP_HEADS = 10

TITLE = "Heads read the demonstrations like Hopfield retrieval"


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


def _pooled(rows: list[Claim]) -> tuple[float, float, float, float, float, float]:
    """Mean over tasks of value and control, with independent-sample intervals."""
    t = len(rows)
    value = float(np.mean([r.value for r in rows]))
    control = float(np.mean([r.control_value for r in rows]))
    se_v = math.sqrt(sum(se_from_ci(r.ci_low, r.ci_high) ** 2 for r in rows)) / t
    se_c = math.sqrt(sum(se_from_ci(r.control_ci_low, r.control_ci_high) ** 2 for r in rows)) / t
    return (
        value,
        value - Z95 * se_v,
        value + Z95 * se_v,
        control,
        control - Z95 * se_c,
        control + Z95 * se_c,
    )


def _se(rows: pd.DataFrame) -> pd.Series:
    """Per-row standard errors of the 95% intervals (:func:`~.base.se_from_ci`)."""
    return se_from_ci(rows.ci_low, rows.ci_high)


def _retrieval_share(part: pd.DataFrame) -> tuple[float, float, float, dict[str, float]]:
    """Mean over heads of ``1 - frac_global`` with a conservative interval; the three shares."""
    glob = part[part.metric == "frac_global"]
    if glob.empty:
        return math.nan, math.nan, math.nan, {}
    value = float(1 - glob.value.mean())
    se = float(_se(glob).mean())
    shares = {
        m.removeprefix("frac_"): float(part.loc[part.metric == m, "value"].mean())
        for m in ("frac_single", "frac_metastable", "frac_global")
    }
    return value, value - Z95 * se, value + Z95 * se, shares


def _fmt_shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{name} {v:.3f}" for name, v in shares.items()) or "no rows"


def _regime_row(data: pd.DataFrame, task: str, k: int | None) -> Claim:
    part = data[data.task == task]
    icl = part[part.prompt_kind == "icl"]
    zero = part[part.prompt_kind == "zero_shot"]
    v, lo, hi, s_icl = _retrieval_share(icl)
    c, c_lo, c_hi, s_zero = _retrieval_share(zero)
    n_heads = len(icl[icl.metric == "frac_global"][["layer", "head"]].drop_duplicates())
    n_blocks = icl.layer.nunique()
    keys = {
        kind: float(p.loc[p.metric == "n_keys", "value"].mean())
        for kind, p in (("icl", icl), ("zero", zero))
    }
    n_q = int(icl.n.max()) if len(icl) else 0
    return Claim(
        claim_id="7a",
        claim=f"{TITLE}: under context more (head, query) pairs retrieve (single-pattern or "
        "metastable) rather than average globally",
        test=f"share of (head, query) pairs in the single-pattern or metastable regime "
        f"(1 - frac_global), mean over the {n_heads} heads of {n_blocks} blocks, ICL against "
        "zero-shot on the same queries; supported means the share rises under ICL; margin "
        f"{REGIME_MARGIN:g}. Per-head intervals averaged (se of a mean <= mean of the se's: "
        "conservative)",
        reads=f"hopfield_heads: task {task}, metric frac_global (and frac_single, "
        "frac_metastable, n_keys), prompt_kind icl and zero_shot, every layer and head",
        task=task,
        value=v,
        ci_low=lo,
        ci_high=hi,
        control="zero-shot share of the same heads and queries",
        control_value=c,
        control_ci_low=c_lo,
        control_ci_high=c_hi,
        kind="difference",
        margin=REGIME_MARGIN,
        figure=f"hopfield_heads-{task}",
        note=f"Regime shares over (head, query) pairs, n = {n_q} queries: ICL "
        f"{_fmt_shares(s_icl)}; zero-shot {_fmt_shares(s_zero)}. The global cut-off is "
        f"k90 >= 0.5 n_keys and ICL prompts are longer (mean {keys['icl']:.0f} keys vs "
        f"{keys['zero']:.0f}), so part of a rise can be prompt length rather than retrieval; "
        "and many single-pattern heads retrieve only the attention sink (sink_mass)."
        + shots_note(k),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def head_name(layer: int, head: int) -> str:
    """``L17H3``: block 17, query head 3."""
    return f"L{int(layer)}H{int(head)}"


def label_reading_heads(icl: pd.DataFrame, top: int = TOP_HEADS) -> pd.DataFrame:
    """The ``top`` heads by mean ICL ``label_mass`` (ties by layer, head): one task's rows."""
    mass = icl[icl.metric == "label_mass"].sort_values(
        ["value", "layer", "head"], ascending=[False, True, True], kind="mergesort"
    )
    return mass.head(top)


def gold_share(icl: pd.DataFrame, heads: pd.DataFrame) -> tuple[float, float, float]:
    """``sum gold_label_mass / sum label_mass`` over ``heads``, with a conservative interval.

    Linearised ratio ``R = G / M``: ``se(R) ~ se(G - R M) / M <= (se(G) + R se(M)) / M`` for any
    correlation of ``G`` and ``M``, and ``se`` of a sum over heads <= the sum of their ``se``.
    """
    keys = heads[["layer", "head"]]
    gold = icl[icl.metric == "gold_label_mass"].merge(keys, on=["layer", "head"])
    mass = icl[icl.metric == "label_mass"].merge(keys, on=["layer", "head"])
    g, m = float(gold.value.sum()), float(mass.value.sum())
    if not len(gold) or not len(mass) or m <= 0:
        return math.nan, math.nan, math.nan
    r = g / m
    se_g = float(_se(gold).sum())
    se_m = float(_se(mass).sum())
    se = (se_g + r * se_m) / m
    return r, r - Z95 * se, r + Z95 * se


def _gold_row(data: pd.DataFrame, task: str, manifest: dict, k: int | None) -> Claim:
    icl = data[(data.task == task) & (data.prompt_kind == "icl")]
    heads = label_reading_heads(icl)
    r, lo, hi = gold_share(icl, heads)
    n_k = n_classes(task, manifest)
    chance = 1 / n_k if n_k else math.nan
    gold = icl[icl.metric == "gold_label_mass"].set_index(["layer", "head"]).value
    listed = ", ".join(
        f"{head_name(h['layer'], h['head'])} (label mass {h['value']:.3f}, own class "
        f"{_ratio(gold.get((h['layer'], h['head']), math.nan), h['value']):.2f})"
        for _, h in heads.iterrows()
    )
    return Claim(
        claim_id="7b",
        claim=f"{TITLE}: label-reading heads attend to the demonstrations of the query's own "
        "class more than to the others",
        test=f"label-reading heads = the {len(heads)} heads with the largest mean ICL label_mass "
        "(chosen by label mass, not by the share tested); share = sum gold_label_mass / sum "
        f"label_mass over them, against 1/K (K = {n_k}: the share when a head ignores the class, "
        "every class having as many demonstrations); supported means above 1/K; margin "
        f"{GOLD_SHARE_MARGIN:g}. Interval: linearised ratio, se <= (se(sum gold) + share * "
        "se(sum label)) / sum label, per-head se's summed (any correlation: conservative)",
        reads=f"hopfield_heads: task {task}, prompt_kind icl, metrics label_mass and "
        "gold_label_mass of the listed heads",
        task=task,
        value=r,
        ci_low=lo,
        ci_high=hi,
        control="1/K (attention blind to the class)",
        control_value=chance,
        control_ci_low=chance,
        control_ci_high=chance,
        kind="difference",
        margin=GOLD_SHARE_MARGIN,
        figure=f"hopfield_heads-{task}",
        note=f"Heads used: {listed or 'none'}. The table holds per-head means over queries, "
        "not per-query shares, so the interval is a bound valid for any correlation between "
        "heads and between own-class and all-label mass: wide by construction."
        + ("" if n_k else " K is not in the manifest: no verdict.")
        + shots_note(k),
    )


def claim_heads(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """7a (retrieval regimes under ICL vs zero-shot) and 7b (own-class share vs 1/K)."""
    table = tables.get("hopfield_heads")
    if table is None or table.empty:
        return []
    data, k = at_largest_k_noted(table)
    tasks = list(data.task.unique())
    regime = [_regime_row(data, t, k) for t in tasks]
    gold = [_gold_row(data, t, manifest, k) for t in tasks]
    rows: list[Claim] = []
    for group in (regime, gold):
        rows.extend(group)
        ok = [r for r in group if math.isfinite(r.value) and math.isfinite(r.control_value)]
        if len(tasks) > 1 and len(ok) == len(group):
            v, lo, hi, c, c_lo, c_hi = _pooled(group)
            first = group[0]
            rows.append(
                Claim(
                    claim_id=first.claim_id,
                    claim=first.claim,
                    test=f"mean over the {len(tasks)} tasks of each task's value and control "
                    "(tasks as independent samples); each task's row gives its test",
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
                    figure="",
                    note="Pooled over tasks: see each task's row for its figure and details."
                    + shots_note(k),
                )
            )
    return rows


HOPFIELD_READING_CLAIM = ClaimDefinition("7", TITLE, ("hopfield_heads",), claim_heads)

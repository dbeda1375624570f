"""Claim 8: the label-reading heads are causally necessary, from the head-mediation ablation.

Reads the per-query ablation values of ``head_mediation_queries`` (``part = "ablation"``, eval
queries). The tested sets were chosen on the *fit* queries (``top_label``: the ``top_k`` heads
by ICL label attention; ``top_aie``: by AIE on the corrupted prompts) and are judged on the
eval queries. Per task, per ablation (``z`` replaced by its zero-shot mean, ``zero_mean``, or
by its ICL mean, ``icl_mean``) and per metric (label mass, full-vocab accuracy), one row: the
value is the drop (minus the change, ablated - clean) per eval query when the tested set is
ablated; the control is, on the same queries, the mean drop over the ``n_random`` random sets
drawn with the tested set's layer histogram and outside both tested sets. The ledger decides
it by the paired bootstrap over queries. The note gives where the tested set's mean drop lies
among the random draws' (percentile, and the permutation-style ``p = (1 + #{draws with a drop
>= the tested}) / (1 + n_draws)``), read from the same per-query values.

Without that probe in the run the row is *pending*: attention on label tokens alone is
correlation. A run whose head-mediation tables predate fit-query selection and matched
controls (no per-query ablation values), or where no layer-matched random set exists, gives
*untestable* rows that say why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .base import PENDING, UNTESTABLE, Claim, ClaimDefinition
from .per_query import paired, paired_fields, query_table, select, values

TITLE = "The label-reading heads carry the task (causally necessary)"
PROBE = "head_mediation"
MARGIN = 0.05
METRICS = (
    ("label_mass_drop", "label_mass", "label mass"),
    ("vocab_correct_drop", "accuracy", "accuracy"),
)
ABLATIONS = {
    "zero_mean": "the zero-shot mean z (fit queries)",
    "icl_mean": "the ICL mean z (fit queries)",
}
SETS = {
    "top_label": "the top label-reading heads (ICL label attention, fit queries)",
    "top_aie": "the top heads by AIE (corrupted prompts, fit queries)",
}


def draw_position(tested: float, draws: np.ndarray) -> tuple[float, float]:
    """``(percentile, p)`` of a tested set's mean drop among the random draws' mean drops:
    the share (%) of draws with a smaller drop, and ``(1 + #{draws with drop >= tested}) /
    (1 + n_draws)``.

    >>> percentile, p = draw_position(0.5, np.array([0.1, 0.2, 0.6]))
    >>> round(percentile, 4), p
    (66.6667, 0.5)
    """
    draws = np.asarray(draws, float)
    return (
        100.0 * float((draws < tested).mean()),
        (1 + int((draws >= tested).sum())) / (1 + draws.size),
    )


def _row(task: str, key: str, **fields) -> Claim:
    return Claim(claim_id="8", claim=TITLE, task=task, key=key, figure=f"{PROBE}-{task}", **fields)


def _pending() -> Claim:
    return _row(
        "all",
        "pending",
        test="mean-ablate the top-k label-reading heads (chosen on fit queries); drop in ICL "
        "label mass and accuracy against layer-matched random heads",
        reads="head_mediation_queries (ablation rows)",
        kind="pending",
        verdict=PENDING,
        rule="no verdict without the causal test",
        note="waits for the head_mediation probe, which this run does not have; attention on "
        "label tokens alone is correlation",
    )


def _untestable(task: str, key: str, test: str, reads: str, why: str) -> Claim:
    return _row(
        task,
        key,
        test=test,
        reads=reads,
        kind="untestable",
        verdict=UNTESTABLE,
        rule="no verdict: " + why,
        note=why,
    )


def task_rows(frame: pd.DataFrame, task: str) -> list[Claim]:
    """The rows of one task from its per-query ablation values ``frame``."""
    rows = []
    for set_name, set_text in SETS.items():
        for ablation, ablation_text in ABLATIONS.items():
            for metric, short, name in METRICS:
                key = (
                    f"{ablation}/{short}"
                    if set_name == "top_label"
                    else f"{set_name}/{ablation}/{short}"
                )
                test = (
                    f"drop in ICL {name} per eval query when {set_text} are ablated "
                    f"(z := {ablation_text}, last token), paired with the mean drop of "
                    "layer-matched random sets on the same queries"
                )
                reads = (
                    f"{PROBE}_queries: part=ablation, split=eval, ablation={ablation}, "
                    f"metric={metric}, set in ({set_name}, random_{set_name})"
                )
                keys = {"task": task, "part": "ablation", "ablation": ablation, "metric": metric}
                mine = values(frame, "eval", set=set_name, draw=-1, **keys)
                rand = values(frame, "eval", set=f"random_{set_name}", draw=-1, **keys)
                if mine.empty:
                    continue
                if rand.empty:
                    rows.append(
                        _untestable(
                            task,
                            key,
                            test,
                            reads,
                            "no layer-matched random set exists (some block of the tested set "
                            "has too few heads outside the tested set): no control that could "
                            "fail",
                        )
                    )
                    continue
                change, control_change = paired(mine, rand)
                drop, control_drop = -change, -control_change  # a drop: larger = more necessary
                both = mine.index.intersection(rand.index)
                draws = select(frame, "eval", set=f"random_{set_name}", **keys)
                draws = draws[(draws["draw"] >= 0) & draws["query"].isin(both)]
                per_draw = -draws.groupby("draw")["value"].mean().to_numpy(dtype=float)
                percentile, p_draws = draw_position(float(drop.mean()), per_draw)
                rows.append(
                    _row(
                        task,
                        key,
                        test=test,
                        reads=reads,
                        **paired_fields(drop, control_drop),
                        control=f"the mean drop over {per_draw.size} random head sets with the "
                        "tested set's layer histogram, outside both tested sets (same queries)",
                        margin=MARGIN,
                        selected_on="fit",
                        note=f"among the {per_draw.size} random draws the tested set's mean drop "
                        f"is at the {percentile:.0f}th percentile, p = {p_draws:.3g} "
                        "((1 + #draws with a drop >= it) / (1 + draws)); heads chosen on the fit "
                        "queries, judged on the eval queries"
                        + (
                            "; necessity only: sufficiency is the function vector of those heads "
                            "(head_mediation part=function_vector)"
                            if set_name == "top_label"
                            else ""
                        ),
                    )
                )
    return rows


def heads_are_necessary(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 8: a drop when the fit-chosen label-reading heads are ablated, beyond that of
    layer-matched random heads, on the eval queries."""
    mediation = tables.get(PROBE)
    if mediation is None or mediation.empty:
        return [_pending()] if "hopfield_heads" in tables else []
    frame = query_table(tables, PROBE)
    if frame is not None:
        frame = frame[frame["part"] == "ablation"]
    ready = frame is not None and {"ablation", "draw"} <= set(frame.columns) and len(frame)
    rows = []
    for task in sorted(mediation.task.unique()):
        mine = frame[frame.task == task] if ready else None
        if mine is None or mine.empty:
            rows.append(
                _untestable(
                    task,
                    "untestable",
                    "mean-ablate the top-k label-reading heads chosen on the fit queries; drop "
                    "against layer-matched random heads, paired per eval query",
                    f"{PROBE}_queries (ablation rows)",
                    "this run's head_mediation tables have no per-query ablation values with "
                    "fit-query selection and layer-matched controls (an older run): re-run the "
                    "probe",
                )
            )
            continue
        rows += task_rows(mine, task)
    return rows


HEAD_NECESSITY_CLAIM = ClaimDefinition(
    "8", TITLE, (PROBE, f"{PROBE}_queries", "hopfield_heads"), heads_are_necessary
)

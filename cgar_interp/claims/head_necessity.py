"""Claim 8: the label-reading heads are causally necessary, from the head-mediation ablation.

Reads ``head_mediation`` rows ``part = "ablation"``: the change of ICL label mass and full-vocab
accuracy when the top-k label-reading heads are mean-ablated (``set = "top_label"``) against
the mean change over seeded random sets of k heads (``set = "random"``). Without that probe
in the run the row is *pending*: attention on label tokens alone is correlation.
"""

from __future__ import annotations

import pandas as pd

from ..shots import at_largest_k
from .base import PENDING, Claim, ClaimDefinition

TITLE = "The label-reading heads carry the task (causally necessary)"


def heads_are_necessary(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 8: a drop when the label-reading heads are ablated, beyond random heads'."""
    mediation = tables.get("head_mediation")
    if mediation is None or mediation.empty:
        if "hopfield_heads" not in tables:
            return []
        return [
            Claim(
                claim_id="8",
                claim=TITLE,
                test="mean-ablate the top-k label-reading heads; drop in ICL label mass and "
                "accuracy against k random heads",
                reads="head_mediation (ablation rows)",
                task="all",
                kind="pending",
                verdict=PENDING,
                rule="no verdict without the causal test",
                note="waits for the head_mediation probe, which this run does not have; "
                "attention on label tokens alone is correlation",
            )
        ]
    ablation = mediation[mediation["part"] == "ablation"]
    ablation = at_largest_k(ablation, keep_zero=False)
    rows = []
    for task in sorted(ablation.task.unique()):
        for metric, name in (("label_mass_drop", "label mass"), ("vocab_correct_drop", "accuracy")):
            sel = ablation[(ablation.task == task) & (ablation.metric == metric)]
            mine, rand = sel[sel["set"] == "top_label"], sel[sel["set"] == "random"]
            if mine.empty or rand.empty:
                continue
            a, b = mine.iloc[0], rand.iloc[0]
            # a drop is minus the change (ablated - clean): larger = more necessary
            rows.append(
                Claim(
                    claim_id="8",
                    claim=TITLE,
                    test=f"drop in ICL {name} when the top label-reading heads are mean-ablated "
                    "(zero-shot mean, last token)",
                    reads=f"head_mediation: part=ablation, metric={metric}, set in (top_label, "
                    "random)",
                    task=task,
                    value=-float(a.value),
                    ci_low=-float(a.ci_high),
                    ci_high=-float(a.ci_low),
                    control="the same ablation of random head sets (mean over seeded draws)",
                    control_value=-float(b.value),
                    control_ci_low=-float(b.ci_high),
                    control_ci_high=-float(b.ci_low),
                    margin=0.05,
                    figure=f"head_mediation-{task}",
                    note="necessity only; sufficiency is the function vector of those heads "
                    "(head_mediation part=function_vector)",
                )
            )
    return rows


HEAD_NECESSITY_CLAIM = ClaimDefinition(
    "8", TITLE, ("head_mediation", "hopfield_heads"), heads_are_necessary
)

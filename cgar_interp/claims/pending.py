"""Claim 8: the label-reading heads are causally necessary (waits for head mediation)."""

from __future__ import annotations

import pandas as pd

from .ledger import PENDING, Claim, register_claim


@register_claim("8")
def heads_are_necessary(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 8 waits for the ``head_mediation`` probe: its row says so, and nothing else."""
    if "hopfield_heads" not in tables:
        return []
    if "head_mediation" in tables:  # the probe has landed: its claim module decides
        return []
    return [
        Claim(
            claim_id="8",
            claim="The label-reading heads carry the task (causally necessary)",
            test="mean-ablate the top-k label-reading heads; drop in ICL label mass and "
            "accuracy against k random heads",
            reads="head_mediation (ablation rows)",
            task="all",
            kind="pending",
            verdict=PENDING,
            rule="no verdict without the causal test",
            figure="",
            note="waits for the head_mediation probe (issue 17), which this run does not have; "
            "attention on label tokens alone is correlation",
        )
    ]

"""Seed robustness: the ledgers of one suite run under several seeds, side by side.

A suite with ``seeds = [0, 1, 2]`` runs once per seed (demonstrations and the fit/eval split
redrawn) and decides every claim per seed, each seed's ledger its own Holm family.
:func:`combine_seeds` stacks those ledgers (column ``seed``) and adds, per row (claim, task,
``key``), an overall row (``seed = "all"``): *supported* only if every seed supports it, *not
supported* only if every seed finds it not supported, the seeds' common verdict for rows that
yield none (pending, untestable, consistency), *inconclusive* otherwise (seeds disagree, or a
seed lacks the row).
"""

from __future__ import annotations

import math

import pandas as pd

from .base import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

OVERALL = "all"


def overall_verdict(verdicts: list[str], n_seeds: int) -> str:
    """The overall verdict of one row from its per-seed verdicts (see the module docstring).

    >>> overall_verdict(["supported"] * 3, 3), overall_verdict(["supported"] * 2, 3)
    ('supported', 'inconclusive')
    >>> overall_verdict(["supported", "not supported", "supported"], 3)
    'inconclusive'
    """
    if len(verdicts) < n_seeds:
        return INCONCLUSIVE
    first = verdicts[0]
    if all(v == first for v in verdicts):
        return first
    return INCONCLUSIVE


def _letters(verdicts: dict) -> str:
    short = {SUPPORTED: "S", NOT_SUPPORTED: "N", INCONCLUSIVE: "I"}
    return ", ".join(f"seed {s}: {short.get(v, v)}" for s, v in verdicts.items())


def combine_seeds(ledgers: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Per-seed ledgers (``{seed: ledger}``) -> one table: every seed's rows with ``seed`` (as
    text) and one overall row per (claim_id, task, key) with ``seed = "all"``, ordered as the
    first seed's ledger. The overall row carries the first seed's texts, the mean over seeds
    of value, control and difference, the envelope of the seeds' intervals, and in ``note``
    each seed's verdict."""
    seeds = list(ledgers)
    parts = [ledgers[s].assign(seed=str(s)) for s in seeds]
    stacked = pd.concat(parts, ignore_index=True)
    keys = ["claim_id", "task", "key"]
    overall = []
    order = stacked.drop_duplicates(keys)[keys]
    for claim_id, task, key in order.itertuples(index=False):
        rows = stacked[
            (stacked.claim_id == claim_id) & (stacked.task == task) & (stacked.key == key)
        ]
        verdicts = dict(zip(rows.seed, rows.verdict, strict=True))
        first = rows.iloc[0].to_dict()
        verdict = overall_verdict(list(verdicts.values()), len(seeds))
        mean = {c: float(rows[c].mean()) for c in ("value", "control_value", "diff")}
        first.update(
            mean,
            seed=OVERALL,
            verdict=verdict,
            diff_low=float(rows.diff_low.min()),
            diff_high=float(rows.diff_high.max()),
            selected_on=", ".join(sorted(set(rows.selected_on.astype(str)))),
            n=int(rows.n.sum()),
            p_value=math.nan,
            alpha=math.nan,
            detectable=math.nan,
            n_needed=math.nan,
            method=f"overall over seeds {', '.join(map(str, seeds))}: supported only if every "
            "seed supports it",
            correction="each seed's own Holm family; the overall row asks every seed to agree",
            note=f"per seed: {_letters(verdicts)}. Value, control and difference: means over "
            "the seeds; interval: from the lowest to the highest of the seeds' corrected "
            "intervals.",
        )
        overall.append(first)
    return pd.concat([stacked, pd.DataFrame(overall)], ignore_index=True)

"""The claims ledger: every claim of the paper, the test that decides it, its number, a verdict.

A claim function reads a run's tables and returns :class:`Claim` rows. Two kinds of row:

- ``difference``: a measured value against a control, each with its 95% bootstrap interval
  from the tables. The ledger turns them into an interval of the difference and decides by a
  rule written here and shown in the row: *supported* when the interval's lower end is above
  0; *not supported* when its upper end is below ``margin`` (any advantage is smaller than
  what the claim needs: ``margin`` is stated per claim); *inconclusive* otherwise.
  The interval is a normal approximation from the two intervals (standard errors
  ``(ci_high - ci_low) / (2 z_0.975)``, added in quadrature: independent samples, which is
  conservative for the paired queries of a run), at the Bonferroni level ``0.05 / m`` over the
  ``m`` difference rows of the ledger.
- ``rule``: the claim function decides (a threshold on a value, a condition of the theory)
  and writes its rule; ``consistency`` rows are checks reported as such, never evidence;
  ``pending`` rows wait for a probe that has not run.

Every row names the table and rows it reads and the figure it comes from (``figure``: a
figure name of :func:`cgar_interp.figures.figures_for`, so the report can link to it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import pandas as pd
from scipy.stats import norm

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, PENDING, CONSISTENCY = (
    "supported",
    "not supported",
    "inconclusive",
    "pending",
    "consistency check",
)
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, PENDING, CONSISTENCY)
ALPHA = 0.05
Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class Claim:
    """One row of the ledger.

    Attributes:
        claim_id: ``"1"``, ``"3b"``, ...; ``claim``: the claim, quoted or paraphrased.
        test: how it is decided; ``reads``: the table and the rows it reads.
        task: the task (``"all"`` for pooled rows).
        value, ci_low, ci_high: the measured number with its 95% interval.
        control: what it is compared with; control_value / control_ci_*: its number.
        kind: ``difference``, ``rule``, ``consistency`` or ``pending``.
        margin: for ``difference`` rows, the smallest advantage that would support the claim.
        rule: the decision rule (filled in by the ledger for differences).
        verdict: one of :data:`VERDICTS` (filled in by the ledger for differences).
        diff, diff_low, diff_high: value - control and its corrected interval.
        figure: the figure the row comes from; note: anything a reader must know.
    """

    claim_id: str
    claim: str
    test: str
    reads: str
    task: str
    value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    control: str = ""
    control_value: float = math.nan
    control_ci_low: float = math.nan
    control_ci_high: float = math.nan
    kind: str = "difference"
    margin: float = 0.0
    rule: str = ""
    verdict: str = ""
    diff: float = math.nan
    diff_low: float = math.nan
    diff_high: float = math.nan
    correction: str = ""
    figure: str = ""
    note: str = ""


def se_from_ci(low: float, high: float) -> float:
    """Standard error of a 95% interval read as normal."""
    return (high - low) / (2 * Z95)


def difference_interval(row: Claim, m: int) -> tuple[float, float, float, float]:
    """``(diff, low, high, z)``: value - control, Bonferroni-corrected over ``m`` rows.

    >>> c = Claim("1", "c", "t", "r", "x", 0.6, 0.5, 0.7, "ctl", 0.2, 0.1, 0.3)
    >>> d, lo, hi, z = difference_interval(c, 1)
    >>> round(d, 3), round(lo, 3), round(hi, 3)
    (0.4, 0.259, 0.541)
    """
    z = float(norm.ppf(1 - ALPHA / (2 * max(m, 1))))
    diff = row.value - row.control_value
    se = math.hypot(
        se_from_ci(row.ci_low, row.ci_high), se_from_ci(row.control_ci_low, row.control_ci_high)
    )
    return diff, diff - z * se, diff + z * se, z


def decide_difference(row: Claim, m: int) -> Claim:
    """Fill in a difference row's interval, rule and verdict (see the module docstring)."""
    diff, low, high, z = difference_interval(row, m)
    if not all(map(math.isfinite, (diff, low, high))):
        verdict = INCONCLUSIVE
    elif low > 0:
        verdict = SUPPORTED
    elif high < row.margin:
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    rule = (
        f"supported if the interval of (value - control) lies above 0; not supported if it "
        f"lies below {row.margin:g} (an advantage too small to matter, or none); else "
        "inconclusive"
    )
    return replace(
        row,
        diff=diff,
        diff_low=low,
        diff_high=high,
        rule=rule,
        verdict=verdict,
        correction=f"Bonferroni over {m} comparisons (z = {z:.2f}); normal approximation from "
        "the two bootstrap intervals, independent samples (conservative for paired queries)",
    )


ClaimFunction = Callable[[dict[str, pd.DataFrame], dict], list[Claim]]
CLAIMS: list[tuple[str, ClaimFunction]] = []


def register_claim(claim_id: str):
    """Decorator: a claim function, run in registration order (ids must be unique)."""

    def decorate(fn: ClaimFunction) -> ClaimFunction:
        if any(cid == claim_id for cid, _ in CLAIMS):
            raise ValueError(f"claim {claim_id!r} is already registered")
        CLAIMS.append((claim_id, fn))
        return fn

    return decorate


COLUMNS = [f for f in Claim.__dataclass_fields__]


def _order(claim_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in claim_id if ch.isdigit())
    return (int(digits) if digits else 10**6, claim_id)


def build_ledger(tables: dict[str, pd.DataFrame], manifest: dict | None = None) -> pd.DataFrame:
    """Every registered claim on a run's tables: one row per (claim, task, comparison).

    ``manifest`` gives claim functions the run's settings (architecture, suite).
    """
    from . import claims as _claims  # noqa: F401 - registers the claims

    manifest = manifest or {}
    rows: list[Claim] = []
    for _, fn in sorted(CLAIMS, key=lambda item: _order(item[0])):
        rows.extend(fn(tables, manifest))
    m = sum(1 for r in rows if r.kind == "difference")
    rows = [decide_difference(r, m) if r.kind == "difference" else r for r in rows]
    bad = [r for r in rows if r.verdict not in VERDICTS]
    if bad:
        raise ValueError(f"claim {bad[0].claim_id} has no valid verdict: {bad[0].verdict!r}")
    return pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)

"""What a claim is, how a difference is decided, and the verdicts: the leaf every claim imports.

A claim module declares a :class:`ClaimDefinition` (its id, the claim, the tables it reads,
the function that evaluates it); the function reads a run's tables and returns :class:`Claim`
rows. Two kinds of row:

- ``difference``: a measured value against a control, each with its 95% bootstrap interval
  from the tables. The ledger turns them into an interval of the difference and decides by a
  rule written here and shown in the row: *supported* when the interval's lower end is above
  0; *not supported* when its upper end is below ``margin`` (any advantage is smaller than
  what the claim needs: ``margin`` is stated per claim); *inconclusive* otherwise.
  The interval is a normal approximation from the two intervals (standard errors
  ``(ci_high - ci_low) / (2 z_0.975)``, added in quadrature: independent samples, which is
  conservative for the paired queries of a run), at the Bonferroni level ``0.05 / m`` over the
  ``m`` difference rows of the ledger (:func:`decide_difference`).
- ``rule``: the claim function decides (a threshold on a value, a condition of the theory)
  and writes its rule; ``consistency`` rows are checks reported as such, never evidence;
  ``pending`` rows wait for a probe that has not run.

Every row names the table and rows it reads and the figure it comes from (``figure``: a
figure name of :func:`cgar_interp.figures.figures_for`, so the report can link to it).

This module imports no claim module and not the ledger (:mod:`cgar_interp.claims.ledger`),
which lists the paper's claims and runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

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


COLUMNS = list(Claim.__dataclass_fields__)


# --------------------------------------------------------------------------------------------
# deciding a difference


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


# --------------------------------------------------------------------------------------------
# what a claim declares


ClaimFunction = Callable[[dict[str, pd.DataFrame], dict], list[Claim]]


@dataclass(frozen=True)
class ClaimDefinition:
    """A claim of the paper (or a researcher's): what the ledger needs to run it.

    Attributes:
        claim_id: its number, ``"1"`` ... ``"8"``; its rows may carry sub-ids (``"3a"``,
            ``"3b"``) that start with it. The ledger orders claims by the number in the id.
        title: the claim in one line.
        tables: the names of the tables it reads (``"context_gate"``, ...). The ledger hands
            ``evaluate`` those of a run's tables that the run has, and no others.
        evaluate: ``evaluate(tables, manifest) -> list[Claim]``; ``manifest`` gives the run's
            settings (architecture, tasks). No rows when the run lacks what the claim needs.

    >>> d = ClaimDefinition("9", "A toy claim", ("t",), lambda tables, manifest: [])
    >>> d.run({"t": pd.DataFrame(), "other": pd.DataFrame()}, {})
    []
    """

    claim_id: str
    title: str
    tables: tuple[str, ...]
    evaluate: ClaimFunction

    def run(self, tables: Mapping[str, pd.DataFrame], manifest: dict) -> list[Claim]:
        """``evaluate`` on the declared tables the run has (see :attr:`tables`)."""
        mine = {name: tables[name] for name in self.tables if name in tables}
        return list(self.evaluate(mine, manifest))


class ClaimRegistry:
    """Claims a researcher adds to the ledger's default list, in the order added.

    Nothing registers itself by being imported: a researcher calls :meth:`add` (or the
    decorator :func:`register_claim`) in their own code, and ``build_ledger`` runs the
    registered claims after the paper's. ``build_ledger(..., claims=...)`` runs exactly the
    claims it is given and needs no registry.

    >>> registry = ClaimRegistry()
    >>> d = registry.add(ClaimDefinition("9", "A toy claim", (), lambda t, m: []))
    >>> [c.claim_id for c in registry]
    ['9']
    >>> registry.remove("9"); len(registry)
    0
    """

    def __init__(self) -> None:
        self._claims: dict[str, ClaimDefinition] = {}

    def add(self, definition: ClaimDefinition) -> ClaimDefinition:
        """Add a claim (its id must be new here); returns it."""
        if definition.claim_id in self._claims:
            raise ValueError(f"claim {definition.claim_id!r} is already registered")
        self._claims[definition.claim_id] = definition
        return definition

    def remove(self, claim_id: str) -> None:
        """Remove a registered claim (``KeyError`` if there is none of that id)."""
        del self._claims[claim_id]

    def __iter__(self) -> Iterator[ClaimDefinition]:
        return iter(tuple(self._claims.values()))

    def __len__(self) -> int:
        return len(self._claims)


EXTRA_CLAIMS = ClaimRegistry()
"""The researcher's claims that ``build_ledger`` runs after the paper's (empty unless added)."""


def register_claim(
    claim_id: str, *, title: str, tables: tuple[str, ...]
) -> Callable[[ClaimFunction], ClaimFunction]:
    """Decorator: add a claim function to :data:`EXTRA_CLAIMS`, as a :class:`ClaimDefinition`
    of this id, title and tables (the names of the tables it reads); returns it unchanged.

    The researcher applies it in their own code; ``build_ledger`` then runs the claim after
    the paper's. To run a claim once without registering it, pass its definition to
    ``build_ledger(..., claims=...)``.
    """

    def decorate(fn: ClaimFunction) -> ClaimFunction:
        EXTRA_CLAIMS.add(ClaimDefinition(claim_id, title, tuple(tables), fn))
        return fn

    return decorate

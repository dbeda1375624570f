"""What a claim is, how a verdict row is decided, and the verdicts: the leaf every claim imports.

A claim module declares a :class:`ClaimDefinition` (its id, the claim, the tables it reads,
the function that evaluates it); the function reads a run's tables and returns :class:`Claim`
rows. Kinds of row:

- ``difference``: a measured value against a control. A row built from a run's per-query
  tables carries :class:`~cgar_interp.claims.stats.Samples`: the per-query values of value and
  control *on the same eval queries*. The ledger decides it by a paired bootstrap over queries
  (:mod:`cgar_interp.claims.stats`) with Holm's step-down over every row that yields a verdict
  (:func:`decide_rows`). Rule (``rule_kind``): ``superiority`` -- *supported* when the
  difference lies above ``threshold`` (0 for a plain difference), *not supported* when it lies
  below ``margin`` (an advantage too small to matter, or none), *inconclusive* otherwise;
  ``equivalence`` -- *supported* when it lies within ``(-margin, margin)``, *not supported*
  when wholly outside. A row without samples (an old run, a researcher's claim that gives
  only intervals) is decided by a normal approximation from the two 95% intervals as
  independent samples, and says so in ``method``.
- ``rule``: the claim function decides (a condition of the theory) and writes its rule; with
  a ``p_value`` it joins the Holm family, and a verdict Holm does not confirm becomes
  inconclusive. ``consistency`` rows are checks reported as such, never evidence; ``pending``
  rows wait for a probe that has not run; ``untestable`` rows say why the run's data cannot
  decide the claim.

Every row names the table and rows it reads, the split any choice it depends on was made on
(``selected_on``: ``fit`` -- chosen on the fit queries and judged on the eval queries --,
``pre-specified``, or ``eval (in-sample)`` for a descriptive figure), and the figure it comes
from (``figure``: a figure name of :func:`cgar_interp.figures.figures_for`).

This module imports no claim module and not the ledger (:mod:`cgar_interp.claims.ledger`),
which lists the paper's claims and runs them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace

import pandas as pd
from scipy.stats import norm

from .stats import (
    ALPHA,
    N_BOOT,
    Samples,
    bootstrap_test,
    detectable_difference,
    holm_levels,
    interval,
    queries_to_decide,
)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, PENDING, CONSISTENCY, UNTESTABLE = (
    "supported",
    "not supported",
    "inconclusive",
    "pending",
    "consistency check",
    "untestable",
)
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, PENDING, CONSISTENCY, UNTESTABLE)
DECIDED = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
Z95 = float(norm.ppf(0.975))
RULE_KINDS = ("superiority", "equivalence")


@dataclass(frozen=True)
class Claim:
    """One row of the ledger.

    Attributes:
        claim_id: ``"1"``, ``"3b"``, ...; ``claim``: the claim, quoted or paraphrased.
        test: how it is decided; ``reads``: the table and the rows it reads.
        task: the task (``"all"`` for pooled rows).
        value, ci_low, ci_high: the measured number with its 95% interval.
        control: what it is compared with; control_value / control_ci_*: its number.
        kind: ``difference``, ``rule``, ``consistency``, ``pending`` or ``untestable``.
        margin: for ``difference`` rows, the boundary of *not supported* (superiority: the
            smallest advantage that would support the claim; equivalence: the half-width of
            the equivalence band).
        threshold: superiority rows: the difference must lie above it to be *supported*.
        rule_kind: ``superiority`` or ``equivalence``.
        rule: the decision rule (filled in by the ledger for differences).
        verdict: one of :data:`VERDICTS` (filled in by the ledger for differences).
        diff, diff_low, diff_high: value - control and its interval at the row's Holm level.
        selected_on: the split any selection the row depends on was made on.
        key: a stable name of the row within its claim and task (the same row across seeds).
        n: queries behind the row; n_boot: bootstrap resamples; method: how it was decided.
        p_value: the row's p-value; alpha: its Holm level (the corrected alpha).
        detectable: the smallest difference it detects with 80% power at ``alpha``.
        n_needed: inconclusive rows: the queries that would decide it at the observed effect.
        correction: the multiple-comparison correction, in words.
        figure: the figure the row comes from; note: anything a reader must know.
        samples: the per-query values (not a column of the ledger's table).
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
    threshold: float = 0.0
    rule_kind: str = "superiority"
    rule: str = ""
    verdict: str = ""
    diff: float = math.nan
    diff_low: float = math.nan
    diff_high: float = math.nan
    selected_on: str = ""
    key: str = ""
    n: int = 0
    n_boot: int = 0
    method: str = ""
    p_value: float = math.nan
    alpha: float = math.nan
    detectable: float = math.nan
    n_needed: float = math.nan
    correction: str = ""
    figure: str = ""
    note: str = ""
    samples: Samples | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.rule_kind not in RULE_KINDS:
            raise ValueError(
                f"rule_kind {self.rule_kind!r} is not valid; valid: {', '.join(RULE_KINDS)}"
            )


COLUMNS = [f.name for f in fields(Claim) if f.name != "samples"]


# --------------------------------------------------------------------------------------------
# deciding the verdict rows


def se_from_ci(low: float, high: float) -> float:
    """Standard error of a 95% interval read as normal."""
    return (high - low) / (2 * Z95)


def difference_interval(row: Claim, m: int) -> tuple[float, float, float, float]:
    """``(diff, low, high, z)`` of a row without samples: value - control, normal
    approximation from the two intervals as independent samples, Bonferroni over ``m``.

    >>> c = Claim("1", "c", "t", "r", "x", 0.6, 0.5, 0.7, "ctl", 0.2, 0.1, 0.3)
    >>> d, lo, hi, z = difference_interval(c, 1)
    >>> round(d, 3), round(lo, 3), round(hi, 3)
    (0.4, 0.259, 0.541)
    """
    z = float(norm.ppf(1 - ALPHA / (2 * max(m, 1))))
    diff = row.value - row.control_value
    se = _unpaired_se(row)
    return diff, diff - z * se, diff + z * se, z


def _unpaired_se(row: Claim) -> float:
    return math.hypot(
        se_from_ci(row.ci_low, row.ci_high), se_from_ci(row.control_ci_low, row.control_ci_high)
    )


def rule_text(row: Claim) -> str:
    """The decision rule of a verdict row, in words."""
    if row.rule_kind == "equivalence":
        return (
            f"supported if the corrected interval of (value - control) lies within "
            f"(-{row.margin:g}, {row.margin:g}) (two one-sided tests); not supported if it lies "
            "wholly outside; else inconclusive"
        )
    return (
        f"supported if the corrected interval of (value - control) lies above "
        f"{row.threshold:g}; not supported if it lies below {row.margin:g} (an advantage too "
        "small to matter, or none: also where it lies above 0 too); else inconclusive"
    )


def row_seed(row: Claim) -> int:
    """The bootstrap seed of a row: from its claim, task and key (or test), not its position."""
    return zlib.crc32(f"{row.claim_id}|{row.task}|{row.key or row.test}".encode())


@dataclass(frozen=True)
class _Pending:
    """A verdict row's test before the correction."""

    p: float
    p_above: float
    p_below: float
    diff: float
    se: float
    draws: object  # [B] resampled differences, or None (normal approximation)
    n: int
    n_boot: int
    value: float
    control: float


def _normal_test(row: Claim) -> _Pending:
    diff = row.value - row.control_value
    se = _unpaired_se(row)
    if not (math.isfinite(diff) and math.isfinite(se)) or se <= 0:
        ok = math.isfinite(diff) and se == 0
        p_above = 0.0 if ok and diff > row.threshold else 1.0
        p_below = 0.0 if ok and diff < row.margin else 1.0
        return _Pending(
            min(1.0, 2 * min(p_above, p_below)),
            p_above,
            p_below,
            diff,
            se,
            None,
            0,
            0,
            row.value,
            row.control_value,
        )
    if row.rule_kind == "equivalence":
        p_above = max(norm.sf((row.margin - diff) / se), norm.cdf((-row.margin - diff) / se))
        p_below = min(norm.cdf((row.margin - diff) / se), norm.sf((-row.margin - diff) / se))
        p = min(1.0, min(p_above, 2 * p_below))
    else:
        p_above = float(norm.sf((diff - row.threshold) / se))
        p_below = float(norm.cdf((diff - row.margin) / se))
        p = min(1.0, 2 * min(p_above, p_below))
    return _Pending(
        float(p), float(p_above), float(p_below), diff, se, None, 0, 0, row.value, row.control_value
    )


def _bootstrap(row: Claim, n_boot: int) -> _Pending:
    test = bootstrap_test(
        row.samples,
        row.control_value,
        row.threshold,
        row.margin,
        row.rule_kind,
        n_boot=n_boot,
        seed=row_seed(row),
    )
    return _Pending(
        test.p,
        test.p_above,
        test.p_below,
        test.diff,
        test.se,
        test.draws,
        test.n,
        test.n_boot,
        test.value,
        test.control,
    )


def decide_rows(rows: list[Claim], alpha: float = ALPHA, n_boot: int = N_BOOT) -> list[Claim]:
    """Decide every verdict row together: the paired bootstrap of each difference row (the
    normal approximation without samples), Holm's step-down over all of them and over the
    rule rows with a p-value, the interval of each difference at its Holm level, and the power
    figures. Other rows pass through unchanged."""
    family = [
        i
        for i, r in enumerate(rows)
        if r.kind == "difference" or (r.kind == "rule" and math.isfinite(r.p_value))
    ]
    # a bootstrap p-value is at least 1 / (B + 1): B must let the smallest Holm level
    # (alpha / m, two-sided) be reached, with room to spare
    n_boot = max(n_boot, min_resamples(len(family), alpha))
    pending: dict[int, _Pending] = {}
    for i in family:
        r = rows[i]
        if r.kind == "difference":
            pending[i] = _bootstrap(r, n_boot) if r.samples is not None else _normal_test(r)
    p_values = [pending[i].p if i in pending else rows[i].p_value for i in family]
    levels, rejected = holm_levels(p_values, alpha) if family else ([], [])
    m = len(family)
    ranks = {
        i: rank + 1
        for rank, i in enumerate(sorted(family, key=lambda j: p_values[family.index(j)]))
    }
    out = list(rows)
    for pos, i in enumerate(family):
        r, level, ok = rows[i], float(levels[pos]), bool(rejected[pos])
        correction = (
            f"Holm over the {m} rows of this ledger that yield a verdict: rank {ranks[i]}, "
            f"alpha_i = {level:.3g} (family alpha {alpha:g})"
        )
        if r.kind == "rule":
            verdict = (
                r.verdict if ok or r.verdict not in (SUPPORTED, NOT_SUPPORTED) else INCONCLUSIVE
            )
            out[i] = replace(r, alpha=level, correction=correction, verdict=verdict)
            continue
        t = pending[i]
        if t.draws is not None:
            low, high = interval(t.draws, level)
            method = (
                f"paired bootstrap over the {t.n} queries (value and control resampled "
                f"together), {t.n_boot} resamples, percentile interval"
            )
        else:
            z = float(norm.ppf(1 - level / 2))
            low, high = t.diff - z * t.se, t.diff + z * t.se
            method = (
                "normal approximation from the two 95% intervals as independent samples "
                "(no per-query values)"
            )
        if not (math.isfinite(t.diff) and math.isfinite(low) and math.isfinite(high)):
            verdict = INCONCLUSIVE
        elif ok:
            if r.rule_kind == "equivalence":
                verdict = SUPPORTED if t.p_above <= level else NOT_SUPPORTED
            else:  # wholly below the margin: not supported, even where also above 0 (a
                # real advantage, smaller than the claim needs)
                verdict = NOT_SUPPORTED if 2 * t.p_below <= level else SUPPORTED
        else:
            verdict = INCONCLUSIVE
        detectable = detectable_difference(t.se, level)
        needed = (
            queries_to_decide(t.diff, t.se, t.n or r.n, level, r.threshold, r.margin, r.rule_kind)
            if verdict == INCONCLUSIVE and (t.n or r.n)
            else math.nan
        )
        value, control = (t.value, t.control) if t.draws is not None else (r.value, r.control_value)
        out[i] = replace(
            r,
            value=value,
            control_value=control,
            diff=t.diff,
            diff_low=low,
            diff_high=high,
            rule=rule_text(r),
            verdict=verdict,
            n=t.n or r.n,
            n_boot=t.n_boot,
            method=method,
            p_value=t.p,
            alpha=level,
            detectable=detectable,
            n_needed=needed,
            correction=correction,
        )
    return out


def min_resamples(m: int, alpha: float = ALPHA) -> int:
    """Bootstrap resamples a family of ``m`` rows needs: the smallest p-value a bootstrap
    gives, ``1 / (B + 1)``, doubled (two-sided), must lie well below Holm's smallest level
    ``alpha / m``: ``B >= 20 m / alpha`` (ten times what reaches it).

    >>> min_resamples(50)
    20000
    """
    return int(math.ceil(20 * max(m, 1) / alpha))


def decide_difference(row: Claim, m: int) -> Claim:
    """One difference row decided alone at the Bonferroni level ``alpha / m`` (the rule of
    :func:`decide_rows` with a family of one, at level ``alpha / m``)."""
    return decide_rows([row], alpha=ALPHA / max(m, 1))[0]


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

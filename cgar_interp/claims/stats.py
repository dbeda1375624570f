"""The ledger's statistics: paired bootstrap over queries, Holm's step-down, power.

A verdict row carries :class:`Samples`: per-query values of what it measures and of its
control, paired by query (the same queries, in the same order), in one or more strata (tasks,
pooled as the mean over strata of each stratum's mean). The ledger resamples the queries of
every stratum together for value and control (a *paired* bootstrap: what value and control
share cancels), with :data:`N_BOOT` resamples, seeded, and reads from the resamples

- the row's statistic ``d = value - control`` and its interval at the row's corrected level;
- one-sided p-values for the two conclusions a row can reach: ``p_above = P*(d <= threshold)``
  ("supported": ``d`` lies above the threshold) and ``p_below = P*(d >= margin)`` ("not
  supported": ``d`` lies below the margin), each ``(1 + count) / (1 + B)``; the row's p-value is
  ``min(1, 2 min(p_above, p_below))`` (the two-sided form of the interval test);
- for an *equivalence* row (``rule_kind = "equivalence"``): supported when ``|d| < margin``
  (two one-sided tests, ``p = max(P*(d >= margin), P*(d <= -margin))``), not supported when the
  interval lies wholly outside ``[-margin, margin]``;
- the bootstrap standard error ``se`` of ``d``, for the power figures: the smallest
  difference the row detects with 80% power at its corrected level,
  ``(z_{1 - alpha_i / 2} + z_{0.8}) se``; and, when it is inconclusive, the number of queries
  that would decide it at the observed effect, ``n ((z_{1 - alpha_i/2} + z_{0.8}) se / gap)^2``
  with ``gap`` the distance from ``d`` to the boundary it would cross.

Holm's step-down over the ``m`` rows of a family: sort the p-values, compare the ``j``-th
smallest (``j = 1..m``) with ``alpha / (m - j + 1)``, reject until the first that fails; every
row after it keeps its hypothesis (inconclusive). Each row records its level ``alpha_i``.

Numpy only; nothing here knows a claim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

ALPHA = 0.05
N_BOOT = 20_000
POWER = 0.8
Z_POWER = float(norm.ppf(POWER))

# statistic(indices per stratum [B, n_s] each) -> (value [B], control [B])
Statistic = Callable[[Sequence[np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Samples:
    """Per-query values of a verdict row, paired by query, in strata.

    Attributes:
        value: one ``[n_s]`` array per stratum: the measured quantity per query.
        control: one ``[n_s]`` array per stratum (the control on the *same* queries, same
            order), or None when the control is a constant (``Claim.control_value``).
        statistic: for a row whose value is not a mean of per-query values (an R^2, a
            ratio): ``statistic(indices)`` with ``indices`` one ``[B, n_s]`` integer array per
            stratum (``arange`` rows give the point estimate) returns ``(value [B],
            control [B])``. None: the mean over strata of each stratum's mean of ``value``
            (and ``control``).
        split: the split the values come from (``"eval"``).
    """

    value: tuple[np.ndarray, ...]
    control: tuple[np.ndarray, ...] | None = None
    statistic: Statistic | None = field(default=None, repr=False)
    split: str = "eval"

    def __post_init__(self):
        object.__setattr__(self, "value", tuple(np.asarray(v, float) for v in self.value))
        if self.control is not None:
            control = tuple(np.asarray(c, float) for c in self.control)
            object.__setattr__(self, "control", control)
            if len(control) != len(self.value) or any(
                c.shape != v.shape for c, v in zip(control, self.value, strict=True)
            ):
                raise ValueError(
                    "paired samples need the same queries for value and control: shapes "
                    f"{[v.shape for v in self.value]} vs {[c.shape for c in control]}"
                )
        if not self.value or any(v.size == 0 for v in self.value):
            raise ValueError("samples need at least one query per stratum")

    @classmethod
    def paired(cls, value, control=None, split: str = "eval") -> Samples:
        """One stratum: ``value`` and ``control`` ``[n]`` on the same queries."""
        return cls(
            (np.asarray(value, float),), None if control is None else (control,), None, split
        )

    @property
    def n(self) -> int:
        """Queries in all strata."""
        return int(sum(v.size for v in self.value))

    def resample(
        self, indices: Sequence[np.ndarray], constant: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(value [B], control [B])`` at the resampled ``indices`` (one ``[B, n_s]`` each)."""
        if self.statistic is not None:
            value, control = self.statistic(indices)
            return np.asarray(value, float), np.asarray(control, float)
        value = np.mean([v[i].mean(-1) for v, i in zip(self.value, indices, strict=True)], 0)
        if self.control is None:
            return value, np.full_like(value, constant)
        control = np.mean([c[i].mean(-1) for c, i in zip(self.control, indices, strict=True)], 0)
        return value, control

    def point(self, constant: float) -> tuple[float, float]:
        """The statistic on the queries as they are."""
        idx = [np.arange(v.size)[None] for v in self.value]
        value, control = self.resample(idx, constant)
        return float(value[0]), float(control[0])

    def bootstrap(self, constant: float, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
        """``[n_boot, 2]`` resampled (value, control): queries drawn with replacement within
        each stratum, the same draws for value and control (paired), seeded. The index
        arrays are drawn in blocks of ``2_000_000 // n`` resamples (``rng.integers`` per
        stratum and block, in that order), so memory stays a few MB at any ``n_boot``."""
        rng = np.random.default_rng(seed)
        out = np.empty((n_boot, 2))
        step = max(1, 2_000_000 // max(self.n, 1))  # index arrays of a few MB at a time
        for start in range(0, n_boot, step):
            b = min(step, n_boot - start)
            idx = [rng.integers(0, v.size, size=(b, v.size)) for v in self.value]
            value, control = self.resample(idx, constant)
            out[start : start + b, 0] = value
            out[start : start + b, 1] = control
        return out


@dataclass(frozen=True)
class Test:
    """What the bootstrap says about one row before the correction.

    ``diff``: value - control; ``draws``: ``[B]`` resampled differences; ``p_above`` /
    ``p_below``: one-sided p-values of the two conclusions (see the module docstring);
    ``p``: the row's p-value; ``se``: the bootstrap standard error of ``diff``.
    """

    value: float
    control: float
    diff: float
    draws: np.ndarray
    p_above: float
    p_below: float
    p: float
    se: float
    n: int
    n_boot: int


def bootstrap_test(
    samples: Samples,
    control_constant: float,
    threshold: float,
    margin: float,
    rule_kind: str = "superiority",
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> Test:
    """The paired bootstrap of one row (see the module docstring for the p-values)."""
    value, control = samples.point(control_constant)
    boot = samples.bootstrap(control_constant, n_boot, seed)
    draws = boot[:, 0] - boot[:, 1]
    draws = draws[np.isfinite(draws)]
    b = draws.size
    if b == 0:
        return Test(value, control, value - control, draws, 1.0, 1.0, 1.0, math.nan, samples.n, 0)
    if rule_kind == "equivalence":
        p_hi = (1 + int((draws >= margin).sum())) / (1 + b)
        p_lo = (1 + int((draws <= -margin).sum())) / (1 + b)
        p_above = max(p_hi, p_lo)  # "supported": inside (-margin, margin)
        outside_hi = (1 + int((draws <= margin).sum())) / (1 + b)
        outside_lo = (1 + int((draws >= -margin).sum())) / (1 + b)
        p_below = min(outside_hi, outside_lo)  # "not supported": wholly outside
        p = min(1.0, min(p_above, 2 * p_below))
    else:
        p_above = (1 + int((draws <= threshold).sum())) / (1 + b)
        p_below = (1 + int((draws >= margin).sum())) / (1 + b)
        p = min(1.0, 2 * min(p_above, p_below))
    se = float(draws.std(ddof=1)) if b > 1 else math.nan
    return Test(value, control, value - control, draws, p_above, p_below, p, se, samples.n, b)


def holm_levels(p_values: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down: ``(levels, rejected)``, each ``[m]`` in the input order.

    ``levels[i] = alpha / (m - j + 1)`` for the row of rank ``j`` (1 = smallest p);
    ``rejected[i]`` is True for the rows before the first rank whose p exceeds its level.

    >>> levels, rejected = holm_levels([0.01, 0.04, 0.03], 0.05)
    >>> [round(float(x), 4) for x in levels], rejected.tolist()
    ([0.0167, 0.05, 0.025], [True, False, False])
    """
    p = np.asarray(p_values, float)
    m = p.size
    order = np.argsort(p, kind="stable")
    levels = np.empty(m)
    rejected = np.zeros(m, dtype=bool)
    going = True
    for rank, i in enumerate(order):
        levels[i] = alpha / (m - rank)
        going = going and p[i] <= levels[i]
        rejected[i] = going
    return levels, rejected


def interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of ``draws`` at two-sided error ``level`` (``(nan, nan)`` if empty)."""
    if draws.size == 0:
        return math.nan, math.nan
    return (
        float(np.quantile(draws, level / 2)),
        float(np.quantile(draws, 1 - level / 2)),
    )


def detectable_difference(se: float, level: float) -> float:
    """Smallest difference detected with 80% power at two-sided ``level``: ``(z + z_0.8) se``."""
    if not math.isfinite(se):
        return math.nan
    return (float(norm.ppf(1 - level / 2)) + Z_POWER) * se


def queries_to_decide(
    diff: float, se: float, n: int, level: float, threshold: float, margin: float, rule_kind: str
) -> float:
    """Queries that would decide an inconclusive row at its observed ``diff`` (80% power at
    ``level``): ``n (k se / gap)^2``, ``gap`` the distance from ``diff`` to the boundary it is
    on the far side of (the threshold when ``diff`` is above it, else the margin); ``inf`` when
    ``diff`` sits on a boundary; nan without a standard error."""
    if not (math.isfinite(se) and math.isfinite(diff)) or se <= 0:
        return math.nan
    k = float(norm.ppf(1 - level / 2)) + Z_POWER
    if rule_kind == "equivalence":
        gap = margin - abs(diff) if abs(diff) < margin else abs(diff) - margin
    elif diff > threshold:
        gap = diff - threshold
    elif diff < margin:
        gap = margin - diff
    else:
        gap = 0.0
    if gap <= 0:
        return math.inf
    return float(math.ceil(n * (k * se / gap) ** 2))

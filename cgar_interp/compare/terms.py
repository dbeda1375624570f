"""Inputs of the comparison: its config, table names and the per-query gate terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

MODELS = ("first_order", "frozen_norm", "normed")
METRICS = ("label_correct", "label_entropy", "label_eff", "label_mass", "gold_mass")
TABLES = (
    "theory_terms",
    "theory_fit",
    "theory_compare",
    "theory_bound",
    "theory_summary",
    "theory_gate_strength",
    "theory_queries",
)
MODES = ("decode", "patch")
BASE_COLUMNS = ("task", "query", "gold", "q_layer", "c_layer", "class", "b", "g", "normed_logit")
GATE_COLUMNS = (
    "task",
    "mode",
    "vector",
    "q_layer",
    "c_layer",
    "lam",
    "metric",
    "value",
    "n",
    "ci_low",
    "ci_high",
)
NORM_COLUMNS = (
    "b_gamma",
    "g_gamma",
    "h_ms",
    "hc_ms",
    "c_ms",
    "norm_eps",
    "lse_rest",
    "b_gamma_rest_pmean",
    "g_gamma_rest_pmean",
    "g_rest_mean",
)
INF_COLUMNS = ("lse_rest_inf", "b_gamma_rest_pmean_inf", "g_gamma_rest_pmean_inf")
LABELS = {
    "label_correct": "label accuracy",
    "label_entropy": "label entropy (nats)",
    "label_eff": "effective labels exp(H)",
    "label_mass": "label-token mass",
    "gold_mass": "gold-token mass",
}


@dataclass(frozen=True)
class CompareConfig:
    """Settings of :func:`compare_run`.

    Attributes:
        grid_points: predicted-curve points per decade-spanning log grid of lambda (plus 0).
        grid_below: the grid starts this factor below the smallest positive measured lambda.
        saturation_ratio: ``lambda |cbar| / |h|`` at and above which a diagnosis calls the
            final norm saturated (the constant-beta linear regime broken).
        beta_max: largest ``beta_eff`` the fit searches (reached only by degenerate data).
        ci_tol: slack added to the measured interval when deciding ``within_ci``.
        modes: measured modes compared with the predictions (``decode``; ``patch`` is the
            ablation, where the added vector also passes through blocks c..L-1).
    """

    grid_points: int = 61
    grid_below: float = 3.0
    saturation_ratio: float = 0.5
    beta_max: float = 1e6
    ci_tol: float = 1e-9
    modes: tuple[str, ...] = MODES

    def __post_init__(self) -> None:
        if self.grid_points < 2:
            raise ValueError(f"grid_points={self.grid_points} is not valid: it must be >= 2")
        if not (math.isfinite(self.grid_below) and self.grid_below >= 1):
            raise ValueError(f"grid_below={self.grid_below!r} is not valid: it must be >= 1")
        if not (math.isfinite(self.saturation_ratio) and self.saturation_ratio > 0):
            raise ValueError(
                f"saturation_ratio={self.saturation_ratio!r} is not valid: it must be > 0"
            )
        if not (math.isfinite(self.beta_max) and self.beta_max > 0):
            raise ValueError(f"beta_max={self.beta_max!r} is not valid: it must be > 0")
        if not self.ci_tol >= 0:
            raise ValueError(f"ci_tol={self.ci_tol!r} is not valid: it must be >= 0")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")


# --------------------------------------------------------------------------------------------
# per-query terms


@dataclass(frozen=True, eq=False)
class GateTerms:
    """The gate terms of one (task, q, c) as arrays (``n`` eval queries, ``K`` classes).

    Attributes:
        task, q_layer, c_layer: identity.
        query: ``[n]`` query indices; gold: ``[n]`` gold class.
        b, g, normed_logit: ``[n, K]`` raw scores, gate drive (same for every query), decode
            label logits at lambda = 0.
        norm: the RMSNorm columns (``b_gamma``, ``g_gamma`` as ``[n, K]``, the rest ``[n]``),
            or ``None`` for a run directory written before they existed.
    """

    task: str
    q_layer: int
    c_layer: int
    query: np.ndarray
    gold: np.ndarray
    b: np.ndarray
    g: np.ndarray
    normed_logit: np.ndarray
    norm: dict[str, np.ndarray] | None

    @property
    def n_classes(self) -> int:
        """Number of classes K (the theorem's N)."""
        return self.b.shape[1]

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> GateTerms:
        """Arrays from the rows of one (task, q, c) of ``gate_terms``."""
        frame = frame.sort_values(["query", "class"])
        queries = frame["query"].unique()
        k = frame["class"].nunique()
        if len(frame) != len(queries) * k:
            raise ValueError(
                f"gate_terms for task {frame.task.iloc[0]!r} q={frame.q_layer.iloc[0]} "
                f"c={frame.c_layer.iloc[0]} is not one row per (query, class)"
            )

        def grid(col: str) -> np.ndarray:
            return frame[col].to_numpy(np.float64).reshape(len(queries), k)

        norm = None
        if all(col in frame for col in NORM_COLUMNS):
            norm = {"b_gamma": grid("b_gamma"), "g_gamma": grid("g_gamma")}
            for col in NORM_COLUMNS[2:]:
                norm[col] = grid(col)[:, 0]
            if all(col in frame for col in INF_COLUMNS):
                for col in INF_COLUMNS:
                    norm[col] = grid(col)[:, 0]
        return cls(
            task=str(frame.task.iloc[0]),
            q_layer=int(frame.q_layer.iloc[0]),
            c_layer=int(frame.c_layer.iloc[0]),
            query=queries.astype(np.int64),
            gold=grid("gold")[:, 0].astype(np.int64),
            b=grid("b"),
            g=grid("g"),
            normed_logit=grid("normed_logit"),
            norm=norm,
        )

    def scale(self, lam: np.ndarray) -> np.ndarray:
        """``[L, n]`` RMSNorm scale ``s(lambda) = 1 / rms(h + lambda cbar)`` (eps included)."""
        nm = self._need_norm()
        lam = np.asarray(lam, dtype=np.float64)[:, None]
        ms = nm["h_ms"] + 2.0 * lam * nm["hc_ms"] + lam**2 * nm["c_ms"] + nm["norm_eps"]
        return 1.0 / np.sqrt(ms)

    def _need_norm(self) -> dict[str, np.ndarray]:
        if self.norm is None:
            raise ValueError(
                "gate_terms lacks the RMSNorm columns (b_gamma, h_ms, ...): the run directory "
                "predates them; re-run the suite to model the final norm"
            )
        return self.norm

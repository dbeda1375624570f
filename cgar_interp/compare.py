"""Theory vs measurement: the section-2 model against a context-gate run directory.

Everything is computed from the run directory's tables (no model): ``tables/gate_terms.parquet``
(per eval query, per (q, c), per class the label scores) and ``tables/context_gate.parquet``
(the measured curves with bootstrap intervals). SCIENCE.md section 2 (Theorem 3.1 and the
read-out) and section 3 (the bridge ``r(lambda) = W_U norm(h_zero^(q) + lambda cbar^(c))``).

Three models of the label logits ``z_k(lambda)`` of one query (``k`` over the task's classes):

- ``first_order`` — section 2 exactly as the paper states it: ``z = beta_eff (b + lambda g)``
  with the *raw* scores ``b = W_U h_zero``, ``g = W_U cbar`` (no final norm) and one effective
  inverse temperature ``beta_eff`` per (task, q). ``beta_eff`` is fitted on the lambda = 0 data
  only (so every lambda > 0 is out of sample) by minimising the mean over queries of
  ``KL(p_decode || softmax(beta b))``, with ``p_decode`` the label-restricted distribution of
  the actual normed decode (``normed_logit``). Why this fit: every label-restricted quantity the
  probe measures (label accuracy, label entropy, the label distribution itself) is a function of
  that distribution, and the KL is the cross-entropy of the model against it: it ignores the
  per-query offsets that softmax ignores, and it is convex in ``beta`` (its derivative
  ``E_{softmax(beta b)} b - E_p b`` is increasing), so the fit is a unique root.
- ``frozen_norm`` — the same linear form with the final RMSNorm's weight ``gamma`` folded into
  the unembedding and its scale frozen at lambda = 0: ``z = s0 (b_gamma + lambda g_gamma)``,
  ``s0 = 1 / rms(h_zero)``. No free parameter. It differs from ``first_order`` only by
  ``gamma``'s anisotropy (and the fit), and from ``normed`` only by the norm's saturation.
- ``normed`` — the decode as the model computes it: RMSNorm makes the inverse temperature
  lambda-dependent, ``z = s(lambda) (b_gamma + lambda g_gamma)`` with
  ``s(lambda) = 1 / sqrt(h_ms + 2 lambda hc_ms + lambda^2 c_ms + eps)``. This is still the
  section-2 first-order form (a linear margin ``Delta_raw + lambda Delta_gate`` at inverse
  temperature ``beta(lambda) = s(lambda)``), and it reproduces every *label-restricted* decode
  metric exactly, so its agreement validates the bridge and the residuals of the other two
  models measure what the norm does. Because ``lambda s(lambda) -> 1 / rms(cbar)``, the
  exponent ``beta Delta`` saturates at ``Delta_gate_gamma / rms(cbar)``: the exponential gain of
  Theorem 3.1 stops growing once ``lambda |cbar|`` is comparable to ``|h|``.

Label mass (over the whole vocabulary) needs the non-label log-partition, which label scores do
not determine. Predictions, all anchored at the measured lambda = 0 decode (``lse_rest``):

- ``first_order``: the paper's read-out, log-odds linear in lambda with slope
  ``beta_eff (mean_L g - mean_rest g)`` (plain means over labels / the rest of the vocabulary);
- ``frozen_norm`` / ``normed``: exact label log-partition, and the non-label log-partition to
  first order in the perturbation of its logits, ``lse_rest(0) + E_{p_rest(0)}[delta z]``, and
  (where the run has the columns) to first order around the decode of ``cbar`` alone
  (lambda -> infinity), the larger of the two. By convexity of log-sum-exp each tangent
  underestimates the non-label log-partition, so (for ``normed``, which has the label side
  exact) the predicted label mass is an *upper bound* on the measured, exact at lambda = 0 and
  as lambda -> infinity.

Theorem 3.1 per query: ``1 - p_gold <= min(1, (N-1) exp(-beta Delta))`` with
``Delta = Delta_raw + lambda Delta_gate`` (N = number of classes). When
``beta Delta > ln(N - 1)`` the bound puts ``p_gold > 1/2``, so the query is classified
correctly: label accuracy ``>=`` the fraction of queries meeting that condition, which is the
``lower_bound`` row of each model. The bound is vacuous (``>= 1``) where
``Delta <= beta^-1 ln(N - 1)``.

Tables written to ``RUN_DIR/tables`` (atomically): ``theory_terms`` (per query margins),
``theory_fit`` (beta per task and q, reconstruction checks), ``theory_compare`` (tidy predicted
vs measured rows, with per-lambda residuals and regime diagnostics, plus a dense lambda grid of
predictions), ``theory_bound`` (Theorem 3.1 per lambda and model) and ``theory_summary`` (R^2,
RMSE, worst lambda and a diagnosis per curve, per c and pooled over c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from .results import atomic_write_bytes
from .rundir import parquet_bytes
from .theory import required_margin, softmax_error_bound

__all__ = [
    "INF_COLUMNS",
    "METRICS",
    "MODELS",
    "TABLES",
    "BetaFit",
    "CompareConfig",
    "GateTerms",
    "compare_run",
    "compare_tables",
    "fit_beta",
    "label_margin",
    "predict",
    "r_squared",
    "simulation_summary",
    "theory_compare_figure",
]

MODELS = ("first_order", "frozen_norm", "normed")
METRICS = ("label_correct", "label_entropy", "label_eff", "label_mass", "gold_mass")
TABLES = ("theory_terms", "theory_fit", "theory_compare", "theory_bound", "theory_summary")
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


def label_margin(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """``scores[gold] - max_{k != gold} scores[k]`` per row (``[..., n, K], [n] -> [..., n]``)."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.int64)
    if scores.shape[-1] < 2:
        raise ValueError(f"a label margin needs K >= 2 classes; got shape {scores.shape}")
    mask = np.arange(scores.shape[-1]) == gold[:, None]  # [n, K]
    mask = np.broadcast_to(mask, scores.shape)
    own = np.where(mask, scores, 0.0).sum(-1)
    other = np.where(mask, -np.inf, scores).max(-1)
    return own - other


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# the effective beta


@dataclass(frozen=True)
class BetaFit:
    """Result of :func:`fit_beta`.

    Attributes:
        beta: the fitted inverse temperature.
        kl: mean ``KL(p_target || softmax(beta b))`` at the optimum (nats).
        kl_uniform: the same at ``beta = 0`` (the uniform prediction), for scale.
        converged: the root was bracketed (``False``: ``beta`` hit ``beta_max``).
    """

    beta: float
    kl: float
    kl_uniform: float
    converged: bool


def _mean_kl(beta: float, b: np.ndarray, p: np.ndarray, logp: np.ndarray) -> float:
    z = beta * b
    logq = z - logsumexp(z, axis=-1, keepdims=True)
    return float(np.mean(np.sum(p * (logp - logq), axis=-1)))


def fit_beta(b: np.ndarray, target_logits: np.ndarray, beta_max: float = 1e6) -> BetaFit:
    """Inverse temperature minimising the mean ``KL(softmax(target) || softmax(beta b))``.

    The objective is convex in ``beta``; its derivative ``mean(E_{softmax(beta b)} b - E_p b)``
    increases in ``beta``, so the optimum is its root (``0`` when the derivative is already
    ``>= 0`` at ``beta = 0``, i.e. the target does not favour high ``b`` at all).

    Args:
        b: ``[n, K]`` scores of the model.
        target_logits: ``[n, K]`` logits of the distributions to match.
        beta_max: upper end of the search.

    Returns:
        :class:`BetaFit`.
    """
    b = np.asarray(b, dtype=np.float64)
    t = np.asarray(target_logits, dtype=np.float64)
    if b.shape != t.shape or b.ndim != 2:
        raise ValueError(f"b and target_logits must both be [n, K]; got {b.shape} and {t.shape}")
    logp = t - logsumexp(t, axis=-1, keepdims=True)
    p = np.exp(logp)
    target_mean = float(np.mean(np.sum(p * b, axis=-1)))

    def slope(beta: float) -> float:
        return float(np.mean(np.sum(_softmax(beta * b) * b, axis=-1))) - target_mean

    kl_uniform = _mean_kl(0.0, b, p, logp)
    if slope(0.0) >= 0.0:
        return BetaFit(0.0, kl_uniform, kl_uniform, True)
    hi = 1.0 / max(float(np.std(b)), 1e-300)
    while slope(hi) < 0.0:
        hi *= 2.0
        if hi >= beta_max:
            return BetaFit(beta_max, _mean_kl(beta_max, b, p, logp), kl_uniform, False)
    beta = float(brentq(slope, 0.0, hi, xtol=1e-14 * hi, rtol=1e-12))
    return BetaFit(beta, _mean_kl(beta, b, p, logp), kl_uniform, True)


# --------------------------------------------------------------------------------------------
# predictions


@dataclass(frozen=True, eq=False)
class Prediction:
    """Per-query predictions of one model over a lambda grid (``[L, n]`` arrays).

    Attributes:
        metrics: metric name -> ``[L, n]`` per-query values (means are the curves).
        p_gold: label-restricted probability of the gold class.
        beta: ``[L, n]`` inverse temperature the model uses.
        margin: ``[L, n]`` Theorem 3.1 margin ``Delta_raw + lambda Delta_gate`` (model's scores).
    """

    metrics: dict[str, np.ndarray]
    p_gold: np.ndarray
    beta: np.ndarray
    margin: np.ndarray


def predict(terms: GateTerms, model: str, lams: np.ndarray, beta_eff: float) -> Prediction:
    """Per-query predictions of ``model`` (one of :data:`MODELS`) at every lambda of ``lams``.

    Args:
        terms: one (task, q, c).
        model: ``first_order``, ``frozen_norm`` or ``normed`` (module docstring).
        lams: ``[L]`` gate strengths.
        beta_eff: the fitted inverse temperature (used by ``first_order`` only).

    Returns:
        :class:`Prediction`.
    """
    lam = np.asarray(lams, dtype=np.float64)
    lam3 = lam[:, None, None]
    n = len(terms.gold)
    label_lse0 = logsumexp(terms.normed_logit, axis=-1)  # [n]
    if model == "first_order":
        beta = np.full((len(lam), n), float(beta_eff))
        scores = terms.b[None] + lam3 * terms.g[None]
        logits = beta[..., None] * scores
        d_raw, d_gate = label_margin(terms.b, terms.gold), label_margin(terms.g, terms.gold)
        if terms.norm is not None:
            g_rest = terms.norm["g_rest_mean"]
            odds0 = label_lse0 - terms.norm["lse_rest"]
            slope = beta_eff * (terms.g.mean(-1) - g_rest)
            logodds = odds0[None] + lam[:, None] * slope[None]
        else:
            logodds = None
    elif model in ("frozen_norm", "normed"):
        nm = terms._need_norm()
        scale = terms.scale(lam)  # [L, n]
        s0 = terms.scale(np.zeros(1))[0]  # [n]
        beta = np.broadcast_to(s0, scale.shape).copy() if model == "frozen_norm" else scale
        scores = nm["b_gamma"][None] + lam3 * nm["g_gamma"][None]
        logits = beta[..., None] * scores
        d_raw = label_margin(nm["b_gamma"], terms.gold)
        d_gate = label_margin(nm["g_gamma"], terms.gold)
        # exact label log-partition; the non-label one bounded below by tangent planes
        logodds = logsumexp(logits, axis=-1) - _rest_lse_lower(nm, beta, lam[:, None] * beta)
    else:
        raise ValueError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    logp = logits - logsumexp(logits, axis=-1, keepdims=True)  # [L, n, K]
    p = np.exp(logp)
    ent = -(p * logp).sum(-1)
    rows = np.arange(n)
    p_gold = p[:, rows, terms.gold]
    metrics = {
        "label_correct": (logits.argmax(-1) == terms.gold[None]).astype(np.float64),
        "label_entropy": ent,
        "label_eff": np.exp(ent),
    }
    if logodds is not None:
        mass = expit(logodds)
        metrics["label_mass"] = mass
        metrics["gold_mass"] = mass * p_gold
    margin = d_raw[None] + lam[:, None] * d_gate[None]
    return Prediction(metrics=metrics, p_gold=p_gold, beta=beta, margin=margin)


def _rest_lse_lower(nm: dict[str, np.ndarray], alpha: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    """Lower bound on the non-label log-partition at logits ``alpha b_gamma + kappa g_gamma``.

    ``lse_rest(alpha, kappa)`` is convex in ``(alpha, kappa)``, so every tangent plane lies
    below it. Planes: at the lambda = 0 decode ``(s0, 0)`` (value ``lse_rest``, gradient the
    softmax-weighted means ``b_gamma_rest_pmean``, ``g_gamma_rest_pmean``) and, where the run has
    the columns, at the decode of cbar alone ``(0, 1/sqrt(c_ms + eps))`` (lambda -> infinity).
    Their maximum is exact at both ends and first order around each.

    Args:
        nm: the norm columns of :class:`GateTerms` (``[n]`` arrays).
        alpha: ``[L, n]`` scale of ``b_gamma``.
        kappa: ``[L, n]`` scale of ``g_gamma``.

    Returns:
        ``[L, n]`` lower bounds.
    """
    s0 = 1.0 / np.sqrt(nm["h_ms"] + nm["norm_eps"])
    lower = (
        nm["lse_rest"][None]
        + (alpha - s0[None]) * nm["b_gamma_rest_pmean"][None]
        + kappa * nm["g_gamma_rest_pmean"][None]
    )
    if "lse_rest_inf" in nm:
        k_inf = 1.0 / np.sqrt(nm["c_ms"] + nm["norm_eps"])
        at_inf = (
            nm["lse_rest_inf"][None]
            + alpha * nm["b_gamma_rest_pmean_inf"][None]
            + (kappa - k_inf[None]) * nm["g_gamma_rest_pmean_inf"][None]
        )
        lower = np.maximum(lower, at_inf)
    return lower


def r_squared(measured: np.ndarray, predicted: np.ndarray) -> float:
    """``1 - SS_res / SS_tot`` (NaN when the measured values do not vary or are fewer than 2)."""
    y = np.asarray(measured, dtype=np.float64)
    f = np.asarray(predicted, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(f)
    y, f = y[ok], f[ok]
    if y.size < 2:
        return math.nan
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 1e-12 * max(1.0, float(np.sum(y**2))):
        return math.nan
    return 1.0 - float(np.sum((y - f) ** 2)) / ss_tot


# --------------------------------------------------------------------------------------------
# the comparison


def _models(terms: GateTerms) -> tuple[str, ...]:
    return MODELS if terms.norm is not None else ("first_order",)


def _terms_rows(terms: GateTerms) -> pd.DataFrame:
    out = {
        "task": terms.task,
        "q_layer": terms.q_layer,
        "c_layer": terms.c_layer,
        "query": terms.query,
        "gold": terms.gold,
        "n_classes": terms.n_classes,
        "delta_raw": label_margin(terms.b, terms.gold),
        "delta_gate": label_margin(terms.g, terms.gold),
        "gate_favours_gold": label_margin(terms.g, terms.gold) > 0,
    }
    if terms.norm is not None:
        nm = terms.norm
        s0 = terms.scale(np.zeros(1))[0]
        d_gate_gamma = label_margin(nm["g_gamma"], terms.gold)
        out.update(
            {
                "delta_raw_gamma": label_margin(nm["b_gamma"], terms.gold),
                "delta_gate_gamma": d_gate_gamma,
                "beta_norm0": s0,
                # lambda at which |lambda cbar| = |h|: the onset of the norm's saturation
                "lam_norm_equal": np.sqrt(nm["h_ms"] / nm["c_ms"]),
                # lim_{lambda -> inf} beta(lambda) Delta(lambda): where the exponent saturates
                "beta_delta_limit": d_gate_gamma / np.sqrt(nm["c_ms"]),
                "recon_abs_err": np.abs(s0[:, None] * nm["b_gamma"] - terms.normed_logit).max(-1),
            }
        )
    return pd.DataFrame(out)


def _diagnosis(
    row: pd.Series, model: str, metric: str, mode: str, c_layer: int, n_layers: int, sat: float
) -> str:
    """Which assumption breaks at one measured point (rule-based, in words)."""
    reasons = []
    if mode == "patch" and c_layer < n_layers:
        reasons.append(
            "patch mode: lambda cbar also passes through blocks c..L-1, which the "
            "first-order decode model leaves out"
        )
    if model != "normed" and row.norm_ratio >= sat:
        reasons.append(
            f"norm saturation: lambda|cbar|/|h| = {row.norm_ratio:.3g}, the decode's "
            f"beta(lambda) = {row.beta_ratio:.3g} x beta(0); a constant beta overstates the "
            "sharpening and a linear margin the gain"
        )
    if model == "first_order" and row.lam == 0:
        reasons.append(
            "lambda = 0 already off: raw W_U h (no norm weight gamma) ranks or spreads the "
            "labels differently from the normed decode"
        )
    if metric in ("label_mass", "gold_mass"):
        how = (
            "the paper's read-out, log-odds linear in lambda"
            if model == "first_order"
            else "tangent planes of the non-label log-partition (predicted mass is an upper "
            "bound, exact at lambda = 0 and lambda -> infinity)"
        )
        reasons.append(
            f"full vocabulary: label scores do not fix the non-label log-partition; {how}; "
            "the non-label distribution reshapes at this lambda"
        )
    elif model == "normed" and mode == "decode":
        reasons.append("numerical: the normed model is exact for label-restricted decode metrics")
    if not reasons:
        reasons.append("first-order model at small lambda; see residual")
    return "; ".join(reasons)


def compare_tables(
    gate_terms: pd.DataFrame,
    context_gate: pd.DataFrame,
    config: CompareConfig | None = None,
    n_layers: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The theory-vs-measurement tables from the two context-gate tables (no I/O).

    Args:
        gate_terms: ``tables/gate_terms.parquet``.
        context_gate: ``tables/context_gate.parquet``.
        config: settings (default :class:`CompareConfig`).
        n_layers: the model's layer count (patch rows have ``q_layer = n_layers``); default:
            the largest query layer of the measured patch rows, else of ``gate_terms``.

    Returns:
        table name (:data:`TABLES`) -> DataFrame.
    """
    cfg = config or CompareConfig()
    missing = [c for c in BASE_COLUMNS if c not in gate_terms]
    if missing:
        raise ValueError(f"gate_terms lacks columns {missing}; is it a context_gate table?")
    gate_missing = [c for c in GATE_COLUMNS if c not in context_gate]
    if gate_missing and len(context_gate):
        raise ValueError(f"context_gate lacks columns {gate_missing}; is it a context_gate table?")
    if gate_missing:  # no measurements at all: predictions only
        context_gate = pd.DataFrame({c: pd.Series(dtype=object) for c in GATE_COLUMNS})
    if n_layers is None:
        patch = context_gate[context_gate["mode"] == "patch"]
        n_layers = int(patch.q_layer.max() if len(patch) else gate_terms.q_layer.max())
    measured_lams = context_gate[context_gate["mode"].isin(cfg.modes)].lam
    lams = np.array(sorted(set(measured_lams.tolist()) | {0.0}), dtype=np.float64)
    positive = lams[lams > 0]
    grid = np.array([0.0])
    if positive.size:
        grid = np.concatenate(
            [
                [0.0],
                np.geomspace(positive.min() / cfg.grid_below, positive.max(), cfg.grid_points),
            ]
        )

    term_frames, fit_rows, compare_rows, bound_rows = [], [], [], []
    keys = ["task", "q_layer", "c_layer"]
    groups = {k: f for k, f in gate_terms.groupby(keys, sort=True)}
    betas: dict[tuple[str, int], BetaFit] = {}
    for (task, q, c), frame in groups.items():
        terms = GateTerms.from_frame(frame)
        term_frames.append(_terms_rows(terms))
        if (task, q) not in betas:
            betas[(task, q)] = fit_beta(terms.b, terms.normed_logit, cfg.beta_max)
            fit = betas[(task, q)]
            s0 = terms.scale(np.zeros(1))[0] if terms.norm is not None else None
            recon = (
                float(np.abs(s0[:, None] * terms.norm["b_gamma"] - terms.normed_logit).max())
                if s0 is not None
                else math.nan
            )
            fit_rows.append(
                {
                    "task": task,
                    "q_layer": q,
                    "n_queries": len(terms.gold),
                    "n_classes": terms.n_classes,
                    "beta_eff": fit.beta,
                    "fit_kl": fit.kl,
                    "fit_kl_uniform": fit.kl_uniform,
                    "fit_converged": fit.converged,
                    "beta_norm0_mean": float(s0.mean()) if s0 is not None else math.nan,
                    "recon_max_abs_err": recon,
                    "models": ",".join(_models(terms)),
                }
            )
        beta_eff = betas[(task, q)].beta
        n_cls = terms.n_classes
        # Thm 3.1 at eps = 1/2: beta Delta > ln(N - 1) puts p_gold > 1/2 (a correct argmax)
        need = required_margin(0.5, n_cls, 1.0)
        ratio = np.sqrt(terms.norm["c_ms"] / terms.norm["h_ms"]) if terms.norm is not None else None
        exact = predict(terms, "normed", lams, beta_eff) if terms.norm is not None else None
        for model in _models(terms):
            for which, lam_set in (("measured", lams), ("grid", grid)):
                pred = predict(terms, model, lam_set, beta_eff)
                beta_delta = pred.beta * pred.margin  # [L, n]
                bound = softmax_error_bound(beta_delta, n_cls, 1.0)
                acc_lower = (beta_delta > need).mean(-1)
                diag_ratio = (
                    (lam_set[:, None] * ratio[None]).mean(-1)
                    if ratio is not None
                    else np.full(len(lam_set), np.nan)
                )
                beta_ratio = (
                    (terms.scale(lam_set) / terms.scale(np.zeros(1))).mean(-1)
                    if terms.norm is not None
                    else np.full(len(lam_set), np.nan)
                )
                for li, lam in enumerate(lam_set):
                    base = {
                        "task": task,
                        "q_layer": q,
                        "c_layer": c,
                        "model": model,
                        "lam": float(lam),
                        "point": which,
                        "norm_ratio": float(diag_ratio[li]),
                        "beta_ratio": float(beta_ratio[li]),
                        "bound_nonvacuous": float((bound[li] < 1.0).mean()),
                    }
                    for metric, values in pred.metrics.items():
                        compare_rows.append(
                            {
                                **base,
                                "metric": metric,
                                "kind": "prediction",
                                "predicted": float(values[li].mean()),
                            }
                        )
                    compare_rows.append(
                        {
                            **base,
                            "metric": "label_correct",
                            "kind": "lower_bound",
                            "predicted": float(acc_lower[li]),
                        }
                    )
                if which == "measured":
                    err = 1.0 - pred.p_gold
                    for li, lam in enumerate(lam_set):
                        row = {
                            "task": task,
                            "q_layer": q,
                            "c_layer": c,
                            "model": model,
                            "lam": float(lam),
                            "n_classes": n_cls,
                            "beta_mean": float(pred.beta[li].mean()),
                            "margin_mean": float(pred.margin[li].mean()),
                            "required_margin_mean": float((need / pred.beta[li]).mean())
                            if np.all(pred.beta[li] > 0)
                            else math.inf,
                            "frac_condition": float(acc_lower[li]),
                            "bound_nonvacuous": float((bound[li] < 1.0).mean()),
                            "bound_mean": float(bound[li].mean()),
                            "error_model_mean": float(err[li].mean()),
                            "bound_holds": bool(np.all(err[li] <= bound[li] + 1e-12)),
                        }
                        if exact is not None:
                            decode_err = 1.0 - exact.p_gold[li]
                            row["decode_error_mean"] = float(decode_err.mean())
                            row["bound_covers_decode"] = float(
                                (decode_err <= bound[li] + 1e-12).mean()
                            )
                        bound_rows.append(row)

    compare = pd.DataFrame(compare_rows)
    compare = _attach_measured(compare, context_gate, cfg, n_layers)
    terms_table = pd.concat(term_frames, ignore_index=True) if term_frames else pd.DataFrame()
    bound_table = pd.DataFrame(bound_rows)
    if not bound_table.empty:
        meas = context_gate[
            (context_gate["mode"] == "decode")
            & (context_gate.vector == "context")
            & (context_gate.metric == "label_correct")
        ][["task", "q_layer", "c_layer", "lam", "value"]].rename(
            columns={"value": "measured_accuracy"}
        )
        bound_table = bound_table.merge(meas, on=["task", "q_layer", "c_layer", "lam"], how="left")
        bound_table["accuracy_bound_holds"] = (
            bound_table.measured_accuracy >= bound_table.frac_condition - 1e-12
        ) | bound_table.measured_accuracy.isna()
    summary = _summary(compare, cfg, n_layers)
    return {
        "theory_terms": terms_table,
        "theory_fit": pd.DataFrame(fit_rows),
        "theory_compare": compare,
        "theory_bound": bound_table,
        "theory_summary": summary,
    }


def _attach_measured(
    compare: pd.DataFrame, context_gate: pd.DataFrame, cfg: CompareConfig, n_layers: int
) -> pd.DataFrame:
    """One row per measured mode for the ``measured`` points (decode at (q, c); patch at c)."""
    if compare.empty:
        return compare
    frames = [compare[compare.point == "grid"].assign(mode="predicted")]
    at = compare[compare.point == "measured"]
    for mode in cfg.modes:
        meas = context_gate[
            (context_gate["mode"] == mode)
            & (context_gate.vector == "context")
            & context_gate.metric.isin(METRICS)
        ][["task", "q_layer", "c_layer", "lam", "metric", "value", "n", "ci_low", "ci_high"]]
        if meas.empty:
            continue
        part = at
        if mode == "patch":
            part = at[at.q_layer == n_layers]
        merged = part.merge(
            meas, on=["task", "q_layer", "c_layer", "lam", "metric"], how="inner"
        ).rename(columns={"value": "measured"})
        frames.append(merged.assign(mode=mode))
    out = pd.concat(frames, ignore_index=True)
    for col in ("measured", "n", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    tol = cfg.ci_tol
    out["residual"] = out["measured"] - out["predicted"]
    pred_kind = out.kind == "prediction"
    out["within_ci"] = pd.Series(pd.NA, index=out.index, dtype="boolean")
    has = out.measured.notna()
    inside = (out.predicted >= out.ci_low - tol) & (out.predicted <= out.ci_high + tol)
    out.loc[has & pred_kind, "within_ci"] = inside[has & pred_kind]
    # a lower bound "holds" where the measurement is not below it
    out.loc[has & ~pred_kind, "within_ci"] = (out.measured >= out.predicted - tol)[has & ~pred_kind]
    order = ["task", "q_layer", "c_layer", "mode", "model", "kind", "metric", "lam", "point"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)


def _summary(compare: pd.DataFrame, cfg: CompareConfig, n_layers: int) -> pd.DataFrame:
    """R^2, RMSE and the worst lambda per curve, per c and pooled over c."""
    if compare.empty:
        return pd.DataFrame()
    data = compare[(compare.kind == "prediction") & compare.measured.notna()]
    rows = []
    for (task, q, mode, model, metric), part in data.groupby(
        ["task", "q_layer", "mode", "model", "metric"], sort=True
    ):
        scopes = [(int(c), sel) for c, sel in part.groupby("c_layer", sort=True)]
        scopes.append((-1, part))
        for c, sel in scopes:
            resid = sel.residual.to_numpy()
            worst = sel.iloc[int(np.argmax(np.abs(resid)))]
            within = sel.within_ci.astype(bool)
            outside = sel[~within]
            worst_c = int(worst.c_layer)
            diagnosis = (
                "all points inside the measured 95% intervals"
                if outside.empty
                else _diagnosis(worst, model, metric, mode, worst_c, n_layers, cfg.saturation_ratio)
            )
            rows.append(
                {
                    "task": task,
                    "q_layer": q,
                    "c_layer": c,
                    "pooled": c == -1,
                    "mode": mode,
                    "model": model,
                    "metric": metric,
                    "n_points": len(sel),
                    "r2": r_squared(sel.measured.to_numpy(), sel.predicted.to_numpy()),
                    "rmse": float(np.sqrt(np.mean(resid**2))),
                    "max_abs_residual": float(np.abs(resid).max()),
                    "worst_lam": float(worst.lam) if np.abs(resid).max() > 0 else math.nan,
                    "worst_c_layer": worst_c if np.abs(resid).max() > 0 else -1,
                    "frac_within_ci": float(within.mean()),
                    "first_lam_outside_ci": float(outside.lam.min())
                    if not outside.empty
                    else math.nan,
                    "diagnosis": diagnosis,
                }
            )
    return pd.DataFrame(rows)


def compare_run(
    run_dir: str | Path, config: CompareConfig | None = None, *, write: bool = True
) -> dict[str, pd.DataFrame]:
    """Theory vs measurement for a context-gate run directory (the entry point).

    Reads ``tables/gate_terms.parquet`` and ``tables/context_gate.parquet``; writes the tables of
    :data:`TABLES` into ``tables/`` atomically (unless ``write=False``).

    Args:
        run_dir: a run directory holding a context_gate probe's tables.
        config: settings (default :class:`CompareConfig`).
        write: write the tables into the run directory.

    Returns:
        table name -> DataFrame.

    Raises:
        ValueError: the run directory has no context-gate tables.
    """
    run_dir = Path(run_dir)
    tables = run_dir / "tables"
    paths = {name: tables / f"{name}.parquet" for name in ("gate_terms", "context_gate")}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise ValueError(
            f"{str(run_dir)!r} has no context-gate tables ({', '.join(absent)} missing); "
            "run a suite with a context_gate probe first"
        )
    n_layers = None
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        import json

        arch = json.loads(manifest.read_text()).get("architecture") or {}
        n_layers = arch.get("n_layers")
    out = compare_tables(
        pd.read_parquet(paths["gate_terms"]),
        pd.read_parquet(paths["context_gate"]),
        config,
        n_layers=n_layers,
    )
    if write:
        for name, frame in out.items():
            atomic_write_bytes(tables / f"{name}.parquet", parquet_bytes(frame))
    return out


# --------------------------------------------------------------------------------------------
# the simulations' regime, in numbers


def simulation_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per lambda of ``retrieval_vs_lambda`` (:func:`cgar_interp.theory.run_simulations`):
    where the paper's uniqueness condition holds and how the Theorem 3.1 bound fares.

    Returns:
        One row per lambda: ``contraction_bound`` (mean ``beta lam^2 / (2 eta_min)``), the
        fraction of trials meeting the uniqueness condition, mean first-order and fixed-point
        errors, mean bound, fraction of trials where the bound holds (first order and fixed
        point) and accuracy; plus, from ``fixed_point_counts`` at the configuration's beta,
        the mean and max number of fixed points found.
    """
    df = tables["retrieval_vs_lambda"]
    agg = (
        df.groupby("lam")
        .agg(
            contraction_bound=("contraction_bound", "mean"),
            frac_uniqueness=("uniqueness_condition", "mean"),
            error_first_order=("error_first_order", "mean"),
            error_fixed_point=("error_fixed_point", "mean"),
            bound_mean=("error_bound", "mean"),
            bound_holds_first_order=("bound_holds_first_order", "mean"),
            bound_holds_fixed_point=("bound_holds_fixed_point", "mean"),
            accuracy_fixed_point=("correct_fixed_point", "mean"),
        )
        .reset_index()
    )
    beta = df.attrs.get("config", {}).get("beta")
    counts = tables.get("fixed_point_counts")
    if counts is not None and beta is not None:
        at = counts[np.isclose(counts.beta, beta)]
        fp = at.groupby("lam").agg(
            fixed_points_mean=("n_fixed_points", "mean"),
            fixed_points_max=("n_fixed_points", "max"),
            stable_max=("n_stable", "max"),
        )
        agg = agg.merge(fp.reset_index(), on="lam", how="outer").sort_values("lam")
    return agg.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# figure

PANEL_METRICS = ("label_correct", "label_mass", "label_entropy")
MODEL_STYLE = {
    "first_order": ("#d62728", "dash", "section 2, raw scores, beta_eff"),
    "frozen_norm": ("#ff7f0e", "dot", "section 2, gamma folded, beta frozen at lambda=0"),
    "normed": ("#2ca02c", "solid", "section 2 with the RMSNorm: beta(lambda)"),
}


def theory_compare_figure(table: pd.DataFrame, task: str, c_layers: str = "all"):
    """Measured decode points (95% CI) and the predicted curves of every model, per c.

    Rows: context layers (last first; ``c_layers="last"`` keeps only the last); columns:
    label accuracy (with each model's Theorem 3.1 lower bound, dotted), label mass, label
    entropy. Lambda on a log axis with lambda = 0 drawn one step left of the smallest positive
    lambda. Subplot titles carry R^2 of each model against the decode points.

    Args:
        table: ``theory_compare``.
        task: the task to draw.
        c_layers: ``"all"`` or ``"last"``.

    Returns:
        a plotly Figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = table[table.task == task]
    if data.empty:
        raise ValueError(f"no theory_compare rows for task {task!r}")
    q = int(data.q_layer.max())
    data = data[data.q_layer == q]
    cs = sorted(data.c_layer.unique(), reverse=True)
    if c_layers == "last":
        cs = cs[:1]
    elif c_layers != "all":
        raise ValueError(f"c_layers={c_layers!r} is not valid: 'all' or 'last'")
    measured_pos = data.lam[(data.point == "measured") & (data.lam > 0)]
    zero_x = float(measured_pos.min()) / 10.0 if len(measured_pos) else 1.0

    def xs(lam: pd.Series) -> np.ndarray:
        lam = lam.to_numpy(np.float64)
        return np.where(lam > 0, lam, zero_x)

    titles = []
    for c in cs:
        for metric in PANEL_METRICS:
            sel = data[
                (data.c_layer == c)
                & (data["mode"] == "decode")
                & (data.metric == metric)
                & (data.kind == "prediction")
            ]
            r2 = [
                f"{m.split('_')[0]} {r_squared(s.measured, s.predicted):.2f}"
                for m, s in sel.groupby("model", sort=False)
            ]
            line = f"<br><sup>R² {', '.join(r2)}</sup>" if r2 else ""
            titles.append(f"c={c}: {LABELS[metric]}{line}")
    fig = make_subplots(
        rows=len(cs),
        cols=len(PANEL_METRICS),
        subplot_titles=titles,
        vertical_spacing=0.3 / len(cs) if len(cs) > 1 else 0.1,
        horizontal_spacing=0.07,
    )
    fig.update_annotations(font_size=12)
    shown = set()
    for r, c in enumerate(cs, start=1):
        for col, metric in enumerate(PANEL_METRICS, start=1):
            panel = data[(data.c_layer == c) & (data.metric == metric)]
            for model, (color, dash, label) in MODEL_STYLE.items():
                for kind in ("prediction", "lower_bound"):
                    curve = panel[
                        (panel.model == model) & (panel.kind == kind) & (panel.point == "grid")
                    ].sort_values("lam")
                    if curve.empty:
                        continue
                    name = label if kind == "prediction" else f"Thm 3.1 accuracy bound: {model}"
                    fig.add_trace(
                        go.Scatter(
                            x=xs(curve.lam),
                            y=curve.predicted,
                            mode="lines",
                            name=name,
                            legendgroup=name,
                            showlegend=name not in shown,
                            visible=True if kind == "prediction" else "legendonly",
                            line={
                                "color": color,
                                "dash": dash if kind == "prediction" else "dashdot",
                                "width": 2 if kind == "prediction" else 1,
                            },
                            hovertemplate=f"{name}<br>lambda=%{{x:.3g}}<br>{metric}="
                            "%{y:.4f}<extra></extra>",
                        ),
                        row=r,
                        col=col,
                    )
                    shown.add(name)
            for mode, symbol in (("decode", "circle"), ("patch", "diamond-open")):
                # the measured values repeat on every model's rows: keep one per lambda
                pts = (
                    panel[(panel["mode"] == mode) & (panel.kind == "prediction")]
                    .drop_duplicates("lam")
                    .sort_values("lam")
                )
                if pts.empty:
                    continue
                name = f"measured ({mode}, 95% CI)"
                fig.add_trace(
                    go.Scatter(
                        x=xs(pts.lam),
                        y=pts.measured,
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": pts.ci_high - pts.measured,
                            "arrayminus": pts.measured - pts.ci_low,
                            "thickness": 1,
                        },
                        mode="markers",
                        marker={"symbol": symbol, "size": 8, "color": "#000"},
                        name=name,
                        legendgroup=name,
                        showlegend=name not in shown,
                        visible=True if mode == "decode" else "legendonly",
                        text=[
                            f"{mode} c={c} lambda={lam:g}<br>{metric}={v:.4f} "
                            f"[{lo:.4f}, {hi:.4f}] n={n}"
                            for lam, v, lo, hi, n in zip(
                                pts.lam, pts.measured, pts.ci_low, pts.ci_high, pts.n, strict=True
                            )
                        ],
                        hovertemplate="%{text}<extra></extra>",
                    ),
                    row=r,
                    col=col,
                )
                shown.add(name)
            ticks = sorted(set(data.lam[data.point == "measured"].tolist()))
            fig.update_xaxes(
                type="log",
                tickvals=[zero_x if t == 0 else t for t in ticks],
                ticktext=[f"{t:g}" for t in ticks],
                title_text="lambda" if r == len(cs) else None,
                row=r,
                col=col,
            )
            if metric != "label_entropy":
                fig.update_yaxes(range=[-0.02, 1.02], row=r, col=col)
    fig.update_layout(
        title=f"Theory vs measurement — {task} (q={q}; decode mode)",
        height=340 * len(cs) + 140,
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return fig

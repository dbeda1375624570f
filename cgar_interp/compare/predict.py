"""The three models of the label logits, the beta fit and the goodness of fit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from .terms import MODELS, GateTerms


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

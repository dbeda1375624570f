"""Theory vs measurement: the section-2 model against a context-gate run directory.

Everything is computed from the run directory's tables (no model): ``tables/gate_terms.parquet``
(per eval query, per (q, c), per class the label scores) and ``tables/context_gate.parquet``
(the measured curves with bootstrap intervals). See docs/science.md#theory-vs-measurement:
the model is docs/science.md#first-order-retrieval-bound (Theorem 3.1) and #label-read-out,
the bridge ``r(lambda) = W_U norm(h_zero^(q) + lambda cbar^(c))`` is docs/science.md#decode-mode.

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
predictions), ``theory_bound`` (Theorem 3.1 per lambda and model), ``theory_summary`` (R^2,
RMSE, worst lambda and a diagnosis per curve, per c and pooled over c) and ``theory_queries``
(every model's prediction per eval query at the measured lambdas, the per-query values whose
means are ``theory_compare``'s ``predicted``: what claim 5 resamples).

This package draws nothing: the figure of ``theory_compare`` is
:func:`cgar_interp.figures.theory.theory_compare_figure`.
"""

from .predict import BetaFit, Prediction, fit_beta, label_margin, predict, r_squared
from .tables import compare_run, compare_tables, query_rows, simulation_summary
from .terms import INF_COLUMNS, METRICS, MODELS, TABLES, CompareConfig, GateTerms

__all__ = [
    "INF_COLUMNS",
    "METRICS",
    "MODELS",
    "TABLES",
    "BetaFit",
    "CompareConfig",
    "GateTerms",
    "Prediction",
    "compare_run",
    "compare_tables",
    "fit_beta",
    "label_margin",
    "predict",
    "query_rows",
    "r_squared",
    "simulation_summary",
]

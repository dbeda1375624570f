"""Claim 6: the gate is in the regime the theory needs (a unique fixed point).

The paper's uniqueness condition (Thm 3.4) is ``beta lambda^2 / (2 eta_min) < 1`` for the
self-consistent map ``Phi(p) = softmax(beta (b + lambda A^-1 u + lambda^2 A^-1 p))``. Mapped
onto a run as the ``first_order`` model of :mod:`cgar_interp.compare` maps it (memories = the
task's K labels, ``b = W_U h_zero``, ``A^-1 u = g = W_U cbar``, ``beta = beta_eff``), the bound
is **not identified** by the run's data, so the row is ``untestable``:

- every first-order quantity the run measures sees the drive only as the product
  ``lambda u`` (the logits ``beta (b + lambda g)``), while the feedback ``lambda^2 A^-1 p``
  scales with ``lambda^2``: the map ``(lambda, u) -> (k lambda, u / k)`` leaves every
  first-order measurement unchanged and multiplies the bound by ``k^2``;
- in particular, scaling the residual stream by ``a > 0`` (embeddings and every block's output
  projections; RMSNorm makes the predictions the same up to its epsilon) scales ``b`` and ``g``
  by ``a`` and the fitted ``beta_eff`` by ``1 / a``: the raw-unit bound ``beta_eff lambda^2 / 2``
  moves by ``1 / a`` while nothing the model computes does.

What the row keeps is descriptive and scale-free: the normalisation that absorbs ``beta`` into
the scores (logit units: ``b' = beta_eff b``, ``u' = beta_eff g``, ``beta = 1``; ``beta_eff b``
is invariant), under which the bound at ``A = I`` is ``lambda*^2 / 2`` -- a function of lambda*
alone, which shows the number is fixed by that choice of units, not measured -- and the fixed
points of ``Phi`` per eval query under the same normalisation. ``lambda*`` (the lambda
maximising patch-mode label mass over c and lambda > 0) is chosen on the *fit* queries
(``context_gate_queries``, ``split = "fit"``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..compare import GateTerms
from ..theory import GatedMemory
from .base import UNTESTABLE, Claim, ClaimDefinition
from .per_query import query_table, select
from .sweep import largest_shots
from .theory_tables import fmt, n_layers_of, query_layer

TITLE = "The gate is in the regime the theory needs (a unique fixed point)"

RULE = (
    "untestable: the uniqueness bound beta lambda^2 / (2 eta_min) of Thm 3.4 is not identified "
    "by first-order measurements (they fix the product lambda u, not lambda and u apart; "
    "(lambda, u) -> (k lambda, u / k) changes the bound by k^2, and scaling the residual stream "
    "by a, which the model's predictions do not see, changes the raw-unit bound by 1 / a)"
)

WHY = (
    "untestable: first-order measurements identify only the product lambda u (the logits "
    "beta (b + lambda g)), while Phi's feedback lambda^2 A^-1 p scales with lambda^2, so "
    "(lambda, u) -> (k lambda, u / k) leaves every first-order measured quantity unchanged and "
    "multiplies the bound beta lambda^2 / (2 eta_min) by k^2; in raw units (b = W_U h_zero, "
    "beta = beta_eff fitted on them) scaling the residual stream by a, which RMSNorm hides from "
    "every prediction, divides the bound by a. The raw-unit bound beta_eff lambda*^2 / 2 is "
    "therefore not reported; the theory gives no normalisation of u that would fix it"
)


def contraction_bound(beta: float, lam: float, n: int) -> float:
    """The paper's bound ``beta lam^2 / (2 eta_min)`` at ``A = I`` (from :class:`GatedMemory`)."""
    if beta == 0:
        return 0.0
    mem = GatedMemory(np.zeros(n), np.zeros(n), np.eye(n), alpha=0.0, lam=lam, beta=beta)
    return mem.contraction_bound()


def fixed_point_counts(
    b: np.ndarray, g: np.ndarray, lam: float, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed points of ``Phi`` per query at ``A = I`` (``u = g``): ``(n_fixed, n_stable)``.

    Args:
        b: ``[n, K]`` label scores per query.
        g: ``[n, K]`` gate drive per query (``W_U cbar`` at the labels).
        lam, beta: gate coupling and inverse temperature.
    """
    n_fixed, n_stable = [], []
    for bi, gi in zip(np.asarray(b), np.asarray(g), strict=True):
        mem = GatedMemory(bi, gi, np.eye(len(bi)), alpha=0.0, lam=lam, beta=beta)
        points = mem.fixed_points()
        n_fixed.append(len(points))
        n_stable.append(sum(fp.stable for fp in points))
    return np.array(n_fixed, dtype=int), np.array(n_stable, dtype=int)


def logit_unit_counts(
    b: np.ndarray, g: np.ndarray, lam: float, beta_eff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed points per query with ``beta_eff`` absorbed into the scores (``b' = beta_eff b``,
    ``u' = beta_eff g``, ``beta = 1``): invariant under a rescaling of the residual stream."""
    return fixed_point_counts(beta_eff * np.asarray(b), beta_eff * np.asarray(g), lam, 1.0)


def _count_text(n_fixed: np.ndarray, n_stable: np.ndarray) -> str:
    parts = []
    for k in sorted(set(n_fixed.tolist())):
        sel = n_fixed == k
        stable = sorted(set(n_stable[sel].tolist()))
        parts.append(
            f"{k} for {int(sel.sum())}/{len(n_fixed)} queries (stable: "
            f"{', '.join(str(s) for s in stable)})"
        )
    return "; ".join(parts)


def select_lambda(
    gate: pd.DataFrame, queries: pd.DataFrame | None, task: str
) -> tuple[float, int, float, str] | None:
    """``(lambda*, c*, mean label mass there, split)``: the argmax of patch-mode label mass over
    ``c`` and ``lambda > 0`` on the *fit* queries (``context_gate_queries``); without them, on
    the eval aggregate (split ``"eval (in-sample)"``). None when there is no such row."""
    if queries is not None:
        fit = select(queries, "fit", task=task, mode="patch", vector="context", metric="label_mass")
        fit = fit[fit.lam > 0]
        if not fit.empty:
            means = fit.groupby(["c_layer", "lam"]).value.mean()
            (c, lam), best = means.idxmax(), float(means.max())
            return float(lam), int(c), best, "fit"
    patch = gate[
        (gate.task == task)
        & (gate["mode"] == "patch")
        & (gate.vector == "context")
        & (gate.metric == "label_mass")
        & (gate.lam > 0)
    ]
    if patch.empty:
        return None
    best = patch.loc[patch.value.idxmax()]
    return float(best.lam), int(best.c_layer), float(best.value), "eval (in-sample)"


def _scale_free_extras(compare, gate, task, q, c, lam) -> list[str]:
    """Scale-free diagnostics at (c*, lambda*): the eval label mass, the norm ratio and the
    share of queries with a non-vacuous Thm 3.1 bound (beta_eff Delta is invariant)."""
    out = []
    sel = gate[
        (gate.task == task)
        & (gate["mode"] == "patch")
        & (gate.vector == "context")
        & (gate.metric == "label_mass")
        & (gate.c_layer == c)
        & np.isclose(gate.lam, lam)
    ]
    if not sel.empty:
        out.append(f"eval-query patch label mass there: {float(sel.value.iloc[0]):.3g}")
    if compare is not None:
        sel = compare[
            (compare.task == task)
            & (compare.q_layer == q)
            & (compare.c_layer == c)
            & (compare.point == "measured")
            & np.isclose(compare.lam, lam)
        ]
        if not sel.empty:
            out.append(
                f"norm ratio lambda*|cbar|/|h| = {fmt(float(sel.norm_ratio.iloc[0]))} "
                "(theory_compare)"
            )
            fo = sel[sel.model == "first_order"]
            if not fo.empty:
                out.append(
                    "fraction of queries with a non-vacuous Thm 3.1 bound (first_order, "
                    f"beta_eff Delta): {fmt(float(fo.bound_nonvacuous.iloc[0]))}"
                )
    return out


def _regime_row(tables, task, q, fit_row, gate, queries, gate_terms) -> Claim:
    base = dict(
        claim_id="6",
        claim=TITLE,
        task=task,
        kind="untestable",
        rule=RULE,
        verdict=UNTESTABLE,
        figure=f"context_gate-{task}",
        key="uniqueness",
    )
    chosen = select_lambda(gate, queries, task)
    if chosen is None:
        return Claim(
            **base,
            test="Thm 3.4 uniqueness condition at lambda*",
            reads="context_gate(_queries): mode=patch, vector=context, metric=label_mass",
            note=f"{WHY}. Nothing to describe either: context_gate has no patch-mode label_mass "
            "rows with lambda > 0, so lambda* (the lambda maximising patch label mass) is "
            "undefined",
        )
    lam, c, best, split = chosen
    n = int(fit_row.n_classes)
    beta = float(fit_row.beta_eff)
    converged = bool(fit_row.fit_converged) if "fit_converged" in fit_row else True
    where = "fit queries" if split == "fit" else "eval queries (in-sample: no fit split)"
    test = (
        f"Thm 3.4 uniqueness condition at lambda* = {lam:g}, c* = {c} (the lambda maximising "
        f"patch-mode label mass on the {where}: {best:.3g})"
    )
    reads = (
        f"context_gate_queries: split={split.split()[0]}, mode=patch, vector=context, "
        f"metric=label_mass (argmax over c, lambda > 0); theory_fit: task={task}, q_layer={q} "
        f"(beta_eff, n_classes); gate_terms: c_layer={c} (b, g per eval query)"
    )
    notes = [WHY]
    described = [
        f"descriptive, scale-free: with beta_eff absorbed into the scores (logit units: "
        f"b' = beta_eff b, u' = beta_eff g, beta = 1; A = I, K = {n}) the bound is "
        f"lambda*^2 / 2 = {fmt(lam**2 / 2)}, a function of lambda* alone (the number is fixed "
        "by this choice of units, not measured)"
    ]
    if not math.isfinite(beta) or beta < 0 or not converged:
        described.append(
            f"fixed points not counted: beta_eff = {beta!r} (fit converged: {converged})"
        )
    elif gate_terms is None:
        described.append("fixed points not counted: gate_terms (b, g per query) is not in the run")
    else:
        sel = gate_terms[
            (gate_terms.task == task) & (gate_terms.q_layer == q) & (gate_terms.c_layer == c)
        ]
        if sel.empty:
            described.append(f"fixed points not counted: gate_terms has no rows at c = {c}")
        else:
            terms = GateTerms.from_frame(sel)
            n_fixed, n_stable = logit_unit_counts(terms.b, terms.g, lam, beta)
            described.append(
                "fixed points of Phi per eval query in those units (a multi-start search, "
                f"GatedMemory.fixed_points): {_count_text(n_fixed, n_stable)}"
            )
            if beta == 0:
                described.append(
                    "beta_eff = 0: the raw scores do not favour the decode's label distribution, "
                    "so in logit units b' = u' = 0 and Phi is softmax(lambda*^2 p)"
                )
    compare = largest_shots(tables.get("theory_compare"))
    described.extend(_scale_free_extras(compare, gate, task, q, c, lam))
    notes.extend(described)
    return Claim(
        **base,
        test=test,
        reads=reads,
        selected_on=split,
        n=0,
        note="; ".join(notes) + ".",
    )


def gate_regime(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 6: untestable (the bound is not identified), with scale-free descriptions at the
    lambda* chosen on the fit queries."""
    fit = largest_shots(tables.get("theory_fit"))
    gate = largest_shots(tables.get("context_gate"), keep_zero=True)
    if fit is None or gate is None:
        return []
    gate_terms = largest_shots(tables.get("gate_terms"))
    queries = query_table(tables, "context_gate")
    n_layers = n_layers_of(manifest, gate)
    rows = []
    for task in sorted(fit.task.unique()):
        frame = fit[fit.task == task]
        q = query_layer(frame, n_layers)
        fit_row = frame[frame.q_layer == q].iloc[0]
        rows.append(_regime_row(tables, task, q, fit_row, gate, queries, gate_terms))
    return rows


GATE_REGIME_CLAIM = ClaimDefinition(
    "6",
    TITLE,
    ("theory_fit", "context_gate", "context_gate_queries", "gate_terms", "theory_compare"),
    gate_regime,
)

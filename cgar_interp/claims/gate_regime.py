"""Claim 6: the gate is in the regime the theory needs (a unique fixed point).

The claim maps the measured terms onto :class:`cgar_interp.theory.GatedMemory` as the
``first_order`` model of :mod:`cgar_interp.compare` does (memories = the task's K labels,
``beta = theory_fit.beta_eff``, ``b`` = raw label scores ``W_U h_zero``, gate drive
``g = A^-1 u = W_U cbar``, ``lambda`` = the measured lambda) and evaluates the paper's
uniqueness condition (Thm 3.4) and the fixed points at the lambda that maximises label mass in
patch mode. The run measures neither the context similarity ``G`` nor the competition weight
``alpha``; ``G`` has a unit diagonal (cosine similarity), so ``eta_min(A) <= 1`` and the bound
at ``A = I`` (``alpha = 0``, the simulations' default) is the smallest it can be.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..compare import GateTerms
from ..theory import GatedMemory
from .base import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Claim, ClaimDefinition
from .sweep import largest_shots
from .theory_tables import fmt, n_layers_of, query_layer

BOUND_SUPPORTED = 0.5

TITLE = "The gate is in the regime the theory needs (a unique fixed point)"

RULE = (
    "uniqueness (Thm 3.4): beta lambda^2 / (2 eta_min) < 1. value = the bound at eta_min = 1 "
    "(A = I: alpha = 0, no competition), the smallest it can be, since G has a unit diagonal and "
    "so eta_min <= 1. not supported if value >= 1 (fails for every admissible G, alpha); "
    f"supported if value < {BOUND_SUPPORTED:g} (holds for any competition that keeps "
    f"eta_min > {BOUND_SUPPORTED:g}, e.g. alpha up to 1/2 when mu_min(G) = 0); inconclusive in "
    "between (holds only while eta_min > value, and the run measures neither G nor alpha), and "
    "when beta_eff = 0 or its fit did not converge"
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
        b: ``[n, K]`` raw label scores per query.
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


def _regime_extras(tables, task, q, c, lam, n) -> list[str]:
    """The normed model's bound and the bridge's regime diagnostics at (c, lambda*)."""
    out = []
    bound = largest_shots(tables.get("theory_bound"))
    if bound is not None and {"beta_mean", "model"} <= set(bound.columns):
        sel = bound[
            (bound.task == task)
            & (bound.q_layer == q)
            & (bound.c_layer == c)
            & (bound.model == "normed")
            & np.isclose(bound.lam, lam)
        ]
        if not sel.empty:
            s = float(sel.beta_mean.iloc[0])
            out.append(
                f"with the normed model's inverse temperature s(lambda*) = {fmt(s)} "
                f"(theory_bound.beta_mean; gamma-scaled scores) the bound is "
                f"{fmt(contraction_bound(s, lam, n))}"
            )
    compare = largest_shots(tables.get("theory_compare"))
    if compare is not None:
        sel = compare[
            (compare.task == task)
            & (compare.q_layer == q)
            & (compare.c_layer == c)
            & (compare.point == "measured")
            & np.isclose(compare.lam, lam)
        ]
        if not sel.empty:
            ratio = float(sel.norm_ratio.iloc[0])
            out.append(f"norm ratio lambda*|cbar|/|h| = {fmt(ratio)} (theory_compare)")
            fo = sel[sel.model == "first_order"]
            if not fo.empty:
                out.append(
                    "fraction of queries with a non-vacuous Thm 3.1 bound (first_order): "
                    f"{fmt(float(fo.bound_nonvacuous.iloc[0]))}"
                )
    return out


def _regime_row(tables, task, q, fit_row, patch, gate_terms, lams) -> Claim:
    best = patch.loc[patch.value.idxmax()]
    lam, c = float(best.lam), int(best.c_layer)
    n = int(fit_row.n_classes)
    beta = float(fit_row.beta_eff)
    converged = bool(fit_row.fit_converged) if "fit_converged" in fit_row else True
    test = (
        f"Thm 3.4 uniqueness condition at beta_eff = {fmt(beta)} and lambda* = {lam:g} (the "
        f"lambda maximising patch-mode label mass, at c = {c}: {float(best.value):.3g}); fixed "
        "points of Phi counted per eval query"
    )
    reads = (
        f"theory_fit: task={task}, q_layer={q} (beta_eff, n_classes); context_gate: mode=patch, "
        f"vector=context, metric=label_mass (argmax over c, lambda > 0); gate_terms: c_layer={c} "
        "(b, g per query)"
    )
    base = dict(
        claim_id="6",
        claim=TITLE,
        test=test,
        reads=reads,
        task=task,
        kind="rule",
        rule=RULE,
        figure=f"context_gate-{task}",
        control="1 (the condition's threshold)",
        control_value=1.0,
    )
    if not math.isfinite(beta) or beta < 0 or not converged:
        return Claim(
            **base,
            verdict=INCONCLUSIVE,
            note=f"beta_eff = {beta!r} (fit converged: {converged}): no usable inverse "
            "temperature, so the condition is not evaluated",
        )
    value = contraction_bound(beta, lam, n)
    per_lam = ", ".join(f"{x:g}: {fmt(contraction_bound(beta, x, n))}" for x in lams)
    notes = [
        "mapping as compare/'s first_order model: memories = the task's "
        f"K = {n} labels, b = W_U h_zero, g = A^-1 u = W_U cbar, A = I (G and alpha are not "
        "measured)",
        f"bound at every measured lambda: {per_lam}",
    ]
    if beta > 0:
        notes[0] += f"; the condition needs eta_min > {fmt(value)}"
    if beta == 0:
        notes.insert(
            0,
            "beta_eff = 0: the raw scores do not favour the decode's label distribution (the "
            "fit sits at its boundary), so the first-order softmax is uniform and the condition "
            "holds vacuously; it says nothing about the gate",
        )
        verdict = INCONCLUSIVE
    else:
        lam_max = math.sqrt(2.0 / beta)
        notes.append(f"largest lambda meeting it at A = I: {fmt(lam_max)}")
        if value >= 1:
            verdict = NOT_SUPPORTED
        elif value < BOUND_SUPPORTED:
            verdict = SUPPORTED
        else:
            verdict = INCONCLUSIVE
    if beta == 0:
        notes.append("fixed points: 1 (Phi is constant at beta = 0)")
    elif gate_terms is None:
        notes.append("fixed points not counted: gate_terms (b, g per query) is not in the run")
    else:
        sel = gate_terms[
            (gate_terms.task == task) & (gate_terms.q_layer == q) & (gate_terms.c_layer == c)
        ]
        if sel.empty:
            notes.append(f"fixed points not counted: gate_terms has no rows at c = {c}")
        else:
            terms = GateTerms.from_frame(sel)
            n_fixed, n_stable = fixed_point_counts(terms.b, terms.g, lam, beta)
            notes.append(
                f"fixed points of Phi at A = I (a multi-start search, GatedMemory.fixed_points): "
                f"{_count_text(n_fixed, n_stable)}"
            )
    notes.extend(_regime_extras(tables, task, q, c, lam, n))
    notes.append("no interval: beta_eff is a point fit")
    return Claim(**base, value=value, verdict=verdict, note="; ".join(notes))


def gate_regime(tables: dict[str, pd.DataFrame], manifest: dict) -> list[Claim]:
    """Claim 6: the uniqueness condition and the fixed points at beta_eff and lambda*."""
    fit = largest_shots(tables.get("theory_fit"))
    gate = largest_shots(tables.get("context_gate"), keep_zero=True)
    if fit is None or gate is None:
        return []
    gate_terms = largest_shots(tables.get("gate_terms"))
    n_layers = n_layers_of(manifest, gate)
    rows = []
    for task in sorted(fit.task.unique()):
        frame = fit[fit.task == task]
        q = query_layer(frame, n_layers)
        fit_row = frame[frame.q_layer == q].iloc[0]
        patch = gate[
            (gate.task == task)
            & (gate["mode"] == "patch")
            & (gate.vector == "context")
            & (gate.metric == "label_mass")
            & (gate.lam > 0)
        ]
        if patch.empty:
            rows.append(
                Claim(
                    claim_id="6",
                    claim=TITLE,
                    test="Thm 3.4 uniqueness condition at beta_eff and lambda*",
                    reads="context_gate: mode=patch, vector=context, metric=label_mass",
                    task=task,
                    kind="rule",
                    rule=RULE,
                    verdict=INCONCLUSIVE,
                    figure=f"context_gate-{task}",
                    note="context_gate has no patch-mode label_mass rows with lambda > 0, so "
                    "lambda* (the lambda maximising patch label mass) is undefined",
                )
            )
            continue
        lams = sorted(float(x) for x in patch.lam.unique())
        rows.append(_regime_row(tables, task, q, fit_row, patch, gate_terms, lams))
    return rows


GATE_REGIME_CLAIM = ClaimDefinition(
    "6",
    TITLE,
    ("theory_fit", "context_gate", "gate_terms", "theory_bound", "theory_compare"),
    gate_regime,
)

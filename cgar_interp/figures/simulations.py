"""Figures of the gated-memory simulations (:mod:`cgar_interp.theory.simulate`): retrieval error
against the Theorem 3.1 bound, fixed-point counts, the alpha phase diagram, noisy queries and
the separation of random memories.

Not in the run registry: a simulation has no task, and ``cgar theory simulate`` writes one
figure per simulation table beside the tables.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["simulation_figures"]


def simulation_figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """One plotly figure per table of :func:`~cgar_interp.theory.simulate.run_simulations`
    (keys: the table names present).

    Returns:
        table name -> ``plotly.graph_objects.Figure``.
    """
    figs: dict[str, go.Figure] = {}
    cfg = next(iter(tables.values())).attrs.get("config", {}) if tables else {}
    beta = cfg.get("beta")

    if "retrieval_vs_lambda" in tables:
        df = tables["retrieval_vs_lambda"]
        agg = df.groupby("lam").agg(
            err1=("error_first_order", "mean"),
            err_star=("error_fixed_point", "mean"),
            bound=("error_bound", "mean"),
            unique=("uniqueness_condition", "mean"),
            held=("bound_holds_first_order", "mean"),
        )
        floor = 1e-16  # a log axis cannot show the exact zeros of saturated float64 retrieval
        fig = go.Figure()
        fig.add_scatter(x=agg.index, y=agg.bound, name="bound min(1,(N-1)e^(-beta Delta)), mean")
        fig.add_scatter(x=agg.index, y=np.maximum(agg.err1, floor), name="error, first order")
        fig.add_scatter(
            x=agg.index, y=np.maximum(agg.err_star, floor), name="error, fixed point (>= 1e-16)"
        )
        lam_c = _lam_unique(df, beta)
        if lam_c is not None:
            fig.add_vline(
                x=lam_c,
                line_dash="dash",
                annotation_text="beta lam^2/(2 eta_min) = 1",
            )
        fig.update_layout(
            title="Retrieval error vs gate coupling lambda, against the Thm 3.1 bound",
            xaxis_title="lambda",
            yaxis_title="1 - p_target",
            yaxis_type="log",
        )
        figs["retrieval_vs_lambda"] = fig

    if "fixed_point_counts" in tables:
        df = tables["fixed_point_counts"]
        piv = df.pivot_table(index="beta", columns="lam", values="n_stable", aggfunc="mean")
        fig = go.Figure(
            go.Heatmap(
                z=piv.values,
                x=[str(c) for c in piv.columns],
                y=[str(i) for i in piv.index],
                colorbar={"title": "stable fixed points"},
                text=df.pivot_table(
                    index="beta", columns="lam", values="n_fixed_points", aggfunc="max"
                ).values,
                texttemplate="%{z:.1f} (all: %{text})",
            )
        )
        cond = df.pivot_table(index="beta", columns="lam", values="uniqueness_condition")
        ys, xs = np.nonzero(cond.values >= 1.0)
        fig.add_scatter(
            x=[str(cond.columns[i]) for i in xs],
            y=[str(cond.index[j]) for j in ys],
            mode="markers",
            marker_symbol="circle-open",
            marker_size=18,
            name="uniqueness condition holds",
        )
        fig.update_layout(
            title="Fixed points found (mean stable; max of all) vs the uniqueness condition",
            xaxis_title="lambda",
            yaxis_title="beta",
        )
        figs["fixed_point_counts"] = fig

    if "alpha_phase" in tables:
        df = tables["alpha_phase"]
        piv = df.pivot_table(index="kappa", columns="alpha", values="gate_norm")
        fig = go.Figure(
            go.Heatmap(
                z=np.log10(np.maximum(piv.values, 1e-300)),
                x=piv.columns,
                y=piv.index,
                colorbar={"title": "log10 |s|"},
            )
        )
        crit = df.groupby("kappa").alpha_crit.first()
        crit = crit[crit <= 1.0]  # alpha_crit > 1 lies outside the allowed alpha range
        fig.add_scatter(
            x=crit.values,
            y=crit.index,
            mode="lines+markers",
            name="alpha_crit = 1/(1 - mu_min(G))",
        )
        fig.update_layout(
            title="Gate norm after gradient descent over (alpha, kappa) vs alpha_crit",
            xaxis_title="alpha",
            yaxis_title="kappa (competition strength)",
        )
        figs["alpha_phase"] = fig

    if "noisy_queries" in tables:
        df = tables["noisy_queries"]
        agg = df.groupby(["condition", "sigma"]).agg(
            acc=("correct", "mean"), ent=("entropy", "mean")
        )
        fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy", "entropy (nats)"))
        for cond in agg.index.get_level_values(0).unique():
            part = agg.loc[cond]
            fig.add_scatter(x=part.index, y=part.acc, name=f"{cond} accuracy", row=1, col=1)
            fig.add_scatter(x=part.index, y=part.ent, name=f"{cond} entropy", row=1, col=2)
        fig.update_xaxes(title_text="query noise sigma")
        fig.update_layout(title="Noise-corrupted queries with and without context")
        figs["noisy_queries"] = fig

    if "mhn_separation" in tables:
        df = tables["mhn_separation"]
        fig = go.Figure(go.Histogram(x=df.delta, name="separation Delta of the target"))
        fig.add_vline(
            x=float(df.threshold.iloc[0]),
            line_dash="dash",
            annotation_text="well-separated threshold",
        )
        fig.update_layout(
            title="Separation of random memories vs Ramsauer's well-separated threshold",
            xaxis_title="Delta",
            yaxis_title="count",
        )
        figs["mhn_separation"] = fig
    return figs


def _lam_unique(df: pd.DataFrame, beta: float | None) -> float | None:
    """``lam`` at which ``beta lam^2 / (2 eta_min) = 1`` (mean eta_min), for the figure."""
    if beta is None or "eta_min" not in df:
        return None
    return math.sqrt(2.0 * float(df.eta_min.mean()) / beta)

"""Figures of the context gate: the lambda curves, the task-vector layer sweep and the k-shot
sweep view. Every point's hover text carries value, interval and n.

Figures are built from the tidy tables alone, so a figure can be rebuilt from a run directory
without the model.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import register_figure
from .style import DASH, HOVER, PALETTE, ci_band, ci_error_y, ci_text, lam_label

__all__ = ["PANELS", "context_gate_figure", "shots_figure", "task_vector_figure"]

PANELS = (
    ("vocab_correct", "Accuracy (full vocab)"),
    ("label_mass", "Concentration mass on label tokens"),
)

# the context gate's baselines (ContextGateConfig.vectors other than "context"): legend name and
# line dash, so the two label controls are told apart
BASELINES = {
    "random": ("random vector", "dot"),
    "flipped": ("flipped labels", "dashdot"),
    "random_labels": ("random labels", "longdashdot"),
}


def _hover(frame: pd.DataFrame, head: str) -> list[str]:
    return [
        f"{head}<br>lambda={lam_label(r.lam)}<br>{r.metric}={r.value:.4f} "
        f"[{r.ci_low:.4f}, {r.ci_high:.4f}]<br>n={r.n}"
        for r in frame.itertuples()
    ]


def context_gate_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """The paper's two panels for one task: accuracy and label mass vs lambda.

    One curve per (q, c) in decode mode (solid) and patch mode (dashed); the baselines (a random
    vector, cbar from flipped-label and from random-label prompts, each with its own dash) are
    in the legend, named, and hidden until clicked; zero-shot and full ICL
    are horizontal reference lines. Lambda is categorical so that lambda = 0 is on the axis.
    """
    data = table[(table.task == task) & (table.probe == "context_gate")]
    if data.empty:
        raise ValueError(f"no context_gate rows for task {task!r}")
    lams = sorted(data[data["mode"] != "baseline"].lam.unique())
    order = [lam_label(x) for x in lams]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in PANELS])
    curves = data[data["mode"] != "baseline"][
        ["mode", "vector", "q_layer", "c_layer"]
    ].drop_duplicates()
    colors = {}
    for mode, vector, q, c in curves.itertuples(index=False):
        colors.setdefault((q, c), PALETTE[len(colors) % len(PALETTE)])
        for col, (metric, _) in enumerate(PANELS, start=1):
            sel = data[
                (data["mode"] == mode)
                & (data.vector == vector)
                & (data.q_layer == q)
                & (data.c_layer == c)
                & (data.metric == metric)
            ].sort_values("lam")
            label, dash = BASELINES.get(vector, (vector, "dot"))
            name = f"{mode} q={q} c={c}" + ("" if vector == "context" else f" [{label}]")
            fig.add_trace(
                go.Scatter(
                    x=[lam_label(x) for x in sel.lam],
                    y=sel.value,
                    error_y=ci_error_y(sel.value, sel.ci_low, sel.ci_high, thickness=1),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={
                        "color": colors[(q, c)],
                        "dash": DASH[mode] if vector == "context" else dash,
                        "width": 2 if vector == "context" else 1,
                    },
                    opacity=1.0 if vector == "context" else 0.6,
                    visible=True if vector == "context" else "legendonly",
                    text=_hover(sel, name),
                    hovertemplate=HOVER,
                ),
                row=1,
                col=col,
            )
    for col, (metric, _) in enumerate(PANELS, start=1):
        for vector, label, color in (
            ("zero_shot", "zero-shot", "#555"),
            ("icl", "full ICL", "#000"),
        ):
            sel = data[
                (data["mode"] == "baseline") & (data.vector == vector) & (data.metric == metric)
            ]
            if sel.empty:
                continue
            row = sel.iloc[0]
            fig.add_trace(
                go.Scatter(
                    x=[order[0], order[-1]],
                    y=[row.value, row.value],
                    mode="lines",
                    line={
                        "color": color,
                        "dash": "dashdot" if vector == "icl" else "dot",
                        "width": 1,
                    },
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    text=[
                        f"{label}<br>{metric}={row.value:.4f} [{row.ci_low:.4f}, {row.ci_high:.4f}]<br>n={row.n}"
                    ]
                    * 2,
                    hovertemplate=HOVER,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(
            title_text="lambda",
            type="category",
            categoryorder="array",
            categoryarray=order,
            row=1,
            col=col,
        )
        fig.update_yaxes(range=[-0.02, 1.02], row=1, col=col)
    fig.update_layout(
        title=f"Context gate — {task}",
        height=460,
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return fig


def task_vector_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Task-vector accuracy and label mass per layer, with 95% intervals."""
    data = table[(table.task == task) & (table.probe == "task_vectors")]
    if data.empty:
        raise ValueError(f"no task_vectors rows for task {task!r}")
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in PANELS])
    for col, (metric, _) in enumerate(PANELS, start=1):
        sel = data[data.metric == metric].sort_values("layer")
        text = [
            f"layer {r.layer}<br>{metric}={r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]<br>n={r.n}"
            for r in sel.itertuples()
        ]
        fig.add_trace(ci_band(sel, "rgba(31,119,180,0.15)"), row=1, col=col)
        fig.add_trace(
            go.Scatter(
                x=sel.layer,
                y=sel.value,
                mode="lines+markers",
                name="task vector",
                showlegend=col == 1,
                line={"color": PALETTE[0]},
                text=text,
                hovertemplate=HOVER,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="layer patched (residual after l blocks)", row=1, col=col)
        fig.update_yaxes(range=[-0.02, 1.02], row=1, col=col)
    best = int(data.best_layer.iloc[0])
    fig.update_layout(
        title=f"Task vectors — {task} (best layer {best})", height=420, template="plotly_white"
    )
    return fig


def shots_figure(tables: dict[str, pd.DataFrame], task: str) -> go.Figure:
    """A k-shot sweep of one task: accuracy and label mass, |cbar| and the theory's gate.

    Left: full-vocab accuracy and label-token mass of the full ICL prompt against k (k = 0 is
    zero-shot), mean over eval queries with bootstrap 95% intervals. Middle: |cbar^(c)| at
    each context layer. Right: the fitted gate strength, the lambda at which the gated
    readout ``W_U norm(h_zero + lambda cbar)`` reaches the full ICL prompt's label mass
    (``theory_gate_strength``; a gap where no measured lambda reaches it).
    """
    gate = tables["context_gate"]
    sel = gate[(gate.task == task) & (gate["mode"] == "baseline")]
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "ICL against k (k = 0: zero-shot)",
            "|cbar| per context layer",
            "fitted gate strength (lambda matching ICL)",
        ),
    )
    for metric, color in (("vocab_correct", "#1f77b4"), ("label_mass", "#d62728")):
        part = sel[(sel.metric == metric) & sel.vector.isin(["zero_shot", "icl"])]
        part = part.sort_values("shots")
        fig.add_trace(
            go.Scatter(
                x=part["shots"],
                y=part["value"],
                mode="lines+markers",
                name=metric,
                line={"color": color},
                error_y={
                    "type": "data",
                    "array": part["ci_high"] - part["value"],
                    "arrayminus": part["value"] - part["ci_low"],
                },
                hovertext=[
                    ci_text(r.value, r.ci_low, r.ci_high) + f", n = {int(r.n)}"
                    for r in part.itertuples()
                ],
            ),
            row=1,
            col=1,
        )
    terms = tables.get("gate_terms")
    if terms is not None and "shots" in terms.columns:
        norms = terms[terms.task == task].groupby(["c_layer", "shots"]).cbar_norm.first()
        for c, series in norms.groupby(level=0):
            fig.add_trace(
                go.Scatter(
                    x=series.index.get_level_values(1),
                    y=series.values,
                    mode="lines+markers",
                    name=f"|cbar| c = {c}",
                ),
                row=1,
                col=2,
            )
    strength = tables.get("theory_gate_strength")
    if strength is not None and "shots" in strength.columns and not strength.empty:
        part = strength[strength.task == task]
        for c, sel in part.groupby("c_layer", sort=True):
            sel = sel.sort_values("shots")
            fig.add_trace(
                go.Scatter(
                    x=sel["shots"],
                    y=sel["lam_fit"],
                    mode="lines+markers",
                    name=f"fitted lambda, c = {c}",
                    hovertext=[
                        f"ICL label mass {r.icl_label_mass:.3f}; "
                        + (
                            f"reached at lambda {r.lam_fit:.3g}"
                            if r.reached
                            else f"not reached (best {r.best_label_mass:.3f} at {r.lam_best:g})"
                        )
                        for r in sel.itertuples()
                    ],
                ),
                row=1,
                col=3,
            )
    fig.update_xaxes(title_text="demonstrations per class (k)")
    fig.update_layout(title=f"k-shot sweep — {task}", height=420)
    return fig


register_figure("context_gate", context_gate_figure, rank=0)  # first in the report
register_figure("task_vectors", task_vector_figure)
register_figure("shots", shots_figure, sweep=True)

"""Plotly figures of probe tables. Every point's hover text carries value, interval and n.

Figures are built from the tidy tables alone, so a figure can be rebuilt from a run directory
without the model.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PANELS = (
    ("vocab_correct", "Accuracy (full vocab)"),
    ("label_mass", "Concentration mass on label tokens"),
)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
DASH = {"decode": "solid", "patch": "dash"}
HOVER = "%{text}<extra></extra>"


def _lam_label(lam: float) -> str:
    return f"{lam:g}"


def _hover(frame: pd.DataFrame, head: str) -> list[str]:
    return [
        f"{head}<br>lambda={_lam_label(r.lam)}<br>{r.metric}={r.value:.4f} "
        f"[{r.ci_low:.4f}, {r.ci_high:.4f}]<br>n={r.n}"
        for r in frame.itertuples()
    ]


def context_gate_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """The paper's two panels for one task: accuracy and label mass vs lambda.

    One curve per (q, c) in decode mode (solid) and patch mode (dashed); the random-vector and
    shuffled-label baselines are in the legend (hidden until clicked); zero-shot and full ICL
    are horizontal reference lines. Lambda is categorical so that lambda = 0 is on the axis.
    """
    data = table[(table.task == task) & (table.probe == "context_gate")]
    if data.empty:
        raise ValueError(f"no context_gate rows for task {task!r}")
    lams = sorted(data[data["mode"] != "baseline"].lam.unique())
    order = [_lam_label(x) for x in lams]
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
            name = f"{mode} q={q} c={c}" + ("" if vector == "context" else f" [{vector}]")
            fig.add_trace(
                go.Scatter(
                    x=[_lam_label(x) for x in sel.lam],
                    y=sel.value,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": sel.ci_high - sel.value,
                        "arrayminus": sel.value - sel.ci_low,
                        "thickness": 1,
                    },
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={
                        "color": colors[(q, c)],
                        "dash": DASH[mode] if vector == "context" else "dot",
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
        fig.add_trace(
            go.Scatter(
                x=list(sel.layer) + list(sel.layer)[::-1],
                y=list(sel.ci_high) + list(sel.ci_low)[::-1],
                fill="toself",
                mode="lines",
                fillcolor="rgba(31,119,180,0.15)",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=col,
        )
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


def theory_compare_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Theory vs measurement: measured decode points (95% CI) and the section-2 predictions.

    Built by :func:`cgar_interp.compare.theory_compare_figure` from ``theory_compare``.
    """
    from .compare import theory_compare_figure as build

    return build(table, task)


FIGURES = {
    "context_gate": context_gate_figure,
    "task_vectors": task_vector_figure,
    "theory_compare": theory_compare_figure,
}


def figures_for(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Every figure the tables support, named ``<probe>-<task>``."""
    out = {}
    for probe, builder in FIGURES.items():
        table = tables.get(probe)
        if table is None or table.empty:
            continue
        for task in table.task.unique():
            out[f"{probe}-{task}"] = builder(table, task)
    return out

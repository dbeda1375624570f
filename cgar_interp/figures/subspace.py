"""Figure of the subspace probe: per-layer spread, variance, angles, label-subspace energy,
probe accuracy and class alignment, each with its baseline. The energy panel also shows claim
4's per-query shares (means over the eval queries): the shifts' share on the label tokens'
directions, on frequency-matched non-label tokens' and the random-label shifts' label share."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import register_figure
from .style import HOVER, PALETTE, ci_band, ci_error_y, ci_text

__all__ = ["METRIC_STYLE", "SECOND_METRIC", "SUBJECT_STYLE", "SUBSPACE_PANELS", "subspace_figure"]

SUBSPACE_PANELS = (
    (
        "spread of the shifts h_icl - h_zero",
        (("shift", "participation_ratio"), ("shift", "effective_rank")),
    ),
    ("variance explained by the top components", (("shift", "var_top1"), ("shift", "var_top_k"))),
    (
        "principal angles to the label subspace (deg)",
        (
            ("shift", "angle_min_deg"),
            ("shift", "angle_mean_deg"),
            ("random", "angle_min_deg"),
            ("random", "angle_mean_deg"),
        ),
    ),
    (
        "energy share in the label subspace",
        (
            ("shift", "cbar_label_energy"),
            ("random", "cbar_label_energy"),
            ("shift", "label_energy"),
            ("shift", "nonlabel_energy"),
            ("shift", "random_label_energy"),
        ),
    ),
    (
        "linear-probe accuracy (cross-validated)",
        (("h_zero", "probe_acc"), ("h_icl", "probe_acc"), ("chance", "probe_acc")),
    ),
    (
        "class-mean alignment with label unembeddings",
        (("h_zero", "class_align"), ("h_icl", "class_align"), ("shift", "class_align")),
    ),
)
SUBJECT_STYLE = {
    "shift": (PALETTE[0], "solid"),
    "random": ("#7f7f7f", "dot"),
    "h_zero": (PALETTE[1], "solid"),
    "h_icl": (PALETTE[2], "solid"),
    "chance": ("#000000", "dash"),
}
# claim 4's per-query shares and their model-derived controls: a colour of their own
METRIC_STYLE = {
    "label_energy": (PALETTE[3], "solid"),
    "nonlabel_energy": (PALETTE[4], "dash"),
    "random_label_energy": (PALETTE[5], "dashdot"),
}
SECOND_METRIC = {"effective_rank", "var_top_k", "angle_mean_deg"}


def subspace_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Per-layer subspace measures with their baselines (random subspace, chance), 95% CIs.

    Second metrics of a panel (effective rank, top-k variance, mean angle) are drawn with
    open markers; random baselines are grey and dotted, with the 2.5-97.5% range of the draws
    as a band. The spread panel has a log axis (participation ratio and effective rank differ
    by an order of magnitude when the common shift dominates).
    """
    data = table[(table.task == task) & (table.probe == "subspace")]
    if data.empty:
        raise ValueError(f"no subspace rows for task {task!r}")
    top_k = int(data.top_k.iloc[0]) if "top_k" in data else None
    fig = make_subplots(
        rows=2,
        cols=3,
        subplot_titles=[title for title, _ in SUBSPACE_PANELS],
        horizontal_spacing=0.07,
        vertical_spacing=0.14,
    )
    for i, (_, curves) in enumerate(SUBSPACE_PANELS):
        row, col = divmod(i, 3)
        for subject, metric in curves:
            sel = data[(data.subject == subject) & (data.metric == metric)].sort_values("layer")
            if sel.empty:
                continue
            color, dash = METRIC_STYLE.get(metric, SUBJECT_STYLE[subject])
            label = metric.replace("_top_k", f"_top{top_k}") if top_k else metric
            name = f"{subject}: {label}"
            band = subject == "random"  # the spread of the draws, not an interval of an estimate
            if band:
                fig.add_trace(ci_band(sel, "rgba(127,127,127,0.12)"), row=row + 1, col=col + 1)
            fig.add_trace(
                go.Scatter(
                    x=sel.layer,
                    y=sel.value,
                    error_y=None
                    if band
                    else ci_error_y(sel.value, sel.ci_low, sel.ci_high, thickness=1),
                    mode="lines+markers",
                    name=name,
                    line={"color": color, "dash": dash},
                    marker={"symbol": "circle-open" if metric in SECOND_METRIC else "circle"},
                    text=[
                        f"{name}<br>layer {r.layer}<br>"
                        f"{ci_text(r.value, r.ci_low, r.ci_high)}<br>n={r.n}"
                        for r in sel.itertuples()
                    ],
                    hovertemplate=HOVER,
                ),
                row=row + 1,
                col=col + 1,
            )
        fig.update_xaxes(title_text="residual layer (after l blocks)", row=row + 1, col=col + 1)
    fig.update_yaxes(type="log", row=1, col=1)  # participation ratio ~1, effective rank ~10s
    readout = data.readout.iloc[0] if "readout" in data else "unembed"
    fig.update_layout(
        title=f"Subspace localisation — {task} (top_k={top_k}, label subspace: {readout})",
        height=760,
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return fig


register_figure("subspace", subspace_figure)

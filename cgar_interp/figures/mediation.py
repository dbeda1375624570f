"""Figures of the head-mediation probe: AIE per head, AIE against label attention, the
function vector per layer and the ablations."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import register_figure
from .style import HOVER, PALETTE, ci_error_y, ci_text, grid

__all__ = ["head_mediation_figure", "head_mediation_heads_figure"]

# the AIE's corrupted runs (HeadMediationConfig.corrupted) in a title
CORRUPTED_NAMES = {
    "permuted": "permuted-label",
    "random_labels": "random-label",
    "flipped": "flipped-label",
}


def head_mediation_heads_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Head mediation per head: AIE heatmap (layer x head) beside AIE vs label attention.

    Hover: the head's name (``L17H3``), its AIE (eval queries) with the bootstrap 95%
    interval, its ICL label-token attention mass and its two ranks (on the fit queries, where
    the top sets are chosen: fit AIE and fit label attention, when the table has them).
    """
    data = table[table.task == task]
    if data.empty:
        raise ValueError(f"no head_mediation_heads rows for task {task!r}")
    layers = sorted(data.layer.unique())
    heads = sorted(data["head"].unique())
    sel = data.set_index(["layer", "head"])
    corrupted = data.corrupted.iloc[0] if "corrupted" in data.columns else None
    corrupted = CORRUPTED_NAMES.get(corrupted, "corrupted")

    fit = "aie_fit" in data.columns  # ranks on the fit queries (the selection)
    has_estimate = "aie_estimate" in data.columns
    # where not every head has an exact AIE (method attribution, attribution+verify), the
    # heatmap and the label-attention panel show the estimate; a third panel, if any head is
    # verified, sets the estimate against the exact AIE
    every = "aie" if data.aie.notna().all() or not has_estimate else "aie_estimate"
    verified = data[data.verified] if has_estimate and "verified" in data.columns else data[:0]
    verified = verified[verified.aie.notna()]

    def text(r) -> str:
        rank = "fit rank" if fit else "rank"
        extra = (
            f"<br>fit: AIE={r.aie_fit:.4f}, label attention={r.label_attention_fit:.3f}"
            if fit
            else ""
        )
        if has_estimate:
            estimate = ci_text(r.aie_estimate, r.aie_estimate_ci_low, r.aie_estimate_ci_high)
            extra += f"<br>estimate={estimate} (fit {r.aie_estimate_fit:.4f})"
        return (
            f"{r.name_}<br>AIE={ci_text(r.aie, r.aie_ci_low, r.aie_ci_high)} ({rank} "
            f"{r.rank_aie})<br>label attention={r.label_attention:.3f} ({rank} {r.rank_label})"
            f"{extra}<br>n={r.n}"
        )

    data = data.rename(columns={"name": "name_"})
    texts = {(r.layer, r.head): text(r) for r in data.itertuples()}
    what = "AIE" if every == "aie" else "AIE estimate"
    titles = [
        f"{what}: change of p(gold) on {corrupted} prompts",
        f"{what} vs ICL label-token attention",
    ]
    if len(verified):
        titles.append("estimate vs exact AIE (verified heads)")
    fig = make_subplots(
        rows=1,
        cols=len(titles),
        column_widths=[0.45, 0.55] if len(titles) == 2 else [0.34, 0.33, 0.33],
        subplot_titles=titles,
    )
    fig.add_trace(
        go.Heatmap(
            z=grid(sel, layers, heads, every),
            x=[f"H{h}" for h in heads],
            y=[f"L{layer}" for layer in layers],
            text=[[texts.get((layer, h), "") for h in heads] for layer in layers],
            hovertemplate=HOVER,
            colorscale="RdBu",
            zmid=0,
            colorbar={"title": what, "x": 0.43 if len(titles) == 2 else 0.3},
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=data.label_attention,
            y=data[every],
            mode="markers",
            text=[texts[(r.layer, r.head)] for r in data.itertuples()],
            hovertemplate=HOVER,
            marker={"color": data.layer, "colorscale": "Viridis", "size": 7},
            error_y=ci_error_y(
                data[every], data[f"{every}_ci_low"], data[f"{every}_ci_high"], thickness=0.6
            ),
            name="heads",
            showlegend=False,
        ),
        row=1,
        col=2,
    )
    if len(verified):
        lo = float(min(verified.aie.min(), verified.aie_estimate.min()))
        hi = float(max(verified.aie.max(), verified.aie_estimate.max()))
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo, hi],
                mode="lines",
                line={"color": "gray", "dash": "dot"},
                name="estimate = exact",
                hoverinfo="skip",
                showlegend=False,
            ),
            row=1,
            col=3,
        )
        fig.add_trace(
            go.Scatter(
                x=verified.aie,
                y=verified.aie_estimate,
                mode="markers",
                text=[texts[(r.layer, r.head)] for r in verified.itertuples()],
                hovertemplate=HOVER,
                marker={"color": verified.layer, "colorscale": "Viridis", "size": 7},
                name="verified heads",
                showlegend=False,
            ),
            row=1,
            col=3,
        )
        fig.update_xaxes(title_text="exact AIE (eval queries)", row=1, col=3)
        fig.update_yaxes(title_text="attribution estimate", row=1, col=3)
    fig.update_xaxes(title_text="head", row=1, col=1)
    fig.update_yaxes(title_text="block", row=1, col=1)
    fig.update_xaxes(title_text="ICL label-token attention (Hopfield view)", row=1, col=2)
    fig.update_yaxes(title_text=what, row=1, col=2)
    fig.update_layout(title=f"Head mediation — {task}", height=max(420, 18 * len(layers) + 120))
    return fig


def head_mediation_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Function vector by layer (accuracy, label mass) with zero-shot/ICL lines; ablation bars."""
    data = table[table.task == task]
    if data.empty:
        raise ValueError(f"no head_mediation rows for task {task!r}")
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "FV (and task vector): accuracy, full vocab",
            "FV (and task vector): label mass",
            "Ablation: ablated - clean",
        ),
    )
    fv = data[data.part.isin(["function_vector", "task_vector"])]
    base = data[data.part == "baseline"]
    curves = [("function_vector", n) for n in sorted(fv[fv.part == "function_vector"].set.unique())]
    if (fv.part == "task_vector").any():  # the run's task-vector probe, for comparison
        curves.append(("task_vector", "theta"))
    for col, metric in ((1, "vocab_correct"), (2, "label_mass")):
        for i, (part, name) in enumerate(curves):
            label = f"FV {name}" if part == "function_vector" else "task vector"
            sel = fv[(fv.part == part) & (fv.set == name) & (fv.metric == metric)]
            sel = sel.sort_values("layer")
            fig.add_trace(
                go.Scatter(
                    x=sel.layer,
                    y=sel.value,
                    mode="lines+markers",
                    name=label,
                    legendgroup=label,
                    showlegend=col == 1,
                    line={"color": PALETTE[i % len(PALETTE)]},
                    error_y=ci_error_y(sel.value, sel.ci_low, sel.ci_high),
                    text=[
                        f"{label}, layer {r.layer}<br>{metric}="
                        f"{ci_text(r.value, r.ci_low, r.ci_high)}<br>n={r.n}"
                        for r in sel.itertuples()
                    ],
                    hovertemplate=HOVER,
                ),
                row=1,
                col=col,
            )
        for name, dash in (("zero_shot", "dot"), ("icl", "dash")):
            row = base[(base.set == name) & (base.metric == metric)]
            if len(row):
                r = row.iloc[0]
                fig.add_hline(
                    y=r.value,
                    line_dash=dash,
                    line_color="gray",
                    annotation_text=f"{name} {r.value:.3f}",
                    row=1,
                    col=col,
                )
    abl = data[(data.part == "ablation") & data.metric.str.endswith("_drop")]
    if "draw" in abl.columns:  # the tested sets and the mean over their matched random draws
        abl = abl[abl["draw"] < 0]
        names = abl.set + " · " + abl.ablation.str.replace("_", " ")
    else:  # an older table: one ablation (zero-shot mean), unmatched random sets
        abl = abl[~abl.set.str.startswith("random_")]
        names = abl.set
    for i, metric in enumerate(("label_mass_drop", "vocab_correct_drop")):
        sel = abl[abl.metric == metric]
        fig.add_trace(
            go.Bar(
                x=names[sel.index],
                y=sel.value,
                name=metric,
                marker_color=PALETTE[(i + 4) % len(PALETTE)],
                error_y=ci_error_y(sel.value, sel.ci_low, sel.ci_high),
                text=[
                    f"{name}<br>{metric}={ci_text(r.value, r.ci_low, r.ci_high)}<br>n={r.n}"
                    for name, r in zip(names[sel.index], sel.itertuples(), strict=True)
                ],
                hovertemplate=HOVER,
                textposition="none",
            ),
            row=1,
            col=3,
        )
    fig.update_xaxes(title_text="residual layer", row=1, col=1)
    fig.update_xaxes(title_text="residual layer", row=1, col=2)
    fig.update_layout(title=f"Function vector and head ablation — {task}", height=420)
    return fig


register_figure("head_mediation", head_mediation_figure)
register_figure("head_mediation_heads", head_mediation_heads_figure)

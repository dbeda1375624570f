"""Figures of the Hopfield-heads probe: per-head N_eff, regime and label mass (zero-shot beside
ICL), and which heads change regime under context."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .registry import register_figure
from .style import HOVER, ci_text, grid

__all__ = [
    "KIND_TITLES",
    "REGIME_COLORS",
    "REGIME_NAMES",
    "hopfield_heads_figure",
    "hopfield_regimes_figure",
]

REGIME_NAMES = ("single", "metastable", "global")
REGIME_COLORS = ("#d62728", "#ff7f0e", "#1f77b4")
KIND_TITLES = {"zero_shot": "zero-shot", "icl": "ICL"}


def _head_grid(
    data: pd.DataFrame, kind: str, metric: str
) -> tuple[list[int], list[int], pd.DataFrame]:
    """Rows of one (prompt kind, metric) indexed by (layer, head), with the sorted axes."""
    sel = data[(data.prompt_kind == kind) & (data.metric == metric)].set_index(["layer", "head"])
    layers = sorted(data.layer.unique())
    heads = sorted(data["head"].unique())
    return layers, heads, sel


def hopfield_heads_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Layer x head heatmaps, zero-shot beside ICL: N_eff, majority regime, label-token mass.

    Every cell's hover text carries the value with its bootstrap 95% interval, ``k90`` (keys
    covering the mass fraction), the share of queries in each regime, and ``n``. Zero-shot
    prompts hold no demonstrations, so the third row shows the ICL label-token mass beside the
    ICL mass on the query's own class label.
    """
    data = table[(table.task == task) & (table.probe == "hopfield_heads")]
    if data.empty:
        raise ValueError(f"no hopfield_heads rows for task {task!r}")
    titles = [
        "N_eff = exp(entropy), zero-shot (log colour scale)",
        "N_eff = exp(entropy), ICL (log colour scale)",
        "regime (majority over queries), zero-shot",
        "regime (majority over queries), ICL",
        "mass on demonstration label tokens, ICL",
        "mass on the query's own class label, ICL",
    ]
    fig = make_subplots(
        rows=3, cols=2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.07
    )
    n_eff_max = float(data[data.metric == "n_eff"].value.max())
    for col, kind in enumerate(("zero_shot", "icl"), start=1):
        layers, heads, n_eff = _head_grid(data, kind, "n_eff")
        k90 = _head_grid(data, kind, "k90")[2]
        fracs = {r: _head_grid(data, kind, f"frac_{r}")[2] for r in REGIME_NAMES}
        n_keys = _head_grid(data, kind, "n_keys")[2]
        text, codes = [], []
        for layer in layers:
            text_row, code_row = [], []
            for h in heads:
                key = (layer, h)
                if key not in n_eff.index:
                    text_row.append("")
                    code_row.append(None)
                    continue
                r = n_eff.loc[key]
                shares = [float(fracs[name].loc[key, "value"]) for name in REGIME_NAMES]
                code = int(max(range(3), key=lambda i: (shares[i], -i)))
                code_row.append(code)
                text_row.append(
                    f"{KIND_TITLES[kind]}, layer {layer}, head {h} (kv {int(r.kv_head)})"
                    f"<br>N_eff={ci_text(r.value, r.ci_low, r.ci_high)}"
                    f"<br>k90={float(k90.loc[key, 'value']):.2f} of "
                    f"{float(n_keys.loc[key, 'value']):.1f} keys"
                    f"<br>regime: {REGIME_NAMES[code]} (single {shares[0]:.2f}, metastable "
                    f"{shares[1]:.2f}, global {shares[2]:.2f})<br>n={int(r.n)}"
                )
            text.append(text_row)
            codes.append(code_row)
        common = {"x": heads, "y": layers, "text": text, "hovertemplate": HOVER}
        log_n_eff = [
            [None if v is None else math.log10(max(v, 1.0)) for v in row]
            for row in grid(n_eff, layers, heads)
        ]
        fig.add_trace(go.Heatmap(z=log_n_eff, coloraxis="coloraxis", **common), row=1, col=col)
        fig.add_trace(go.Heatmap(z=codes, coloraxis="coloraxis2", **common), row=2, col=col)
    for col, metric in enumerate(("label_mass", "gold_label_mass"), start=1):
        layers, heads, sel = _head_grid(data, "icl", metric)
        text = [
            [
                (
                    f"ICL, layer {layer}, head {h}<br>{metric}="
                    f"{ci_text(*sel.loc[(layer, h), ['value', 'ci_low', 'ci_high']])}"
                    f"<br>n={int(sel.loc[(layer, h), 'n'])}"
                )
                if (layer, h) in sel.index
                else ""
                for h in heads
            ]
            for layer in layers
        ]
        fig.add_trace(
            go.Heatmap(
                z=grid(sel, layers, heads),
                x=heads,
                y=layers,
                text=text,
                hovertemplate=HOVER,
                coloraxis="coloraxis3",
            ),
            row=3,
            col=col,
        )
    ticks = [v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if v <= max(n_eff_max, 2.0)]
    discrete = []
    for i, color in enumerate(REGIME_COLORS):
        discrete += [[i / 3, color], [(i + 1) / 3, color]]
    fig.update_layout(
        title=f"Attention heads as Hopfield memories — {task}",
        height=1250,
        template="plotly_white",
        coloraxis={
            "colorscale": "Viridis",
            "cmin": 0.0,
            "cmax": math.log10(max(n_eff_max, 2.0)),
            "colorbar": {
                "title": "N_eff",
                "tickvals": [math.log10(v) for v in ticks],
                "ticktext": [f"{v:g}" for v in ticks],
                "y": 0.86,
                "len": 0.28,
            },
        },
        coloraxis2={
            "colorscale": discrete,
            "cmin": -0.5,
            "cmax": 2.5,
            "colorbar": {
                "title": "regime",
                "tickvals": [0, 1, 2],
                "ticktext": list(REGIME_NAMES),
                "y": 0.5,
                "len": 0.28,
            },
        },
        coloraxis3={
            "colorscale": "Magma",
            "cmin": 0.0,
            "cmax": 1.0,
            "colorbar": {"title": "mass", "y": 0.14, "len": 0.28},
        },
    )
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer (block)", autorange="reversed")
    return fig


def hopfield_regimes_figure(table: pd.DataFrame, task: str) -> go.Figure:
    """Which heads change regime under context: direction and share of queries, per head."""
    data = table[table.task == task]
    if data.empty:
        raise ValueError(f"no hopfield_regimes rows for task {task!r}")
    layers = sorted(data.layer.unique())
    heads = sorted(data["head"].unique())
    by = data.set_index(["layer", "head"])
    step = {"sharper": -1, "same": 0, "broader": 1}
    z_dir, z_share, text = [], [], []
    for layer in layers:
        dir_row, share_row, text_row = [], [], []
        for h in heads:
            if (layer, h) not in by.index:
                dir_row.append(None)
                share_row.append(None)
                text_row.append("")
                continue
            r = by.loc[(layer, h)]
            dir_row.append(step[r.direction])
            share_row.append(float(r.share_changed))
            text_row.append(
                f"layer {layer}, head {h} (kv {int(r.kv_head)})"
                f"<br>regime {r.regime_zero} -> {r.regime_icl} ({r.direction})"
                f"<br>queries whose regime changes: {r.share_changed:.2f}"
                f"<br>N_eff {r.n_eff_zero:.2f} -> {r.n_eff_icl:.2f}"
                f"<br>k90/keys {r.k90_frac_zero:.3f} -> {r.k90_frac_icl:.3f}"
                f"<br>sink mass {r.sink_mass_zero:.3f} -> {r.sink_mass_icl:.3f}"
                f"<br>ICL label mass {r.label_mass_icl:.3f}<br>n={int(r.n)}"
            )
        z_dir.append(dir_row)
        z_share.append(share_row)
        text.append(text_row)
    n_changed = int(data.changed.sum())
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[
            "majority regime under context (red: sharper, blue: broader)",
            "share of queries whose own regime changes",
        ],
        horizontal_spacing=0.16,
    )
    common = {"x": heads, "y": layers, "text": text, "hovertemplate": HOVER}
    fig.add_trace(
        go.Heatmap(
            z=z_dir,
            zmin=-1,
            zmax=1,
            colorscale=[[0, "#d62728"], [0.5, "#f7f7f7"], [1, "#1f77b4"]],
            colorbar={
                "title": "",
                "tickvals": [-1, 0, 1],
                "ticktext": list(step),
                "x": 0.43,
                "thickness": 12,
            },
            **common,
        ),
        row=1,
        col=1,
    )
    fig.add_trace(go.Heatmap(z=z_share, zmin=0, zmax=1, colorscale="Greys", **common), row=1, col=2)
    fig.update_xaxes(title_text="head", dtick=1)
    fig.update_yaxes(title_text="layer (block)", autorange="reversed")
    fig.update_layout(
        title=f"Regime changes under context — {task} ({n_changed} of {len(data)} heads)",
        height=700,
        template="plotly_white",
    )
    return fig


register_figure("hopfield_heads", hopfield_heads_figure)
register_figure("hopfield_regimes", hopfield_regimes_figure)

"""Plotly figures of probe tables. Every point's hover text carries value, interval and n.

Figures are built from the tidy tables alone, so a figure can be rebuilt from a run directory
without the model.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .shots import at_shots, sweep_shots

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
                    error_y=ci_error_y(sel.value, sel.ci_low, sel.ci_high, thickness=1),
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


# --------------------------------------------------------------------------------------------
# Hopfield heads and subspace probes

REGIME_NAMES = ("single", "metastable", "global")
REGIME_COLORS = ("#d62728", "#ff7f0e", "#1f77b4")
KIND_TITLES = {"zero_shot": "zero-shot", "icl": "ICL"}


def ci_error_y(value, low, high, **style) -> dict:
    """Plotly's asymmetric error bars of an interval ``[low, high]`` around ``value`` (columns or
    arrays); ``style`` adds keys such as ``thickness``."""
    return {
        "type": "data",
        "symmetric": False,
        "array": high - value,
        "arrayminus": value - low,
        **style,
    }


def _ci_text(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _head_grid(
    data: pd.DataFrame, kind: str, metric: str
) -> tuple[list[int], list[int], pd.DataFrame]:
    """Rows of one (prompt kind, metric) indexed by (layer, head), with the sorted axes."""
    sel = data[(data.prompt_kind == kind) & (data.metric == metric)].set_index(["layer", "head"])
    layers = sorted(data.layer.unique())
    heads = sorted(data["head"].unique())
    return layers, heads, sel


def _grid(sel: pd.DataFrame, layers, heads, column: str = "value") -> list[list[float | None]]:
    return [
        [float(sel.loc[(layer, h), column]) if (layer, h) in sel.index else None for h in heads]
        for layer in layers
    ]


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
                    f"<br>N_eff={_ci_text(r.value, r.ci_low, r.ci_high)}"
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
            for row in _grid(n_eff, layers, heads)
        ]
        fig.add_trace(go.Heatmap(z=log_n_eff, coloraxis="coloraxis", **common), row=1, col=col)
        fig.add_trace(go.Heatmap(z=codes, coloraxis="coloraxis2", **common), row=2, col=col)
    for col, metric in enumerate(("label_mass", "gold_label_mass"), start=1):
        layers, heads, sel = _head_grid(data, "icl", metric)
        text = [
            [
                (
                    f"ICL, layer {layer}, head {h}<br>{metric}="
                    f"{_ci_text(*sel.loc[(layer, h), ['value', 'ci_low', 'ci_high']])}"
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
                z=_grid(sel, layers, heads),
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
        "energy of cbar in the label subspace",
        (("shift", "cbar_label_energy"), ("random", "cbar_label_energy")),
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
            color, dash = SUBJECT_STYLE[subject]
            label = metric.replace("_top_k", f"_top{top_k}") if top_k else metric
            name = f"{subject}: {label}"
            band = subject == "random"  # the spread of the draws, not an interval of an estimate
            if band:
                fig.add_trace(
                    go.Scatter(
                        x=list(sel.layer) + list(sel.layer)[::-1],
                        y=list(sel.ci_high) + list(sel.ci_low)[::-1],
                        fill="toself",
                        mode="lines",
                        fillcolor="rgba(127,127,127,0.12)",
                        line={"width": 0},
                        hoverinfo="skip",
                        showlegend=False,
                    ),
                    row=row + 1,
                    col=col + 1,
                )
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
                        f"{_ci_text(r.value, r.ci_low, r.ci_high)}<br>n={r.n}"
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


FIGURES = {
    "context_gate": context_gate_figure,
    "task_vectors": task_vector_figure,
    "theory_compare": theory_compare_figure,
    "hopfield_heads": hopfield_heads_figure,
    "hopfield_regimes": hopfield_regimes_figure,
    "subspace": subspace_figure,
}


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
                    _ci_text(r.value, r.ci_low, r.ci_high) + f", n = {int(r.n)}"
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


def figures_for(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Every figure the tables support, named ``<probe>-<task>``.

    In a k-shot sweep the per-probe figures show the largest k, and ``shots-<task>`` shows
    the curves against k.
    """
    out = {}
    ks = sweep_shots(tables)
    for probe, builder in FIGURES.items():
        table = tables.get(probe)
        if table is None or table.empty:
            continue
        if ks:
            table = at_shots(table, ks[-1])
        for task in table.task.unique():
            out[f"{probe}-{task}"] = builder(table, task)
    if ks:
        for task in tables["context_gate"].task.unique():
            out[f"shots-{task}"] = shots_figure(tables, task)
    return out


# the head-mediation probe's figures live in their own module (imported last: it uses helpers
# defined above)
from .figures_mediation import head_mediation_figure, head_mediation_heads_figure  # noqa: E402

FIGURES["head_mediation"] = head_mediation_figure
FIGURES["head_mediation_heads"] = head_mediation_heads_figure

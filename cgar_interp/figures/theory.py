"""The theory-vs-measurement figure: measured decode points against the section-2 models'
predicted curves (from the ``theory_compare`` table of :mod:`cgar_interp.compare`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..compare.predict import r_squared
from ..compare.terms import LABELS
from .registry import register_figure
from .style import ci_error_y

__all__ = ["MODEL_STYLE", "PANEL_METRICS", "theory_compare_figure"]

PANEL_METRICS = ("label_correct", "label_mass", "label_entropy")
MODEL_STYLE = {
    "first_order": ("#d62728", "dash", "section 2, raw scores, beta_eff"),
    "frozen_norm": ("#ff7f0e", "dot", "section 2, gamma folded, beta frozen at lambda=0"),
    "normed": ("#2ca02c", "solid", "section 2 with the RMSNorm: beta(lambda)"),
}


def theory_compare_figure(table: pd.DataFrame, task: str, c_layers: str = "all") -> go.Figure:
    """Measured decode points (95% CI) and the predicted curves of every model, per c.

    Rows: context layers (last first; ``c_layers="last"`` keeps only the last); columns:
    label accuracy (with each model's Theorem 3.1 lower bound, dotted), label mass, label
    entropy. Lambda on a log axis with lambda = 0 drawn one step left of the smallest positive
    lambda. Subplot titles carry R^2 of each model against the decode points.

    Args:
        table: ``theory_compare``.
        task: the task to draw.
        c_layers: ``"all"`` or ``"last"``.

    Returns:
        a plotly Figure.
    """
    data = table[table.task == task]
    if data.empty:
        raise ValueError(f"no theory_compare rows for task {task!r}")
    q = int(data.q_layer.max())
    data = data[data.q_layer == q]
    cs = sorted(data.c_layer.unique(), reverse=True)
    if c_layers == "last":
        cs = cs[:1]
    elif c_layers != "all":
        raise ValueError(f"c_layers={c_layers!r} is not valid: 'all' or 'last'")
    measured_pos = data.lam[(data.point == "measured") & (data.lam > 0)]
    zero_x = float(measured_pos.min()) / 10.0 if len(measured_pos) else 1.0

    def xs(lam: pd.Series) -> np.ndarray:
        lam = lam.to_numpy(np.float64)
        return np.where(lam > 0, lam, zero_x)

    titles = []
    for c in cs:
        for metric in PANEL_METRICS:
            sel = data[
                (data.c_layer == c)
                & (data["mode"] == "decode")
                & (data.metric == metric)
                & (data.kind == "prediction")
            ]
            r2 = [
                f"{m.split('_')[0]} {r_squared(s.measured, s.predicted):.2f}"
                for m, s in sel.groupby("model", sort=False)
            ]
            line = f"<br><sup>R² {', '.join(r2)}</sup>" if r2 else ""
            titles.append(f"c={c}: {LABELS[metric]}{line}")
    fig = make_subplots(
        rows=len(cs),
        cols=len(PANEL_METRICS),
        subplot_titles=titles,
        vertical_spacing=0.3 / len(cs) if len(cs) > 1 else 0.1,
        horizontal_spacing=0.07,
    )
    fig.update_annotations(font_size=12)
    shown = set()
    for r, c in enumerate(cs, start=1):
        for col, metric in enumerate(PANEL_METRICS, start=1):
            panel = data[(data.c_layer == c) & (data.metric == metric)]
            for model, (color, dash, label) in MODEL_STYLE.items():
                for kind in ("prediction", "lower_bound"):
                    curve = panel[
                        (panel.model == model) & (panel.kind == kind) & (panel.point == "grid")
                    ].sort_values("lam")
                    if curve.empty:
                        continue
                    name = label if kind == "prediction" else f"Thm 3.1 accuracy bound: {model}"
                    fig.add_trace(
                        go.Scatter(
                            x=xs(curve.lam),
                            y=curve.predicted,
                            mode="lines",
                            name=name,
                            legendgroup=name,
                            showlegend=name not in shown,
                            visible=True if kind == "prediction" else "legendonly",
                            line={
                                "color": color,
                                "dash": dash if kind == "prediction" else "dashdot",
                                "width": 2 if kind == "prediction" else 1,
                            },
                            hovertemplate=f"{name}<br>lambda=%{{x:.3g}}<br>{metric}="
                            "%{y:.4f}<extra></extra>",
                        ),
                        row=r,
                        col=col,
                    )
                    shown.add(name)
            for mode, symbol in (("decode", "circle"), ("patch", "diamond-open")):
                # the measured values repeat on every model's rows: keep one per lambda
                pts = (
                    panel[(panel["mode"] == mode) & (panel.kind == "prediction")]
                    .drop_duplicates("lam")
                    .sort_values("lam")
                )
                if pts.empty:
                    continue
                name = f"measured ({mode}, 95% CI)"
                fig.add_trace(
                    go.Scatter(
                        x=xs(pts.lam),
                        y=pts.measured,
                        error_y=ci_error_y(pts.measured, pts.ci_low, pts.ci_high, thickness=1),
                        mode="markers",
                        marker={"symbol": symbol, "size": 8, "color": "#000"},
                        name=name,
                        legendgroup=name,
                        showlegend=name not in shown,
                        visible=True if mode == "decode" else "legendonly",
                        text=[
                            f"{mode} c={c} lambda={lam:g}<br>{metric}={v:.4f} "
                            f"[{lo:.4f}, {hi:.4f}] n={n}"
                            for lam, v, lo, hi, n in zip(
                                pts.lam, pts.measured, pts.ci_low, pts.ci_high, pts.n, strict=True
                            )
                        ],
                        hovertemplate="%{text}<extra></extra>",
                    ),
                    row=r,
                    col=col,
                )
                shown.add(name)
            ticks = sorted(set(data.lam[data.point == "measured"].tolist()))
            fig.update_xaxes(
                type="log",
                tickvals=[zero_x if t == 0 else t for t in ticks],
                ticktext=[f"{t:g}" for t in ticks],
                title_text="lambda" if r == len(cs) else None,
                row=r,
                col=col,
            )
            if metric != "label_entropy":
                fig.update_yaxes(range=[-0.02, 1.02], row=r, col=col)
    fig.update_layout(
        title=f"Theory vs measurement — {task} (q={q}; decode mode)",
        height=340 * len(cs) + 140,
        template="plotly_white",
        legend={"font": {"size": 10}},
    )
    return fig


register_figure("theory_compare", theory_compare_figure)

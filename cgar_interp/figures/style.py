"""The shared look of every figure: palette, line dashes, hover template, interval bars and text.

A leaf module (plotly, pandas and the standard library only): every figure family imports its
helpers from here, never from another family or from the registry.

>>> ci_text(0.5, 0.25, 0.75)
'0.500 [0.250, 0.750]'
>>> lam_label(0.1), lam_label(10.0)
('0.1', '10')
>>> ci_error_y(2.0, 1.5, 3.0, thickness=1)["arrayminus"]
0.5
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "DASH",
    "HOVER",
    "PALETTE",
    "ci_error_y",
    "ci_text",
    "grid",
    "lam_label",
]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
"""Curve colours, cycled in order (the colour of a curve is its index modulo the length)."""

DASH = {"decode": "solid", "patch": "dash"}
"""Line dash of a context-gate mode."""

HOVER = "%{text}<extra></extra>"
"""Hover template that shows a trace's ``text`` and nothing else (no trace-name box)."""


def lam_label(lam: float) -> str:
    """A lambda as an axis category or hover label (``0.1``, ``10``)."""
    return f"{lam:g}"


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


def ci_band(sel: pd.DataFrame, fillcolor: str) -> go.Scatter:
    """A shaded band from ``ci_low`` to ``ci_high`` along ``layer`` (no legend, no hover)."""
    return go.Scatter(
        x=list(sel.layer) + list(sel.layer)[::-1],
        y=list(sel.ci_high) + list(sel.ci_low)[::-1],
        fill="toself",
        mode="lines",
        fillcolor=fillcolor,
        line={"width": 0},
        hoverinfo="skip",
        showlegend=False,
    )


def ci_text(value: float, low: float, high: float) -> str:
    """A value with its interval for hover text: ``0.500 [0.250, 0.750]``."""
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def grid(sel: pd.DataFrame, layers, heads, column: str = "value") -> list[list[float | None]]:
    """A layer x head heatmap's ``z`` from rows indexed by ``(layer, head)`` (None where a head
    has no row)."""
    return [
        [float(sel.loc[(layer, h), column]) if (layer, h) in sel.index else None for h in heads]
        for layer in layers
    ]

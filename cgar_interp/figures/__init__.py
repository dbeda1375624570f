"""Plotly figures of probe tables. Every point's hover text carries value, interval and n.

Figures are built from the tidy tables alone, so a figure can be rebuilt from a run directory
without the model (:func:`figures_for`).

Layout (imports point down only: this package imports the families, each family imports only
:mod:`.style` and :mod:`.registry`, both leaves):

- :mod:`.style`: the shared look (palette, hover template, interval bars and text, grids);
- :mod:`.registry`: :class:`FigureKey` (a figure's name), :class:`FigureSpec`,
  :func:`register_figure` and the registry :data:`FIGURES`;
- one module per table family, each registering its figures with one
  :func:`register_figure` call per table: :mod:`.gate` (context gate, task vectors, k-shot
  sweep), :mod:`.theory` (theory vs measurement), :mod:`.hopfield` (Hopfield heads and
  regimes), :mod:`.subspace`, :mod:`.mediation` (head mediation);
- :mod:`.simulations`: the gated-memory simulations' figures (not run tables, so not
  registered).

A new probe's figure: a builder ``build(table, task) -> go.Figure`` and
``register_figure("<table>", build)`` in a module of this package, imported below.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

# the families register their figures on import, in this order (the order of figures_for)
# isort: off
from . import gate, theory, hopfield, subspace, mediation

# isort: on
from .gate import context_gate_figure, shots_figure, task_vector_figure
from .hopfield import hopfield_heads_figure, hopfield_regimes_figure
from .mediation import head_mediation_figure, head_mediation_heads_figure
from .registry import (
    FIGURES,
    FigureKey,
    FigureSpec,
    build_figures,
    register_figure,
    section_rank,
    section_title,
)
from .simulations import simulation_figures
from .style import DASH, HOVER, PALETTE, ci_error_y
from .subspace import subspace_figure
from .theory import theory_compare_figure

__all__ = [
    "DASH",
    "FIGURES",
    "HOVER",
    "PALETTE",
    "FigureKey",
    "FigureSpec",
    "build_figures",
    "ci_error_y",
    "context_gate_figure",
    "figures_for",
    "gate",
    "head_mediation_figure",
    "head_mediation_heads_figure",
    "hopfield",
    "hopfield_heads_figure",
    "hopfield_regimes_figure",
    "mediation",
    "register_figure",
    "section_rank",
    "section_title",
    "shots_figure",
    "simulation_figures",
    "subspace",
    "subspace_figure",
    "task_vector_figure",
    "theory",
    "theory_compare_figure",
]


def figures_for(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Every figure the tables support, named ``<table>-<task>`` (``str`` of its
    :class:`FigureKey`; :func:`build_figures` keeps the keys typed).

    In a k-shot sweep the per-probe figures show the largest k, and ``shots-<task>`` shows
    the curves against k.
    """
    return {str(key): fig for key, fig in build_figures(tables).items()}

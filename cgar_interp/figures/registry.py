"""Which figure reads which table: figure keys, figure specs and the registry.

A leaf module (pandas, plotly and the standard library only). Each figure family module
registers its figures here with one :func:`register_figure` call per table;
:mod:`cgar_interp.figures` imports the families (so they register) and builds the figures of a
run with :func:`build_figures`.

A figure is named by a :class:`FigureKey`, ``(table, task)``, whose ``str()`` is the figure's
name everywhere a name is written: file names (``figures/<name>.html``), report anchors
(``fig-<name>``) and the claims ledger's ``figure`` column. Table names hold no ``-``, task
names may (``sst2-mini``), so a name splits at its first ``-``:

>>> key = FigureKey.parse("context_gate-sst2-mini")
>>> key.table, key.task
('context_gate', 'sst2-mini')
>>> str(key)
'context_gate-sst2-mini'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from ..shots import at_shots, sweep_shots

__all__ = [
    "FIGURES",
    "FigureKey",
    "FigureSpec",
    "build_figures",
    "register_figure",
    "section_rank",
    "section_title",
]


@dataclass(frozen=True, order=True)
class FigureKey:
    """The name of one figure: the table (or sweep view) it draws and the task.

    Attributes:
        table: a table name (``context_gate``, ``hopfield_heads``, ...), or ``shots`` for the
            k-shot sweep view; never holds ``-``.
        task: the task's name; may hold ``-``.
    """

    table: str
    task: str

    def __post_init__(self) -> None:
        if not self.table or "-" in self.table:
            raise ValueError(f"a figure's table name is non-empty without '-': {self.table!r}")
        if not self.task:
            raise ValueError(f"figure {self.table!r} has an empty task name")

    def __str__(self) -> str:
        return f"{self.table}-{self.task}"

    @classmethod
    def parse(cls, name: str | FigureKey) -> FigureKey:
        """The key of a figure name ``<table>-<task>`` (split at the first ``-``).

        Raises:
            ValueError: the name has no ``-``, or an empty table or task.
        """
        if isinstance(name, FigureKey):
            return name
        table, sep, task = name.partition("-")
        if not sep:
            raise ValueError(f"{name!r} is not a figure name '<table>-<task>'")
        return cls(table, task)


TableFigure = Callable[[pd.DataFrame, str], go.Figure]
"""Builds one task's figure from one table: ``build(table, task)``."""

SweepFigure = Callable[[dict[str, pd.DataFrame], str], go.Figure]
"""Builds one task's figure of a k-shot sweep from all the run's tables: ``build(tables, task)``."""


@dataclass(frozen=True)
class FigureSpec:
    """One registered figure family member.

    Attributes:
        table: the key's first part; for a table figure, the table it draws.
        build: ``build(table, task)``, or ``build(tables, task)`` where ``sweep``.
        section: the report's section title for these figures.
        rank: sections are ordered by ``(rank, figure name)``; 0 puts one first.
        sweep: built only in a k-shot sweep, from all tables, once per task of the
            ``context_gate`` table (the sweep's own table); a table figure of a sweep draws
            the largest k.
    """

    table: str
    build: TableFigure | SweepFigure
    section: str
    rank: int = 1
    sweep: bool = False

    def __call__(self, table, task: str) -> go.Figure:
        """Build one figure (``FIGURES[name](table, task)``, as when the registry held bare
        builders)."""
        return self.build(table, task)


FIGURES: dict[str, FigureSpec] = {}
"""The registry: table name -> its figure spec, in registration order."""


def register_figure(
    table: str,
    build: TableFigure | SweepFigure,
    *,
    section: str | None = None,
    rank: int = 1,
    sweep: bool = False,
) -> FigureSpec:
    """Register the figure of ``table`` (one call in the figure's own family module).

    Args:
        table: the table it draws (the figure key's first part); no ``-``.
        build: ``build(table, task) -> go.Figure`` (or ``build(tables, task)`` if ``sweep``).
        section: the report's section title (default: the table name with spaces).
        rank: 0 puts the section first in the report; otherwise sections follow by name.
        sweep: a k-shot sweep figure (see :class:`FigureSpec`).

    Returns:
        the spec, as stored in :data:`FIGURES`.

    Raises:
        ValueError: the table already has a figure, or its name holds ``-``.
    """
    if not table or "-" in table:
        raise ValueError(f"a figure's table name is non-empty without '-': {table!r}")
    if table in FIGURES:
        raise ValueError(f"table {table!r} already has a figure ({FIGURES[table].build})")
    spec = FigureSpec(
        table=table,
        build=build,
        section=section if section is not None else table.replace("_", " "),
        rank=rank,
        sweep=sweep,
    )
    FIGURES[table] = spec
    return spec


def section_title(table: str) -> str:
    """The report section of a table's figures (the table name with spaces if unregistered)."""
    spec = FIGURES.get(table)
    return spec.section if spec is not None else table.replace("_", " ")


def section_rank(table: str) -> int:
    """The rank of a table's section (1 if unregistered): see :class:`FigureSpec`."""
    spec = FIGURES.get(table)
    return spec.rank if spec is not None else 1


def build_figures(tables: dict[str, pd.DataFrame]) -> dict[FigureKey, go.Figure]:
    """Every registered figure the tables support (table figures first, in registration order,
    then the sweep figures).

    In a k-shot sweep the table figures show the largest k, and each sweep figure shows the
    curves against k.
    """
    out: dict[FigureKey, go.Figure] = {}
    ks = sweep_shots(tables)
    for spec in FIGURES.values():
        if spec.sweep:
            continue
        table = tables.get(spec.table)
        if table is None or table.empty:
            continue
        if ks:
            table = at_shots(table, ks[-1])
        for task in table.task.unique():
            out[FigureKey(spec.table, task)] = spec.build(table, task)
    if ks:
        for spec in FIGURES.values():
            if spec.sweep:
                for task in tables["context_gate"].task.unique():
                    out[FigureKey(spec.table, task)] = spec.build(tables, task)
    return out

"""k-shot sweeps: which k a table holds, and its rows at one k.

A k-shot sweep (``shots = [..]`` in a suite) files every probe's rows with a ``shots`` column;
zero-shot rows, which every k shares, are filed once under ``shots = 0``. Figures, the report's
key numbers and the claims read a sweep at its largest k; these helpers are the one place that
says how. A table without a ``shots`` column (a run of one k) is returned as it is.

>>> import pandas as pd
>>> t = pd.DataFrame({"shots": [0, 2, 4, 4], "value": [1, 2, 3, 4]})
>>> largest_k(t)
4
>>> at_shots(t, 4)["value"].tolist()
[1, 3, 4]
>>> at_largest_k(t, keep_zero=False)["value"].tolist()
[3, 4]
"""

from __future__ import annotations

import pandas as pd

SHOTS = "shots"


def shot_counts(frame: pd.DataFrame | None) -> list[int]:
    """The k >= 1 the table holds, ascending (empty without a ``shots`` column)."""
    if frame is None or SHOTS not in frame.columns:
        return []
    return sorted(int(k) for k in frame[SHOTS].unique() if k >= 1)


def largest_k(frame: pd.DataFrame | None) -> int | None:
    """The largest k >= 1 of the table, or None (no ``shots`` column, or zero-shot rows only)."""
    ks = shot_counts(frame)
    return ks[-1] if ks else None


def at_shots(frame: pd.DataFrame, k: int | None, keep_zero: bool = True) -> pd.DataFrame:
    """The rows of one k (and the zero-shot rows every k shares, if ``keep_zero``); the table
    as it is where it has no ``shots`` column or ``k`` is None."""
    if k is None or SHOTS not in frame.columns:
        return frame
    return frame[frame[SHOTS].isin([0, k] if keep_zero else [k])]


def at_largest_k(frame: pd.DataFrame, keep_zero: bool = True) -> pd.DataFrame:
    """:func:`at_shots` at the table's own largest k."""
    return at_shots(frame, largest_k(frame), keep_zero=keep_zero)


def sweep_shots(tables: dict[str, pd.DataFrame]) -> list[int]:
    """The k >= 1 of a run's k-shot sweep, read from its context-gate table (empty unless the
    run has more than one k)."""
    ks = shot_counts(tables.get("context_gate"))
    return ks if len(ks) > 1 else []

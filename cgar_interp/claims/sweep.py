"""A k-shot sweep as the claims read it: the rows of the largest k, and the note that says so.

Every claim reads a sweep at its largest k (:mod:`cgar_interp.shots`, as the figures do).
"""

from __future__ import annotations

import pandas as pd

from ..shots import at_largest_k, at_shots, largest_k


def largest_shots(frame: pd.DataFrame | None, keep_zero: bool = False) -> pd.DataFrame | None:
    """The rows of the largest k of a k-shot sweep (with the k = 0 rows if ``keep_zero``);
    None for a missing or empty table."""
    if frame is None or frame.empty:
        return None
    return at_largest_k(frame, keep_zero=keep_zero)


def at_largest_k_noted(table: pd.DataFrame) -> tuple[pd.DataFrame, int | None]:
    """The largest k's rows (and the zero-shot rows it shares), as the figures; and that k
    (None when the table is not a sweep)."""
    k = largest_k(table)
    return at_shots(table, k), k


def shots_note(k: int | None) -> str:
    """The sentence a row's note ends with in a sweep (empty outside one)."""
    return f" k-shot sweep: read at the largest k = {k}." if k is not None else ""

"""Reading the probes' per-query tables (``<probe>_queries``) as the claims need them.

Every probe that feeds a verdict keeps its per-query values (``ProbeContext.rows(...,
queries=...)``): one row per (keys of the tidy row, ``metric``, ``query``, ``split``) with the
``value``. A claim selects on the ``fit`` split and reads the ``eval`` split, pairing value and
control on the same queries (:func:`paired`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..shots import at_largest_k
from .stats import Samples


def query_table(tables: dict[str, pd.DataFrame], kind: str) -> pd.DataFrame | None:
    """The per-query table of probe ``kind`` at the largest k of a sweep (None if absent)."""
    frame = tables.get(f"{kind}_queries")
    if frame is None or frame.empty:
        return None
    return at_largest_k(frame, keep_zero=True) if "shots" in frame.columns else frame


def select(frame: pd.DataFrame, split: str | None = "eval", **keys) -> pd.DataFrame:
    """The rows of ``split`` (None: any) whose columns equal ``keys`` (floats compared with
    ``isclose``)."""
    mask = np.ones(len(frame), dtype=bool)
    if split is not None:
        mask &= (frame["split"] == split).to_numpy()
    for name, want in keys.items():
        col = frame[name]
        if isinstance(want, float) and pd.api.types.is_float_dtype(col):
            mask &= np.isclose(col.to_numpy(dtype=float), want)
        else:
            mask &= (col == want).to_numpy()
    return frame[mask]


def values(frame: pd.DataFrame, split: str | None = "eval", **keys) -> pd.Series:
    """Per-query values (index: query id, sorted) of the rows :func:`select` picks; one value
    per query (a ValueError names the keys when they leave several)."""
    sel = select(frame, split, **keys)
    if sel["query"].duplicated().any():
        raise ValueError(f"the keys {keys} leave several rows per query; add keys to pick one")
    return sel.set_index("query")["value"].sort_index()


def paired(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(a [n], b [n])`` on the queries both have, in query order."""
    both = a.index.intersection(b.index)
    return a.loc[both].to_numpy(dtype=float), b.loc[both].to_numpy(dtype=float)


def mean_ci(values_: np.ndarray) -> tuple[float, float, float]:
    """Mean and a 95% percentile-bootstrap interval of the mean (1000 resamples, seed 0): the
    descriptive interval of a row's value or control (the verdict reads the paired one)."""
    from ..metrics import bootstrap_ci

    arr = np.asarray(values_, float)
    low, high = bootstrap_ci(arr, n_boot=1000, seed=0)
    return float(arr.mean()), low, high


def paired_fields(value: np.ndarray, control: np.ndarray) -> dict:
    """The fields of a ``difference`` Claim from paired per-query values (``[n]`` each, the
    same queries in the same order): value and control with their descriptive 95% intervals
    (:func:`mean_ci`), the paired ``samples`` the ledger resamples, and ``n``."""
    v, lo, hi = mean_ci(value)
    c, c_lo, c_hi = mean_ci(control)
    return {
        "value": v,
        "ci_low": lo,
        "ci_high": hi,
        "control_value": c,
        "control_ci_low": c_lo,
        "control_ci_high": c_hi,
        "samples": Samples.paired(value, control),
        "n": int(len(value)),
    }

"""Reading the theory tables as claims 5 (:mod:`.theory_fit`) and 6 (:mod:`.gate_regime`) do:
the layer count ``L``, a task's query layer, and numbers in notes."""

from __future__ import annotations

import math

import pandas as pd


def n_layers_of(manifest: dict, *frames: pd.DataFrame | None) -> int | None:
    """``L``: the manifest's layer count, else the query layer of the first table with patch
    rows (patch rows have ``q = L``); None when neither says."""
    arch = manifest.get("architecture") or {}
    if arch.get("n_layers"):
        return int(arch["n_layers"])
    for frame in frames:
        if frame is not None and "mode" in frame and (frame["mode"] == "patch").any():
            return int(frame[frame["mode"] == "patch"].q_layer.max())
    return None


def query_layer(frame: pd.DataFrame, n_layers: int | None) -> int:
    """The query layer of a task's rows: ``L`` where present (patch rows have q = L)."""
    qs = set(int(q) for q in frame.q_layer.unique())
    return n_layers if n_layers in qs else max(qs)


def fmt(x: float) -> str:
    """``x`` to 3 significant digits, ``"nan"`` when it is not finite.

    >>> fmt(0.123456), fmt(float("inf"))
    ('0.123', 'nan')
    """
    return "nan" if not math.isfinite(x) else f"{x:.3g}"

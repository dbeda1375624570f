"""The probe contract, the probe registry and the per-task inputs every probe shares.

A probe is a frozen config dataclass registered under its TOML ``kind`` plus a ``run`` function
``(config, ProbeContext) -> tidy DataFrame``. It declares the residual layers it reads; the engine
captures them once per task for all probes (:meth:`ProbeContext.captures`), and interventions go
through :func:`cgar_interp.capture.resume_variants`. Rows are tidy:
``task, probe, ..., metric, value, n, ci_low, ci_high``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..capture import capture_many
from ..metrics import gold_probability, query_metrics, summarise
from ..models import ModelHandle
from ..tokens import TokenBatch


class NonFiniteActivation(FloatingPointError):
    """NaN or inf in captured activations (e.g. fp16 overflow): never averaged into a metric."""


def check_finite(run, task: str, kind: str, rows: Tensor) -> None:
    """Raise naming the site (layer) and the prompt (query row) of the first non-finite value."""
    tensors = dict(run.captures)
    if run.logits is not None:
        tensors["logits"] = run.logits
    for name, value in tensors.items():
        bad = ~torch.isfinite(value)
        if bad.any():
            row = int(bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0])
            raise NonFiniteActivation(
                f"non-finite values at {name} for task {task!r}, {kind} prompt of query row "
                f"{int(rows[row])}: the model overflowed or was fed bad input; try dtype float32"
            )


def first_non_finite(table: pd.DataFrame):
    """The first row of a tidy table whose ``value`` is NaN or infinite, else None (a probe
    names its keys in the error it raises)."""
    bad = ~np.isfinite(table["value"].to_numpy(dtype=float))
    return table[bad].iloc[0] if bad.any() else None


ZeroShotRows = Callable[[str, pd.DataFrame], "pd.Series | bool"]


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe.

    ``zero_shot_rows(table name, frame)`` marks the rows that measure zero-shot prompts: a
    k-shot sweep files them under ``shots = 0`` once, since every k shares them.
    """

    kind: str
    config_cls: type
    run: Callable[..., pd.DataFrame]
    doc: str
    zero_shot_rows: ZeroShotRows | None = None


PROBES: dict[str, ProbeSpec] = {}


def register_probe(
    kind: str, config_cls: type, doc: str = "", zero_shot_rows: ZeroShotRows | None = None
):
    """Decorator: register ``run(config, ctx)`` as probe ``kind``; duplicates are refused."""

    def decorate(run):
        if kind in PROBES:
            raise ValueError(f"probe kind {kind!r} is already registered")
        PROBES[kind] = ProbeSpec(
            kind, config_cls, run, doc or (run.__doc__ or "").split("\n")[0], zero_shot_rows
        )
        return run

    return decorate


def tag_shots(spec: ProbeSpec, tables: dict[str, pd.DataFrame], k: int) -> dict[str, pd.DataFrame]:
    """Every table gets a ``shots`` column: ``k``, or 0 on the probe's zero-shot rows."""
    out = {}
    for name, frame in tables.items():
        frame = frame.copy()
        frame["shots"] = k
        if spec.zero_shot_rows is not None and len(frame):
            zero = spec.zero_shot_rows(name, frame)
            if zero is not False:
                frame.loc[zero, "shots"] = 0
        out[name] = frame
    return out


def get_probe(kind: str) -> ProbeSpec:
    if kind not in PROBES:
        raise ValueError(f"unknown probe kind {kind!r}; valid kinds: {', '.join(sorted(PROBES))}")
    return PROBES[kind]


@dataclass(frozen=True)
class TaskInputs:
    """One task's prompts, aligned by query: row ``i`` of every batch is query ``i``.

    Attributes:
        task: task name. ``classes``: class names; ``label_ids``: ``[K]`` first label tokens.
        gold: ``[n]`` gold class per query. ``fit`` / ``eval``: disjoint query indices.
        zero: ``[n]`` zero-shot prompts; ``icl``: ``[n]`` prompts with demonstrations;
        icl_shuffled: ``[n]`` the same demonstrations with labels shuffled (or None).
    """

    task: str
    classes: tuple[str, ...]
    label_ids: Tensor
    gold: Tensor
    fit: Tensor
    eval: Tensor
    zero: TokenBatch
    icl: TokenBatch
    icl_shuffled: TokenBatch | None = None


@dataclass
class TaskCaptures:
    """Last-position residuals at the declared layers and last-position logits, per prompt kind."""

    layers: tuple[int, ...]
    resid: dict[str, dict[int, Tensor]]  # kind -> layer -> [n, d_model]
    logits: dict[str, Tensor | None]  # kind -> [n, vocab] (None where only fit rows ran)


@dataclass
class ProbeContext:
    """What a probe receives: the model, the task's inputs, shared captures, run settings."""

    handle: ModelHandle
    inputs: TaskInputs
    layers: tuple[int, ...]
    seed: int = 0
    n_boot: int = 1000
    batch_size: int = 16
    progress: Callable[[str, int], Callable[[int], None]] | None = None
    keep_states: bool = False
    # the run's self-check (cgar_interp.selfcheck.SelfCheck): probes that verify a reading
    # against a recomputation record it there, so no such difference is ever silent
    self_check: object | None = None
    # tables the suite's earlier probes produced for this task (name -> frame), so that a
    # probe can read another's results (head_mediation reads hopfield_heads)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    _captures: TaskCaptures | None = field(default=None, repr=False)
    _zero_states: list | None = field(default=None, repr=False)

    def captures(self) -> TaskCaptures:
        """Capture (once) ``resid.{l}`` at the last position for the declared layers + logits.

        With ``keep_states``, the zero-shot pass over the *eval* queries also keeps its KV
        caches (:meth:`zero_states`), so probes that intervene at the last position of those
        prompts run one-token suffix passes instead of a second forward pass.
        """
        if self._captures is None:
            sites = [f"resid.{layer}" for layer in self.layers]
            resid, logits = {}, {}
            n = self.inputs.gold.shape[0]
            every = torch.arange(n)
            kinds = {"zero": (self.inputs.zero, every), "icl": (self.inputs.icl, every)}
            if self.inputs.icl_shuffled is not None:  # only ever averaged over fit queries
                kinds["icl_shuffled"] = (self.inputs.icl_shuffled, self.inputs.fit)
            for kind, (batch, rows) in kinds.items():
                parts = [(rows, False)]
                if kind == "zero" and self.keep_states:
                    rest = every[~torch.isin(every, self.inputs.eval)]
                    parts = [(self.inputs.eval, True)] + ([(rest, False)] if len(rest) else [])
                tick = (
                    self.progress(f"{self.inputs.task}: capture {kind}", len(rows))
                    if self.progress
                    else None
                )
                # rows not captured stay NaN, so a misuse cannot pass silently
                resid[kind] = {
                    layer: torch.full((n, self.handle.arch.d_model), float("nan"))
                    for layer in self.layers
                }
                logits[kind] = None
                for part, keep in parts:
                    subset = batch if len(part) == n else batch.select(part)
                    run = capture_many(
                        self.handle,
                        subset,
                        sites,
                        -1,
                        batch_size=self.batch_size,
                        progress=tick,
                        keep_states=keep,
                    )
                    check_finite(run, self.inputs.task, kind, part)
                    for layer in self.layers:
                        resid[kind][layer][part] = run[f"resid.{layer}"].float()
                    if len(rows) == n:
                        if logits[kind] is None:
                            logits[kind] = torch.full((n, run.logits.shape[-1]), float("nan"))
                        logits[kind][part] = run.logits.float()
                    if keep:
                        self._zero_states = run.states
            self._captures = TaskCaptures(self.layers, resid, logits)
        return self._captures

    def zero_states(self) -> list | None:
        """``(index into eval, LastTokenState)`` per batch of the eval queries' zero-shot pass.

        ``None`` unless the context was made with ``keep_states`` (then
        :func:`~cgar_interp.capture.resume_variants` runs its own forward pass).
        """
        if not self.keep_states:
            return None
        self.captures()
        return self._zero_states

    def score(self, logits: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Per-query metrics of ``logits [..., b, vocab]`` for the queries ``indices [b]``."""
        return query_metrics(logits, self.inputs.label_ids, self.inputs.gold[indices])

    def gold_probability(self, logits: Tensor, indices: Tensor) -> Tensor:
        """``[..., b]`` probability of each query's gold label token (first token, full
        vocabulary): the ``gold_mass`` of :meth:`score` without the other metrics."""
        return gold_probability(logits, self.inputs.label_ids[self.inputs.gold[indices]])

    def rows(self, per_query: dict[str, Tensor], **keys) -> list[dict]:
        """Tidy rows (one per metric, bootstrap CI) tagged with ``keys``."""
        return [{**keys, **row} for row in summarise(per_query, n_boot=self.n_boot, seed=self.seed)]

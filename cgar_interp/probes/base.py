"""The probe registry, the per-task inputs every probe shares and the context it runs in.

A probe is a frozen config dataclass (a :class:`~cgar_interp.probes.protocol.ProbeConfig`)
registered under its TOML ``kind`` plus a ``run`` function ``(config, ProbeContext) -> tidy
DataFrame``. Its config declares the residual layers it reads; the engine captures them once
per task for all probes (:meth:`ProbeContext.captures`), and interventions go through
:func:`cgar_interp.capture.resume_variants`. Rows are tidy:
``task, probe, ..., metric, value, n, ci_low, ci_high``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..capture import CaptureJob, cache_read_outputs, capture_jobs, capture_many, is_key_axis_output
from ..metrics import GoldProbability, gold_probability, query_metrics, summarise
from ..models import ModelHandle, RunResult
from ..sites import site_name, site_names
from ..tokens import TokenBatch
from .inputs import CONTROL_PROMPT_KINDS, PROMPT_KINDS_SHARED, SharedRead, TaskInputs
from .protocol import ProbeConfig


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


QUERIES_SUFFIX = "_queries"


def query_table_name(kind: str) -> str:
    """The per-query table of probe ``kind`` (``context_gate`` -> ``context_gate_queries``):
    every value :meth:`ProbeContext.rows` was given with its ``queries``, one row per query."""
    return f"{kind}{QUERIES_SUFFIX}"


ZeroShotRows = Callable[[str, pd.DataFrame], "pd.Series | bool"]


@dataclass(frozen=True)
class ProbeSpec:
    """A registered probe.

    ``zero_shot_rows(table name, frame)`` marks the rows that measure zero-shot prompts: a
    k-shot sweep files them under ``shots = 0`` once, since every k shares them.
    """

    kind: str
    config_cls: type[ProbeConfig]
    run: Callable[..., pd.DataFrame]
    doc: str
    zero_shot_rows: ZeroShotRows | None = None


PROBES: dict[str, ProbeSpec] = {}


def register_probe(
    kind: str,
    config_cls: type[ProbeConfig],
    doc: str = "",
    zero_shot_rows: ZeroShotRows | None = None,
):
    """Decorator: register ``run(config, ctx)`` as probe ``kind``; duplicates are refused, and
    so is a config class that does not inherit :class:`ProbeConfig` (the engine reads a
    probe's declarations through its methods)."""

    def decorate(run):
        if not (isinstance(config_cls, type) and issubclass(config_cls, ProbeConfig)):
            raise TypeError(
                f"probe {kind!r}: config class {config_cls!r} must inherit "
                "cgar_interp.probes.protocol.ProbeConfig"
            )
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


def inputs_digest(inputs: TaskInputs) -> str:
    """sha256 of a task's prompts, labels and splits (what a kept shared pass was run for)."""
    import hashlib

    digest = hashlib.sha256(repr((inputs.task, inputs.classes)).encode())
    tensors = [inputs.label_ids, inputs.gold, inputs.fit, inputs.eval]
    for name in ("zero", "icl", *CONTROL_PROMPT_KINDS):
        batch = getattr(inputs, name)
        digest.update(name.encode() + (b"-" if batch is None else b"+"))
        if batch is not None:
            tensors += [batch.ids, batch.lengths]
    for tensor in tensors:
        t = torch.as_tensor(tensor).detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class _Group:
    """Rows of one prompt kind that the shared pass ran together, and what it read."""

    rows: Tensor  # [r] query indices
    run: RunResult


@dataclass
class TaskCaptures:
    """Last-position residuals at the declared layers and last-position logits, per prompt kind."""

    layers: tuple[int, ...]
    resid: dict[str, dict[int, Tensor]]  # kind -> layer -> [n, d_model]
    logits: dict[str, Tensor | None]  # kind -> [n, vocab] (NaN rows not run; None: none ran)


@dataclass
class ProbeContext:
    """What a probe receives: the model, the task's inputs, shared captures, run settings.

    ``reads`` are the :class:`SharedRead` s the suite's probes declared (the runner builds them
    with :meth:`for_probes`): the shared capture pass reads them too, and :meth:`read` returns
    them without another forward pass.
    """

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
    reads: tuple[SharedRead, ...] = ()
    # where the shared pass is kept between sessions (a remote run's run directory:
    # cgar_interp.remote_jobs.SharedCaptureFile, with load() -> dict | None and save(dict)):
    # a resumed run starts from it instead of requesting the pass again
    shared_store: object | None = None
    _captures: TaskCaptures | None = field(default=None, repr=False)
    _groups: dict[str, list[_Group]] | None = field(default=None, repr=False)
    _ran_base: bool = field(default=False, repr=False)
    _stored_reads: list = field(default_factory=list, repr=False)  # the reads the pass ran
    _query_records: list = field(default_factory=list, repr=False)

    @classmethod
    def for_probes(
        cls, handle: ModelHandle, inputs: TaskInputs, configs: list[ProbeConfig], **settings
    ):
        """The context of a suite whose probes have ``configs``: the residual layers they read
        (``needed_layers``), whether some resumes the zero-shot prompts, and every
        :class:`SharedRead` they declare. ``settings`` go to the constructor (``layers`` given
        there wins, e.g. a resumed run that keeps the whole suite's layers)."""
        n_layers = handle.n_layers
        layers = sorted({layer for c in configs for layer in c.needed_layers(n_layers)})
        reads = tuple(
            read
            for c in configs
            for read in c.shared_reads(inputs, n_layers)
            if not (read.local_only and handle.remote)
        )
        settings.setdefault("keep_states", any(c.resumes_zero_shot for c in configs))
        return cls(handle, inputs, tuple(settings.pop("layers", layers)), reads=reads, **settings)

    # ----------------------------------------------------------------------------------------
    # the shared pass

    def _kind_batches(self) -> dict[str, tuple[TokenBatch, Tensor]]:
        """Prompt kind -> (its batch, the rows the shared residuals cover)."""
        n = self.inputs.gold.shape[0]
        kinds = {
            "zero": (self.inputs.zero, torch.arange(n)),
            "icl": (self.inputs.icl, torch.arange(n)),
        }
        for kind in CONTROL_PROMPT_KINDS:  # label controls: only averaged over fit queries
            batch = getattr(self.inputs, kind)  # (other rows: a probe declares a SharedRead)
            if batch is not None:
                kinds[kind] = (batch, self.inputs.fit)
        return kinds

    def _all_reads(self) -> list[SharedRead]:
        reads = list(self.reads)
        if self.keep_states:  # the eval queries' zero-shot caches (zero_states)
            reads.append(SharedRead.of("zero", self.inputs.eval, (), keep_states=True))
        return reads

    def _shared_pass(self, base: bool) -> None:
        """Run (once) every declared read, and with ``base`` (or declared layers) the shared
        residuals and logits of every prompt; each prompt kind's rows run in groups of rows
        that the same reads cover, so a read's kept states cover exactly its rows."""
        base = base or bool(self.layers)
        if self._groups is None and self.shared_store is not None:
            self.restore_shared_state(self.shared_store.load())
        if self._groups is not None and (self._ran_base or not base):
            return
        first = self._groups is None
        if first:
            self._groups = {kind: [] for kind in PROMPT_KINDS_SHARED}
            self._stored_reads = self._all_reads()
        reads = self._all_reads() if first else []
        resid_sites = site_names("resid", self.layers)
        n = self.inputs.gold.shape[0]
        covered = {
            kind: {int(r) for g in self._groups[kind] for r in g.rows} for kind in self._groups
        }
        jobs: list[tuple[str, Tensor, CaptureJob]] = []
        for kind, (batch, base_rows) in self._kind_batches().items():
            signature: dict[int, tuple] = {}
            for i, read in enumerate(reads):
                if read.kind == kind:
                    for row in read.rows:
                        signature.setdefault(row, ())
                        signature[row] += (i,)
            if base:
                for row in base_rows.tolist():
                    if row not in covered[kind]:
                        signature[row] = signature.get(row, ()) + ("base",)
            if not signature:
                continue
            groups: dict[tuple, list[int]] = {}
            for row in sorted(signature):
                groups.setdefault(signature[row], []).append(row)
            tick = (
                self.progress(f"{self.inputs.task}: capture {kind}", len(signature))
                if self.progress
                else None
            )
            for sig, rows in groups.items():
                sites = list(resid_sites) if "base" in sig else []
                cache_reads: list[str] = []
                for i in sig:
                    if i != "base":
                        sites += [s for s in reads[i].sites if s not in sites]
                        cache_reads += [c for c in reads[i].cache_reads if c not in cache_reads]
                keep = any(reads[i].keep_states for i in sig if i != "base")
                rows_t = torch.tensor(rows)
                job = CaptureJob(
                    self.handle,
                    batch if len(rows) == n else batch.select(rows_t),
                    sites,
                    -1,
                    batch_size=self.batch_size,
                    progress=tick,
                    keep_states=keep,
                    cache_reads=cache_reads,
                )
                jobs.append((kind, rows_t, job))
        # every group's batches are independent passes: one stream (on NDIF, few requests)
        runs = capture_jobs(self.handle, [job for _, _, job in jobs])
        for (kind, rows_t, _), run in zip(jobs, runs, strict=True):
            check_finite(run, self.inputs.task, kind, rows_t)
            self._groups[kind].append(_Group(rows_t, run))
        self._ran_base = self._ran_base or base
        if self.shared_store is not None:
            state = self.shared_state()
            if state is not None:
                self.shared_store.save(state)

    def release(self, configs_left: list[ProbeConfig]) -> int:
        """Forget what only finished probes read: after a probe's last use of the shared pass,
        the KV caches (and last-position sites other than the residuals) that no probe in
        ``configs_left`` declared are dropped, so a task's peak memory holds only what is
        still to be read. The shared residuals and logits stay (:meth:`captures`). A later
        :meth:`read` of something released runs its own pass, as an undeclared read does.

        Returns:
            the number of kept states dropped (``(rows, LastTokenState)`` pairs).
        """
        n_layers = self.handle.n_layers
        needed = {
            read
            for c in configs_left
            for read in c.shared_reads(self.inputs, n_layers)
            if not (read.local_only and self.handle.remote)
        }
        self.reads = tuple(r for r in self.reads if r in needed)
        self.keep_states = self.keep_states and any(c.resumes_zero_shot for c in configs_left)
        if self._groups is None:
            return 0
        left = self._all_reads()
        sites = {str(self.handle.site(site)) for read in left for site in read.sites}
        sites |= {name for read in left for name in cache_read_outputs(read.cache_reads)}
        dropped = 0
        for kind, groups in self._groups.items():
            readers = [r for r in left if r.kind == kind]
            for group in groups:
                rows = set(group.rows.tolist())
                run = group.run
                mine = [r for r in readers if rows & set(r.rows)]
                if run.states is not None and not any(r.keep_states for r in mine):
                    dropped += len(run.states)
                    run.states = None
                for name in list(run.captures):
                    if not name.startswith("resid.") and name not in sites:
                        del run.captures[name]
        return dropped

    def shared_state(self) -> dict | None:
        """The shared pass so far as plain tensors and containers, with what it was run for
        (the task's prompts, the layers, the declared reads): what
        :meth:`restore_shared_state` takes in another process. None before any pass, or when
        a kept state holds a KV cache (a local model's, which is not kept on disk)."""
        if self._groups is None:
            return None
        groups = {}
        for kind, kind_groups in self._groups.items():
            saved = []
            for group in kind_groups:
                run, states = group.run, None
                if run.states is not None:
                    states = []
                    for indices, state in run.states:
                        if state.cache is not None:
                            return None
                        resid = {int(layer): value for layer, value in state.resid.items()}
                        states.append({"rows": indices, "resid": resid, "lengths": state.lengths})
                saved.append(
                    {
                        "rows": group.rows,
                        "logits": run.logits,
                        "captures": dict(run.captures),
                        "grads": dict(run.grads),
                        "states": states,
                    }
                )
            groups[kind] = saved
        return {
            "format": 1,
            "inputs": inputs_digest(self.inputs),
            "layers": list(self.layers),
            "reads": [
                [
                    r.kind,
                    list(r.rows),
                    list(r.sites),
                    r.keep_states,
                    r.local_only,
                    list(r.cache_reads),
                ]
                for r in self._stored_reads
            ],
            "ran_base": self._ran_base,
            "groups": groups,
        }

    def restore_shared_state(self, state: dict | None) -> bool:
        """Start from a shared pass of another process (:meth:`shared_state`) if it was run
        for these prompts and layers and read everything this context declares (a resumed
        run's context declares the reads of the probes still to run: a subset). Returns
        whether it was taken; otherwise the pass runs as usual."""
        from ..prefix import LastTokenState

        if not state or state.get("format") != 1 or self._groups is not None:
            return False
        stored = [
            SharedRead(k, tuple(rows), tuple(sites), keep, local, tuple(extra[0] if extra else ()))
            for k, rows, sites, keep, local, *extra in state["reads"]
        ]
        if (
            state["inputs"] != inputs_digest(self.inputs)
            or list(state["layers"]) != list(self.layers)
            or not set(self._all_reads()) <= set(stored)
        ):
            return False
        groups: dict[str, list[_Group]] = {kind: [] for kind in PROMPT_KINDS_SHARED}
        for kind, saved in state["groups"].items():
            for group in saved:
                states = None
                if group["states"] is not None:
                    states = [
                        (s["rows"], LastTokenState(None, dict(s["resid"]), s["lengths"]))
                        for s in group["states"]
                    ]
                run = RunResult(
                    logits=group["logits"],
                    captures=dict(group["captures"]),
                    states=states,
                    grads=dict(group["grads"]),
                )
                groups[kind].append(_Group(group["rows"], run))
        self._groups, self._ran_base, self._stored_reads = groups, bool(state["ran_base"]), stored
        return True

    def captures(self) -> TaskCaptures:
        """Capture (once) ``resid.{l}`` at the last position for the declared layers + logits.

        Every prompt runs once: the declared :class:`SharedRead` s are read in the same pass.
        With ``keep_states``, the zero-shot pass over the *eval* queries also keeps its KV
        caches (:meth:`zero_states`), so probes that intervene at the last position of those
        prompts run one-token suffix passes instead of a second forward pass.
        """
        if self._captures is None:
            self._shared_pass(base=True)
            n, d = self.inputs.gold.shape[0], self.handle.arch.d_model
            resid, logits = {}, {}
            for kind in self._kind_batches():
                groups = self._groups[kind]
                # rows not captured stay NaN, so a misuse cannot pass silently
                resid[kind] = {layer: torch.full((n, d), float("nan")) for layer in self.layers}
                logits[kind] = None
                for group in groups:
                    for layer in self.layers:
                        name = site_name("resid", layer)
                        if name in group.run.captures:
                            resid[kind][layer][group.rows] = group.run[name].float()
                    if logits[kind] is None:
                        logits[kind] = torch.full((n, group.run.logits.shape[-1]), float("nan"))
                    logits[kind][group.rows] = group.run.logits.float()
            self._captures = TaskCaptures(self.layers, resid, logits)
        return self._captures

    def read(
        self,
        kind: str,
        rows: Tensor,
        sites,
        *,
        keep_states: bool = False,
        progress: Callable[[int], None] | None = None,
        cache_reads=(),
    ) -> RunResult:
        """``sites`` at the last position of prompt ``kind`` for query ``rows`` (and the
        last-position logits; with ``keep_states`` the KV caches, as ``(indices into rows,
        LastTokenState)`` pairs covering every row once; with ``cache_reads`` their outputs
        among the captures, :func:`~cgar_interp.capture.capture_many`).

        From the shared pass when a declared :class:`SharedRead` has these rows, these sites
        (or more) and keeps states if asked; otherwise its own capture pass
        (:func:`~cgar_interp.capture.capture_many`), with ``progress``.

        Returns:
            a :class:`RunResult` whose tensors are ``[len(rows), ...]`` in the order of ``rows``.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        wanted = SharedRead.of(kind, rows, sites, keep_states, cache_reads=cache_reads)
        batch = getattr(self.inputs, kind)
        if batch is None:
            raise ValueError(f"task {self.inputs.task!r} has no {kind!r} prompts")
        declared = any(
            r.kind == kind
            and r.rows == wanted.rows
            and set(wanted.sites) <= set(r.sites)
            and set(wanted.cache_reads) <= set(r.cache_reads)
            and (r.keep_states or not keep_states)
            for r in self._all_reads()
        )
        if not declared:
            return capture_many(
                self.handle,
                batch.select(rows),
                list(wanted.sites),
                -1,
                batch_size=self.batch_size,
                progress=progress,
                keep_states=keep_states,
                cache_reads=wanted.cache_reads,
            )
        self._shared_pass(base=False)
        position = torch.full((batch.batch_size,), -1, dtype=torch.long)
        position[rows] = torch.arange(len(rows))
        width = int(batch.lengths[rows].max())
        names = [str(self.handle.site(s)) for s in wanted.sites]
        if not self.handle.remote:  # a remote pass computes no cache reads
            names += cache_read_outputs(wanted.cache_reads)
        parts: dict[str, Tensor] = {}
        logits, states = None, []
        for group in self._groups[kind]:
            at = position[group.rows]
            if (at < 0).all():
                continue
            if (at < 0).any():  # cannot happen: groups are cut along every declared read
                raise RuntimeError(f"shared group of {kind!r} rows straddles a declared read")
            for name in names:
                value = group.run[name]
                if name.startswith("attn_pattern.") or is_key_axis_output(name):
                    # key axis: pad (or cut) to this read's width
                    value = torch.nn.functional.pad(value, (0, width - value.shape[-1]))
                if name not in parts:
                    parts[name] = value.new_zeros((len(rows), *value.shape[1:]))
                parts[name][at] = value
            if logits is None:
                logits = group.run.logits.new_zeros((len(rows), group.run.logits.shape[-1]))
            logits[at] = group.run.logits
            if keep_states:
                states += [(at[idx], state) for idx, state in group.run.states]
        return RunResult(logits=logits, captures=parts, states=states if keep_states else None)

    def gold_objective(self, rows: Tensor) -> GoldProbability:
        """The gradient objective of queries ``rows``: each one's gold-label probability
        (:meth:`gold_probability` as a plain object a remote trace can carry)."""
        return GoldProbability(self.inputs.label_ids[self.inputs.gold[rows]])

    def read_gradients(
        self,
        kind: str,
        rows: Tensor,
        sites,
        grad_sites,
        *,
        keep_states: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> RunResult:
        """As :meth:`read`, with one backward pass per batch: ``RunResult.grads`` holds the
        gradient of each query's gold-label probability (first token, full vocabulary: the
        ``gold_mass`` of :meth:`score`, :class:`~cgar_interp.metrics.GoldProbability`) at the
        last position of each of ``grad_sites`` (patchable kinds). Always its own pass (the
        shared pass runs without gradients)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        batch = getattr(self.inputs, kind)
        if batch is None:
            raise ValueError(f"task {self.inputs.task!r} has no {kind!r} prompts")
        return capture_many(
            self.handle,
            batch.select(rows),
            list(sites),
            -1,
            batch_size=self.batch_size,
            progress=progress,
            keep_states=keep_states,
            grad_sites=grad_sites,
            objective=self.gold_objective(rows),
        )

    def zero_states(self) -> list | None:
        """``(index into eval, LastTokenState)`` per batch of the eval queries' zero-shot pass.

        ``None`` unless the context was made with ``keep_states`` (then
        :func:`~cgar_interp.capture.resume_variants` runs its own forward pass).
        """
        if not self.keep_states:
            return None
        self.captures()
        return self.read("zero", self.inputs.eval, (), keep_states=True).states

    def score(self, logits: Tensor, indices: Tensor) -> dict[str, Tensor]:
        """Per-query metrics of ``logits [..., b, vocab]`` for the queries ``indices [b]``."""
        return query_metrics(logits, self.inputs.label_ids, self.inputs.gold[indices])

    def gold_probability(self, logits: Tensor, indices: Tensor) -> Tensor:
        """``[..., b]`` probability of each query's gold label token (first token, full
        vocabulary): the ``gold_mass`` of :meth:`score` without the other metrics."""
        return gold_probability(logits, self.inputs.label_ids[self.inputs.gold[indices]])

    def rows(
        self,
        per_query: dict[str, Tensor],
        *,
        queries: Tensor | None = None,
        query_metrics: tuple[str, ...] | None = None,
        **keys,
    ) -> list[dict]:
        """Tidy rows (one per metric, bootstrap CI) tagged with ``keys``.

        With ``queries`` (``[n]`` the query indices the ``[n]`` values belong to, in order) the
        per-query values are kept too (:meth:`take_query_table`: the probe's ``<kind>_queries``
        table, the values the claims ledger resamples); ``query_metrics`` keeps only those
        metrics per query (default: every metric).
        """
        if queries is not None:
            self.record_queries(per_query, queries, query_metrics, **keys)
        return [{**keys, **row} for row in summarise(per_query, n_boot=self.n_boot, seed=self.seed)]

    def split_of(self, queries) -> np.ndarray:
        """``[n]`` ``"fit"`` or ``"eval"`` per query index (``"other"`` for neither)."""
        q = np.asarray(torch.as_tensor(queries).cpu(), dtype=np.int64).reshape(-1)
        fit = set(self.inputs.fit.tolist())
        ev = set(self.inputs.eval.tolist())
        return np.array(
            ["fit" if i in fit else "eval" if i in ev else "other" for i in q.tolist()],
            dtype=object,
        )

    def record_queries(
        self,
        per_query: dict[str, Tensor],
        queries,
        metrics: tuple[str, ...] | None = None,
        **keys,
    ) -> None:
        """Keep per-query values (``[n]`` each) of ``queries`` (``[n]`` indices), tagged with
        ``keys``, for :meth:`take_query_table`."""
        q = np.asarray(torch.as_tensor(queries).cpu(), dtype=np.int64).reshape(-1)
        split = self.split_of(q)
        for name, values in per_query.items():
            if metrics is not None and name not in metrics:
                continue
            arr = (
                values.detach().cpu().double().numpy()
                if isinstance(values, Tensor)
                else np.asarray(values, dtype=float)
            ).reshape(-1)
            if arr.shape[0] != q.shape[0]:
                raise ValueError(
                    f"per-query values of {name!r} have {arr.shape[0]} entries for "
                    f"{q.shape[0]} queries ({keys})"
                )
            self._query_records.append((keys, name, q, split, arr))

    def take_query_table(self) -> pd.DataFrame | None:
        """The per-query values recorded since the last call, as one tidy frame (columns: the
        rows' keys, ``metric``, ``query``, ``split``, ``value``), or None when none were; the
        record is emptied."""
        records, self._query_records = self._query_records, []
        if not records:
            return None
        columns: dict[str, list] = {}
        key_names: list[str] = []
        for keys, _, _, _, _ in records:
            for k in keys:
                if k not in key_names:
                    key_names.append(k)
        sizes = [len(r[2]) for r in records]
        for k in key_names:
            columns[k] = np.concatenate(
                [
                    np.full(n, keys.get(k, None), dtype=object)
                    for (keys, *_), n in zip(records, sizes, strict=True)
                ]
            )
        columns["metric"] = np.concatenate(
            [
                np.full(n, name, dtype=object)
                for (_, name, *_), n in zip(records, sizes, strict=True)
            ]
        )
        columns["query"] = np.concatenate([r[2] for r in records])
        columns["split"] = np.concatenate([r[3] for r in records])
        columns["value"] = np.concatenate([r[4] for r in records])
        frame = pd.DataFrame(columns)
        for k in key_names:  # back to the keys' own types where they are uniform
            frame[k] = pd.Series(frame[k].tolist(), index=frame.index).infer_objects()
        return frame

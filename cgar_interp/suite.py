"""Probe suites: TOML files a user runs (``cgar run probes/paper.toml``), parsed strictly.

A suite names the model, backend, tasks, shots, seed and sizes, and lists probes::

    name = "paper"
    model = "embedded"
    tasks = ["sst2-mini", "trec-mini", "agnews-mini"]
    shots = 1

    [[probe]]
    kind = "context_gate"
    context_layers = "paper"
    lambdas = [0, 0.01, 0.1, 1, 10]

Unknown keys, wrong types and bad values are rejected with the offending key named; each
``[[probe]]`` table is built into its probe's registered config dataclass.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .backends import BACKENDS, remote_backend, supports_remote
from .backends.base import REMOTE_SESSION_MB, REMOTE_SESSION_ROWS, check_session_limits
from .config import ConfigError, build, to_dict
from .probes import ProbeConfig, get_probe
from .task_spec import TaskSpec

SUITES_DIR = Path(__file__).resolve().parent.parent / "probes"
# the remote grouping settings: transport, not in the config hash
SESSION_KEYS = ("remote_session_rows", "remote_session_mb")


@dataclass(frozen=True)
class ProbeEntry:
    """One ``[[probe]]`` table: its kind and its built config."""

    kind: str
    config: ProbeConfig


@dataclass(frozen=True)
class SuiteConfig:
    """A whole suite. Field names are the TOML keys."""

    name: str = "suite"
    model: str = "embedded"
    backend: str = "transformer_lens"
    device: str = "cpu"
    dtype: str | None = None
    prepend_bos: bool = True
    seed: int = 0
    # seed robustness: run the whole suite once per seed (demonstrations and the fit/eval
    # split redrawn), each into <out>/seed-<s>, and decide every claim per seed and overall
    seeds: tuple[int, ...] = ()
    tasks: tuple[str, ...] = ("sst2-mini",)
    # [[task]] tables (cgar_interp.task_spec.TaskSpec); run after the `tasks` strings
    task: tuple[TaskSpec, ...] = ()
    # demonstrations per class: one k, or a k-shot sweep such as [0, 1, 2, 4, 8] (0: the
    # zero-shot rows, which every k shares; prompts are nested, see PromptConfig.k_max)
    shots: int | tuple[int, ...] = 1
    pinned_demos: bool = False
    n_fit: int = 16
    n_eval: int = 48
    batch_size: int = 16
    n_boot: int = 1000
    # run every forward pass on NDIF (nnsight's remote execution; backend must be nnsight);
    # remote_rows: most prompt copies per request where variants run as full forward passes
    remote: bool = False
    remote_rows: int = 256
    # seconds one NDIF job may wait in NDIF's queue before the run stops (its job id is kept
    # and --resume polls it); not part of the config hash: a resume may change it
    remote_queue_timeout_s: float = 3600.0
    # fewer round trips: independent passes run back to back (capture batches, chunks of
    # variant passes) go as one request, an nnsight session, of at most remote_session_rows
    # rows and about remote_session_mb MB of results; remote_session_rows = 0: one request per
    # pass. Transport only: the numbers are the same, so neither is in the config hash
    remote_session_rows: int = REMOTE_SESSION_ROWS
    remote_session_mb: float = REMOTE_SESSION_MB
    probes: tuple[ProbeEntry, ...] = field(default=())

    def __post_init__(self):
        for key in ("n_fit", "n_eval", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"key {key!r} must be >= 1; got {getattr(self, key)}")
        shots = (self.shots,) if isinstance(self.shots, int) else self.shots
        if isinstance(self.shots, int) and self.shots < 1:
            raise ConfigError(f"key 'shots' must be >= 1; got {self.shots}")
        if any(k < 0 for k in shots) or not any(k >= 1 for k in shots):
            raise ConfigError(
                f"key 'shots' must list demonstrations per class >= 0 with at least one >= 1 "
                f"(0 is the zero-shot row); got {list(shots)}"
            )
        if len(set(shots)) != len(shots):
            raise ConfigError(f"key 'shots' repeats a value: {list(shots)}")
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            raise ConfigError(f"key 'seeds' must list ints >= 0; got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"key 'seeds' repeats a value: {list(self.seeds)}")
        if self.n_boot < 0:
            raise ConfigError(f"key 'n_boot' must be >= 0; got {self.n_boot}")
        if not isinstance(self.remote_rows, int) or self.remote_rows < 1:
            raise ConfigError(f"key 'remote_rows' must be an int >= 1; got {self.remote_rows!r}")
        timeout = self.remote_queue_timeout_s
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigError(
                "key 'remote_queue_timeout_s' must be a number of seconds > 0 (how long an NDIF "
                f"job may stay queued before the run stops); got {timeout!r}"
            )
        try:
            check_session_limits(
                self.remote_session_rows,
                self.remote_session_mb,
                tuple(f"key {key!r}" for key in SESSION_KEYS),
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.remote:
            if self.backend not in BACKENDS or not supports_remote(self.backend):
                raise ConfigError(
                    f"remote = true runs the model on NDIF through {remote_backend()}; backend "
                    f"{self.backend!r} runs it here. Set backend = '{remote_backend()}' (cgar run "
                    "--remote does)"
                )
            for entry in self.probes:
                why = entry.config.remote_unsupported()
                if why:
                    raise ConfigError(
                        f"probe {entry.kind!r} cannot run remotely: {why}. Leave it out (the "
                        "shipped paper_ndif suite is the paper suite without head_mediation), or "
                        "run this suite locally"
                    )
        if not self.tasks and not self.task:
            raise ConfigError(
                "no tasks: name at least one in 'tasks' (e.g. 'sst2-mini') or add a [[task]] table"
            )
        keys = [spec.key() for spec in self.task_specs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise ConfigError(f"task {repeated[0]!r} is listed twice; list each task once")

    @property
    def task_specs(self) -> tuple[TaskSpec, ...]:
        """Every task: the ``tasks`` strings, then the ``[[task]]`` tables."""
        return tuple(TaskSpec.parse(t, "tasks") for t in self.tasks) + self.task

    @property
    def shot_list(self) -> tuple[int, ...]:
        """The k >= 1 to build ICL prompts for, ascending (0 needs no prompts of its own)."""
        shots = (self.shots,) if isinstance(self.shots, int) else self.shots
        return tuple(sorted(k for k in shots if k >= 1))

    @property
    def sweeps_shots(self) -> bool:
        """``shots`` is a list: units and prompts are per k, and prompts are nested."""
        return not isinstance(self.shots, int)

    def to_dict(self) -> dict:
        out = to_dict(replace(self, probes=()))
        if not self.task:  # keeps the hash of suites written before [[task]] tables existed
            out.pop("task")
        if not self.seeds:  # likewise for suites of one seed
            out.pop("seeds")
        if not self.remote:  # likewise for suites that run here
            for key in ("remote", "remote_rows", "remote_queue_timeout_s", *SESSION_KEYS):
                out.pop(key)
        out["probes"] = [{"kind": p.kind, **to_dict(p.config)} for p in self.probes]
        return out

    def config_hash(self) -> str:
        """Hash of everything that determines the numbers (not the output location, nor how
        long a remote run waits for NDIF's queue, nor how its passes are grouped into
        requests)."""
        out = self.to_dict()
        for key in ("remote_queue_timeout_s", *SESSION_KEYS):  # same numbers either way
            out.pop(key, None)
        text = json.dumps(out, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        layers: set[int] = set()
        for probe in self.probes:
            layers.update(probe.config.needed_layers(n_layers))
        return tuple(sorted(layers))

    @property
    def resumes_zero_shot(self) -> bool:
        """Some probe resumes the zero-shot eval prompts: keep their KV caches from the capture."""
        return any(p.config.resumes_zero_shot for p in self.probes)

    def prompt_kinds(self) -> frozenset[str]:
        """Every prompt kind some probe reads; a label control (``icl_flipped``,
        ``icl_random``, ``icl_permuted``) among them has its prompts built."""
        return frozenset().union(*(p.config.prompt_kinds() for p in self.probes))

    def self_check_paths(self) -> frozenset[str]:
        """Every fast path some probe declares it uses (the self-check plans from these)."""
        return frozenset().union(*(p.config.self_check_paths() for p in self.probes))


def confine_task_path(task: str, base: Path, where: str) -> str:
    """A task entry, with a task *file* resolved against ``base`` and kept inside it.

    Task names (shipped sets, ``synthetic``, hub datasets) pass through. A relative file path
    (``.jsonl`` / ``.csv`` / ``.parquet``) resolves against the suite file's directory, after
    symlinks, and must stay inside it: a suite cannot reach ``../../elsewhere.csv``. An
    absolute path is the user's explicit choice and is kept.

    Raises:
        ConfigError: a relative path that escapes ``base``, naming both.
    """
    from .data.loaders import FILE_SUFFIXES

    if Path(task).suffix.lower() not in FILE_SUFFIXES:
        return task
    return confine_path(task, base, where, what="task file")


def confine_path(path_text: str, base: Path, where: str, what: str = "path") -> str:
    """A task's data path, resolved against ``base`` (after symlinks) and kept inside it.

    An absolute path is the user's explicit choice and is kept.

    Raises:
        ConfigError: a relative path that escapes ``base``, naming both.
    """
    path = Path(path_text)
    if path.is_absolute():
        return str(path)
    root = base.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root):
        raise ConfigError(
            f"{what} {path_text!r} in {where} resolves to {target}, outside the suite's "
            f"directory {root}; a relative task path must stay inside it (give an absolute "
            "path to read data elsewhere)"
        )
    return str(target)


def parse_task_tables(raw: Any, where: str, base: Path) -> tuple[TaskSpec, ...]:
    """``[[task]]`` tables, strictly; errors name the table's number and its task."""
    if not isinstance(raw, list):
        raise ConfigError(f"'task' in {where} must be an array of tables ([[task]])")
    specs = []
    for i, table in enumerate(raw, start=1):
        label = table.get("name") or table.get("path") if isinstance(table, dict) else None
        here = f"[[task]] {i}" + (f" ({label})" if label else "") + f" in {where}"
        spec = TaskSpec.parse(table if isinstance(table, dict) else {"?": table}, here)
        if spec.path is not None:
            spec = replace(spec, path=confine_path(spec.path, base, here))
        specs.append(spec)
    return tuple(specs)


def parse_suite(
    data: dict, where: str = "suite", base_dir: str | Path | None = None
) -> SuiteConfig:
    """Build a :class:`SuiteConfig` from a parsed TOML mapping (strict).

    Args:
        data: the mapping.
        where: how errors name its origin.
        base_dir: the directory relative task file paths resolve in (and must stay inside);
            the suite file's own directory for :func:`load_suite`, else the working directory.
    """
    data = dict(data)
    raw_probes = data.pop("probe", [])
    raw_tasks = data.pop("task", [])
    base = Path.cwd() if base_dir is None else Path(base_dir)
    task_tables = parse_task_tables(raw_tasks, where, base)
    if task_tables:  # validated above (errors name the table); confined paths replace these
        data["task"] = raw_tasks
        data.setdefault("tasks", [])
    if "probes" in data:
        raise ConfigError(f"unknown key 'probes' in {where}; probes are [[probe]] tables")
    if not isinstance(raw_probes, list):
        raise ConfigError(f"'probe' in {where} must be an array of tables ([[probe]])")
    probes = []
    for i, table in enumerate(raw_probes, start=1):
        if not isinstance(table, dict) or "kind" not in table:
            raise ConfigError(f"[[probe]] {i} in {where} needs a 'kind' key")
        table = dict(table)
        kind = table.pop("kind")
        try:
            spec = get_probe(kind)
        except ValueError as err:
            raise ConfigError(f"[[probe]] {i} in {where}: {err}") from None
        probes.append(ProbeEntry(kind, build(spec.config_cls, table, f"[[probe]] {i} ({kind})")))
    suite = build(SuiteConfig, data, where)
    tasks = tuple(confine_task_path(task, base, where) for task in suite.tasks)
    if tasks != suite.tasks or task_tables:
        try:
            suite = replace(suite, tasks=tasks, task=task_tables)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    if not probes:
        raise ConfigError(f"{where} has no [[probe]] tables; add at least one")
    for i, entry in enumerate(probes):  # probes that read another probe's table of the run
        try:
            entry.config.check_suite(i, probes)
        except ValueError as err:
            raise ConfigError(f"[[probe]] {i + 1} ({entry.kind}) in {where}: {err}") from None
    return replace(suite, probes=tuple(probes))


def load_suite(path: str | Path, **overrides) -> SuiteConfig:
    """Read and validate a suite file; ``overrides`` (model, backend, seed, ...) replace keys.

    A bare name (``"paper"``) finds a shipped suite in ``probes/``.
    """
    path = Path(path)
    if not path.exists() and not path.suffix and (SUITES_DIR / f"{path}.toml").is_file():
        path = SUITES_DIR / f"{path}.toml"
    if not path.is_file():
        shipped = ", ".join(p.stem for p in shipped_suites())
        raise ConfigError(f"suite file {str(path)!r} does not exist; shipped suites: {shipped}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"suite file {str(path)!r} is not valid TOML: {err}") from None
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
    return parse_suite(data, where=f"suite {path.name}", base_dir=path.parent)


def shipped_suites() -> list[Path]:
    return sorted(SUITES_DIR.glob("*.toml")) if SUITES_DIR.is_dir() else []

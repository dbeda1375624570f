"""Run a suite into a run directory: tasks x probes as resumable units, then tables and report.

``run_suite(suite, out)`` is what ``cgar run SUITE.toml --out runs/NAME`` calls; it returns a
:class:`RunResults` with ``.tables`` (pandas) and ``.figure(name)`` for notebooks.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from .backends import remote_backend
from .heap import trim_heap
from .models import ModelHandle, load_model
from .probes import ProbeContext, get_probe
from .probes.base import query_table_name, tag_shots
from .remote_jobs import (
    CAPTURES_DIR,
    JOBS_FILE,
    LEDGER_FILE,
    SELF_CHECK_FILE,
    SharedCaptureFile,
    remote_dir,
)
from .results import now_utc
from .rundir import RunDir, RunDirError
from .selfcheck import (
    SelfCheck,
    SelfCheckFailed,
    check_task,
    load_check,
    planned_paths,
    self_check_key,
    store_check,
)
from .suite import SuiteConfig
from .tasks_bridge import load_spec, prepare_task


@dataclass
class RunResults:
    """A finished run: its directory, manifest and tables."""

    path: Path
    manifest: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def figure(self, name: str):
        """A plotly figure by name (``context_gate-sst2-mini``, ...); see :attr:`figure_names`."""
        from .figures import figures_for

        figures = figures_for(self.tables)
        if name not in figures:
            raise KeyError(f"no figure {name!r}; available: {', '.join(sorted(figures))}")
        return figures[name]

    @property
    def figure_names(self) -> list[str]:
        from .figures import figures_for

        return sorted(figures_for(self.tables))

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        import json

        path = Path(path)
        manifest = json.loads((path / "manifest.json").read_text())
        tables = {p.stem: pd.read_parquet(p) for p in sorted((path / "tables").glob("*.parquet"))}
        return cls(path, manifest, tables)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB.

    Linux: ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process image; the
    ``ru_maxrss`` of a child started from a large parent keeps the parent's peak across exec).
    Elsewhere ``ru_maxrss`` (KiB on Linux and BSD, bytes on macOS).
    """
    import resource
    import sys

    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class StageClock:
    """Wall seconds and the peak resident memory after each stage of a run, in run order (the
    manifest's ``stages``): where a run's time goes besides its probes' units."""

    def __init__(self):
        self.stages: list[dict] = []
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        entry = next((e for e in self.stages if e["stage"] == name), None)
        if entry is None:
            entry = {"stage": name, "seconds": 0.0}
            self.stages.append(entry)
        entry["seconds"] = round(entry["seconds"] + now - self._last, 3)
        # the kernel's RSS counters are batched per thread, so VmHWM can read 0.1 MiB lower
        # a moment later: keep the running maximum, the peak up to the end of this stage
        before = max((e["peak_rss_mib"] for e in self.stages if "peak_rss_mib" in e), default=0)
        entry["peak_rss_mib"] = max(before, peak_rss_mib())
        self._last = now


def run_suite(
    suite: SuiteConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    handle: ModelHandle | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    log: Callable[[str], None] | None = None,
    report: bool = True,
    allow_self_check_failure: bool = False,
    self_check_rows: int = 3,
    remote: bool | None = None,
    preflight: bool = True,
) -> RunResults:
    """Run every (task, probe) unit of ``suite`` into ``out`` and write tables and the report.

    Args:
        suite: the parsed suite.
        out: run directory.
        resume: continue an interrupted run with the same identity (finished units are kept).
        force: delete a run already in ``out`` and start over.
        handle: an already loaded model (must match ``suite.model``/backend); loaded otherwise.
        progress: ``progress(description, total) -> advance(n)`` for progress bars.
        log: a function that prints one line.
        report: also write figures and ``report.html``.
        allow_self_check_failure: go on when a fast path disagrees with the plain path
            (:mod:`cgar_interp.selfcheck`); recorded in the manifest, a red banner in the
            report. Off: such a run stops with :class:`~cgar_interp.selfcheck.SelfCheckFailed`
            before its first probe.
        self_check_rows: eval queries per task the self-check compares (``0``: no check;
            recorded, and shown in the report like a failed check).
        remote: run every forward pass on NDIF (``suite.remote``; True sets it, with backend
            nnsight). The manifest's ``remote`` records the requests and bytes; an NDIF failure
            stops the run with a one-line :class:`~cgar_interp.remote.RemoteRunError` and
            ``--resume`` keeps the finished units. nnsight's global settings are restored after.
        preflight: before a remote run sends anything, check that NDIF runs the model, knows
            the key and runs this nnsight (:func:`cgar_interp.remote_preflight.preflight`; its
            lines go to ``log``); a failure raises
            :class:`~cgar_interp.remote_preflight.RemotePreflightError`.
    """
    if remote:
        suite = replace(suite, remote=True, backend=remote_backend())
    settings = dict(
        resume=resume,
        force=force,
        handle=handle,
        progress=progress,
        log=log,
        report=report,
        allow_self_check_failure=allow_self_check_failure,
        self_check_rows=self_check_rows,
    )
    if suite.remote and preflight:
        from .remote_preflight import preflight as check

        for line in check(suite.model).lines():
            (log or (lambda _msg: None))(line)
    if suite.seeds:
        return run_seeds(suite, out, **settings)
    if not suite.remote:
        return _run_suite(suite, out, ledger=None, **settings)
    from .remote import RemoteLedger, RemoteRunError, remote_session
    from .remote_jobs import JobStore

    ledger, jobs = RemoteLedger(), JobStore()  # kept in the run directory once it is open
    with remote_session(
        suite.model, ledger, jobs=jobs, queue_timeout_s=suite.remote_queue_timeout_s, log=log
    ):
        try:
            return _run_suite(suite, out, ledger=ledger, jobs=jobs, **settings)
        except RemoteRunError as err:
            record_remote_failure(out, err)
            raise


def record_remote_failure(out: str | Path, err) -> None:
    """Note an NDIF failure in the manifest of the run in ``out`` (``status`` ``remote_failed``,
    ``remote.error``: kind and the one-line message, scrubbed of the key), if it has one."""
    from .remote_errors import scrub_data
    from .results import atomic_write_json

    path = Path(out) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # the run stopped before its manifest: nothing to note
    manifest["status"] = "remote_failed"
    manifest.setdefault("remote", {})["error"] = {"kind": err.kind, "message": str(err)}
    atomic_write_json(path, scrub_data(manifest))  # the message is scrubbed; the rest too


def load_suite_model(suite: SuiteConfig) -> ModelHandle:
    """The model a suite names, with its backend, device, dtype, BOS and remote settings."""
    return load_model(
        suite.model,
        backend=suite.backend,
        device=suite.device,
        dtype=suite.dtype,
        prepend_bos=suite.prepend_bos,
        remote=suite.remote,
        remote_rows=suite.remote_rows,
        remote_session_rows=suite.remote_session_rows,
        remote_session_mb=suite.remote_session_mb,
    )


def seed_dir(out: str | Path, seed: int) -> Path:
    """Where seed ``seed`` of a multi-seed run lives: ``<out>/seed-<seed>``."""
    return Path(out) / f"seed-{seed}"


def run_seeds(
    suite: SuiteConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    handle: ModelHandle | None = None,
    progress=None,
    log: Callable[[str], None] | None = None,
    report: bool = True,
    allow_self_check_failure: bool = False,
    self_check_rows: int = 3,
) -> RunResults:
    """A suite with ``seeds``: the whole suite once per seed, each a run of its own in
    ``<out>/seed-<s>`` (resumable on its own: a finished seed is kept, a killed one resumes
    at its unfinished units), then the ledgers side by side with the overall verdict per row
    (:func:`cgar_interp.claims.seeds.combine_seeds`) in ``<out>/tables/claims.parquet``, and
    ``<out>/tables/claims_<seed>.parquet`` per seed.

    The same seed gives the same numbers as a one-seed run of that seed (``seed = s``)."""
    from .claims.seeds import combine_seeds

    say = log or (lambda _msg: None)
    identity = {"config_hash": suite.config_hash(), "seeds": list(suite.seeds)}
    with RunDir.open(out, identity, resume=resume, force=force) as run:
        previous = run.read_manifest() or {}
        manifest = {
            "identity": identity,
            "config_hash": identity["config_hash"],
            "suite": suite.to_dict(),
            "seeds": list(suite.seeds),
            "seed_runs": {str(s): seed_dir(out, s).name for s in suite.seeds},
            "started": previous.get("started", now_utc()),
            "status": "running",
            "resumed": bool(previous),
        }
        run.write_manifest(manifest)
        ledgers, last = {}, None
        if handle is None:  # one model for every seed
            handle = load_suite_model(suite)
        for s in suite.seeds:
            say(f"seed {s}: {seed_dir(out, s)}")
            one = replace(suite, seed=s, seeds=())
            target = seed_dir(out, s)
            done = (target / "tables" / "claims.parquet").exists() and (
                json.loads((target / "manifest.json").read_text()).get("status") == "finished"
            )
            if done and resume:
                say(f"seed {s}: finished earlier, kept")
                last = RunResults.load(target)
            else:
                last = run_suite(
                    one,
                    target,
                    preflight=False,  # checked once, for every seed
                    resume=resume,
                    force=force,
                    handle=handle,
                    progress=progress,
                    log=log,
                    report=report,
                    allow_self_check_failure=allow_self_check_failure,
                    self_check_rows=self_check_rows,
                )
            ledgers[s] = last.tables["claims"]
            run.write_table(f"claims_{s}", ledgers[s])
        combined = combine_seeds(ledgers)
        run.write_table("claims", combined)
        provenance = {k: v for k, v in last.manifest.items() if k not in manifest}
        manifest.update(
            {k: provenance[k] for k in provenance if k not in ("seed", "tasks", "stages")},
            status="finished",
            finished=now_utc(),
        )
        run.write_manifest(manifest)
    return RunResults(Path(out), manifest, {"claims": combined})


def run_ledger(run_dir: str | Path) -> pd.DataFrame:
    """The claims ledger of a finished run, decided anew from its tables (so the rules of
    this version apply). A multi-seed run (:func:`run_seeds`): each seed's ledger from its
    own run directory, side by side with the overall verdict
    (:func:`cgar_interp.claims.seeds.combine_seeds`)."""
    from .claims import build_ledger
    from .claims.seeds import combine_seeds

    run_dir = Path(run_dir)
    results = RunResults.load(run_dir)
    seed_runs = results.manifest.get("seed_runs")
    if not seed_runs:
        return build_ledger(results.tables, results.manifest)
    ledgers = {}
    for seed, name in seed_runs.items():
        one = RunResults.load(run_dir / name)
        ledgers[int(seed)] = build_ledger(
            {k: v for k, v in one.tables.items() if k != "claims"}, one.manifest
        )
    return combine_seeds(ledgers)


@dataclass(frozen=True)
class RemotePlan:
    """What a remote run of a suite would send: from :func:`plan_remote` (nothing is sent).

    Attributes:
        model: the model id. ``requests``: NDIF requests, self-check and readout included.
        bytes_up: payloads, uncompressed (a real run's are at most this size).
        bytes_down: results. ``units``: the same three per unit (``task/probe``), and
            ``"setup"`` (readout weights and self-check).
        local_peak_mib: this process's peak resident memory while planning (the readout
            weights a real run fetches are held as placeholders; its decodes are skipped).
        session_rows, session_mb: the suite's grouping of independent passes into one
            request (an nnsight session; ``session_rows == 0``: one request per pass).
        ungrouped: the same run with one request per pass (``remote_session_rows = 0``), to
            compare; None when the suite does not group, or when it was not planned.
    """

    model: str
    requests: int
    bytes_up: int
    bytes_down: int
    units: dict
    local_peak_mib: float
    seconds: float
    session_rows: int = 0
    session_mb: float = 0.0
    ungrouped: RemotePlan | None = None

    def lines(self) -> list[str]:
        mb = 1e6
        out = [
            f"dry run for {self.model} on NDIF (nothing was sent): {self.requests} requests, "
            f"{self.bytes_up / mb:,.1f} MB up, {self.bytes_down / mb:,.1f} MB down",
        ]
        base = self.ungrouped
        if self.session_rows == 0:
            out.append("  one request per pass (remote_session_rows = 0: no sessions)")
        else:
            out.append(
                f"  independent passes grouped into nnsight sessions of at most "
                f"{self.session_rows} rows and about {self.session_mb:g} MB of results"
                + (
                    f"; one request per pass instead: {base.requests} requests, "
                    f"{base.bytes_up / mb:,.1f} MB up, {base.bytes_down / mb:,.1f} MB down"
                    if base is not None
                    else ""
                )
            )
        for unit, figures in sorted(self.units.items(), key=lambda u: not u[0].startswith("setup")):
            line = (
                f"  {unit:<32} {figures['requests']:6d} requests  {figures['bytes_up'] / mb:10,.1f} "
                f"MB up  {figures['bytes_down'] / mb:10,.1f} MB down"
            )
            if base is not None and unit in base.units:
                other = base.units[unit]
                line += (
                    f"   (ungrouped: {other['requests']:6d} requests  "
                    f"{other['bytes_up'] / mb:10,.1f} MB up  {other['bytes_down'] / mb:10,.1f} "
                    "MB down)"
                )
            out.append(line)
        seconds = self.seconds + (base.seconds if base is not None else 0.0)
        peak = max(self.local_peak_mib, base.local_peak_mib if base is not None else 0.0)
        out.append(
            f"local memory while planning: {peak:,.0f} MiB peak ({seconds:.1f} s); payloads "
            "measured uncompressed"
        )
        return out


def plan_remote(
    suite: SuiteConfig,
    *,
    log: Callable[[str], None] | None = None,
    self_check_rows: int = 3,
    ungrouped: bool = True,
) -> RemotePlan:
    """Count the requests and bytes a remote run of ``suite`` makes, sending nothing.

    The run's own code goes through every step with a :class:`~cgar_interp.remote.DryServer`
    in place of NDIF: each request is serialized as it would be sent, run against the model
    built on the meta device (shapes only), and answered with placeholders, so the probes make
    the requests a real run makes. No run directory is kept; the tables are placeholders.

    With ``ungrouped`` (and a suite that groups passes into sessions), the run is planned a
    second time with one request per pass (``remote_session_rows = 0``), in
    :attr:`RemotePlan.ungrouped`, so the two can be compared; that doubles the time.
    """
    suite = replace(suite, remote=True, backend=remote_backend())
    plan = _plan_once(suite, log=log, self_check_rows=self_check_rows)
    if ungrouped and suite.remote_session_rows > 0:
        single = replace(suite, remote_session_rows=0)
        plan = replace(plan, ungrouped=_plan_once(single, log=log, self_check_rows=self_check_rows))
    return plan


def _plan_once(suite: SuiteConfig, *, log, self_check_rows: int) -> RemotePlan:
    """One dry run of a remote ``suite`` (:func:`plan_remote`)."""
    import tempfile

    from .remote import dry_transport, remote_session

    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        dry_transport() as server,
        remote_session(suite.model) as ledger,
    ):
        handle = load_model(
            suite.model,
            backend=suite.backend,
            device=suite.device,
            dtype=suite.dtype,
            prepend_bos=suite.prepend_bos,
            remote=True,
            remote_rows=suite.remote_rows,
            placeholder_decode=True,
            remote_session_rows=suite.remote_session_rows,
            remote_session_mb=suite.remote_session_mb,
        )
        server.attach(handle.backend.engine)
        done = _run_suite(
            suite,
            Path(tmp) / "dry",
            resume=False,
            force=False,
            handle=handle,
            progress=None,
            log=log,
            report=False,
            allow_self_check_failure=True,  # placeholders disagree with everything
            self_check_rows=self_check_rows,
            ledger=ledger,
            probes_only=True,
        )
    remote = done.manifest.get("remote", {})
    return RemotePlan(
        model=suite.model,
        requests=ledger.requests,
        bytes_up=ledger.bytes_up,
        bytes_down=ledger.bytes_down,
        units=remote.get("units", {}),
        local_peak_mib=peak_rss_mib(),
        seconds=time.perf_counter() - started,
        session_rows=suite.remote_session_rows,
        session_mb=suite.remote_session_mb,
    )


REMOTE_COUNTS = ("requests", "bytes_up", "bytes_down")
INTERRUPTED_UNIT = "interrupted (earlier sessions)"


def _remote_record(before: dict, ledger) -> dict:
    """A remote run's manifest ``remote``: the counts of every session (``requests``,
    ``bytes_up``, ``bytes_down``), this session's (``this_session``), and per unit (the units of
    earlier sessions kept; what earlier sessions sent after their last finished unit, in
    :data:`INTERRUPTED_UNIT`), so that the units add up to the totals."""
    units = {name: dict(counts) for name, counts in (before.get("units") or {}).items()}
    gap = {
        k: int(ledger.earlier.get(k, 0)) - sum(u.get(k, 0) for u in units.values())
        for k in REMOTE_COUNTS
    }
    if any(v > 0 for v in gap.values()):
        lost = units.setdefault(INTERRUPTED_UNIT, dict.fromkeys(REMOTE_COUNTS, 0))
        for k in REMOTE_COUNTS:
            lost[k] += max(gap[k], 0)
    return {**ledger.totals(), "this_session": ledger.as_dict(), "units": units}


def _run_suite(
    suite: SuiteConfig,
    out: str | Path,
    *,
    resume: bool,
    force: bool,
    handle: ModelHandle | None,
    progress,
    log,
    report: bool,
    allow_self_check_failure: bool,
    self_check_rows: int,
    ledger,
    jobs=None,
    probes_only: bool = False,
) -> RunResults:
    """:func:`run_suite`'s body; ``ledger`` meters a remote run's requests (None: local) and
    ``jobs`` holds its submitted NDIF jobs (:class:`~cgar_interp.remote_jobs.JobStore`), both
    kept in ``<run>/remote/`` with the self-check and the tasks' shared passes
    (:mod:`cgar_interp.remote_jobs`); ``probes_only`` stops after the probes (a dry run:
    :func:`plan_remote`)."""
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    clock = StageClock()
    if handle is None:
        handle = load_suite_model(suite)
    if suite.remote:
        if not handle.remote:
            raise ValueError("a remote suite needs a model loaded with remote=True")
        handle = handle.with_options(  # a handle passed in: the suite's remote settings
            remote_rows=suite.remote_rows,
            remote_session_rows=suite.remote_session_rows,
            remote_session_mb=suite.remote_session_mb,
        )
    identity = {
        "config_hash": suite.config_hash(),
        "model_hash": handle.model_hash,
        "backend": handle.backend_name,
        "dtype": str(handle.dtype).removeprefix("torch."),
    }
    clock.mark("load_model")
    layers = suite.needed_layers(handle.n_layers)
    specs = suite.task_specs
    data_sha256 = {spec.key(): spec.data_sha256() for spec in specs if spec.is_file}
    with RunDir.open(out, identity, resume=resume, force=force) as run:
        previous = run.read_manifest() or {}
        for key, digest in data_sha256.items():  # a file task must be what the run began with
            before = (previous.get("data_sha256") or {}).get(key)
            if before is not None and before != digest:
                spec = next(s for s in specs if s.key() == key)
                raise RunDirError(
                    f"task file {spec.path!r} changed since this run began (sha256 "
                    f"{before[:12]}... then, {digest[:12]}... now); its finished units would "
                    "mix two datasets. Restore the file, or pass --force to start over"
                )
        manifest = {
            **handle.provenance(),
            "identity": identity,
            "config_hash": identity["config_hash"],
            "seed": suite.seed,
            "suite": suite.to_dict(),
            "started": previous.get("started", now_utc()),
            "status": "running",
            "resumed": bool(previous),
            "data_sha256": data_sha256,
        }
        run.write_manifest(manifest)  # first: a directory holding anything else has a manifest
        keep = remote_dir(run.path) if handle.remote else None
        if ledger is not None:  # the counts of every session, the units' of earlier ones kept
            before = previous.get("remote") or {}
            # a run begun before ledger.json existed: its manifest's counts
            ledger.keep_in(
                keep / LEDGER_FILE, run.tmp, earlier={k: before.get(k, 0) for k in REMOTE_COUNTS}
            )
            manifest["remote"] = _remote_record(before, ledger)
        if jobs is not None:
            jobs.open(keep / JOBS_FILE, run.tmp)
        # one unit group per (task, k): units/<task key>/[shots-<k>/]<i>-<probe>
        prompt_frames, task_info, prepared_tasks, checked = [], {}, {}, []
        stems = Counter(Path(spec.path).stem for spec in specs if spec.is_file)
        for spec in specs:
            task = load_spec(spec, stems)
            for k in suite.shot_list:
                key = f"{spec.key()}/shots-{k}" if suite.sweeps_shots else spec.key()
                prepared = prepare_task(handle, suite, spec, k, task=task)
                prepared_tasks[key] = (k, prepared)
                prompt_frames.append(prepared.prompts.assign(shots=k))
                task_info[key] = {
                    **prepared.info,
                    "shots": k,
                    "task": spec.to_dict(),
                    "data_sha256": data_sha256.get(spec.key()),
                }
            checked.append(prepared)  # the largest k: the longest prompts of this task
        clock.mark("prepare_tasks")
        check = SelfCheck(
            handle.backend_name,
            handle.dtype,
            manifest["versions"],
            allow_failure=allow_self_check_failure or self_check_rows == 0,
        )

        def record_check(status: str | None = None) -> None:
            manifest["self_check"] = {**check.summary(), "rows_per_task": self_check_rows}
            if status:
                manifest["status"] = status
            run.write_manifest(manifest)

        plans = [
            (prepared.inputs, planned_paths(suite, prepared.inputs.icl, remote=handle.remote))
            for prepared in checked
        ]
        # a remote run keeps its self-check: a resumed session with the same key sends nothing
        kept_check = keep / SELF_CHECK_FILE if keep is not None and self_check_rows > 0 else None
        check_key = (
            self_check_key(manifest, plans, self_check_rows) if kept_check is not None else None
        )
        stored = load_check(kept_check, check_key) if kept_check is not None else None
        try:
            if stored is not None:
                check.replay(stored)
                manifest["self_check_reused"] = str(kept_check.relative_to(run.path))
                say(
                    f"self-check: reusing the result kept in {kept_check} (same model, dtype, "
                    "library versions and checks); nothing sent"
                )
            else:
                manifest.pop("self_check_reused", None)
                if self_check_rows > 0:
                    for inputs, plan in plans:
                        check_task(check, handle, inputs, plan, rows=self_check_rows)
                if kept_check is not None:
                    store_check(kept_check, check_key, check, run.tmp)
        except SelfCheckFailed:
            record_check("self_check_failed")
            raise
        clock.mark("self_check")
        record_check()
        worst = max((c.max_abs_diff for c in check.checks), default=float("nan"))
        say(
            f"self-check: {len(check.checks)} comparisons with a plain forward, largest "
            f"|delta p| {worst:.2g} (tolerance {check.tolerance:g}), {check.seconds:.1f}s"
            + ("" if check.passed else " -- FAILED, going on as asked")
        )
        handle.stats.reset()
        counted = {"requests": 0, "bytes_up": 0, "bytes_down": 0}  # this session's, so far

        def record_remote(unit: str) -> None:
            """The NDIF requests and bytes since the last unit (added to the unit's count of
            earlier sessions), and the totals of every session."""
            now = ledger.as_dict()
            units = manifest["remote"]["units"]
            before = units.get(unit, {})
            units[unit] = {k: before.get(k, 0) + now[k] - counted[k] for k in now}
            counted.update(now)
            manifest["remote"].update(ledger.totals(), this_session=now)
            run.write_manifest(manifest)

        if ledger is not None:
            record_remote("setup (self-check)")
        for task_name, (k, prepared) in prepared_tasks.items():
            # the shared pass reads what the probes still to run declared (SharedRead): a
            # probe kept from an earlier session adds no prompt to it. A remote run keeps the
            # pass in its run directory until the task's units are done: a resumed session
            # starts from it
            shared = (
                SharedCaptureFile(
                    keep / CAPTURES_DIR / task_name / "shared.pt",
                    run.tmp,
                    say,
                    root=keep / CAPTURES_DIR,
                )
                if keep is not None
                else None
            )
            ctx = ProbeContext.for_probes(
                handle,
                prepared.inputs,
                [
                    entry.config
                    for index, entry in enumerate(suite.probes)
                    if not run.unit_done(task_name, index, entry.kind)
                ],
                layers=layers,
                seed=suite.seed,
                n_boot=suite.n_boot,
                batch_size=suite.batch_size,
                progress=progress,
                keep_states=suite.resumes_zero_shot,
                self_check=check,
                shared_store=shared,
            )
            for index, entry in enumerate(suite.probes):
                if run.unit_done(task_name, index, entry.kind):
                    say(f"{task_name} / {entry.kind}: done earlier, kept")
                    ctx.tables.update(run.read_unit(task_name, index, entry.kind))
                    continue
                t0 = time.perf_counter()
                spec = get_probe(entry.kind)
                try:
                    produced = dict(spec.run(entry.config, ctx))
                    per_query = ctx.take_query_table()  # what the ledger resamples
                    if per_query is not None:
                        produced[query_table_name(entry.kind)] = per_query
                    tables = tag_shots(spec, produced, k)
                except SelfCheckFailed:  # finished units stay; the manifest says why it stopped
                    record_check("self_check_failed")
                    raise
                ctx.tables.update(tables)
                # the kept caches only finished probes read are freed before the next probe
                ctx.release(
                    [
                        later.config
                        for later_index, later in enumerate(suite.probes)
                        if later_index > index
                        and not run.unit_done(task_name, later_index, later.kind)
                    ]
                )
                trim_heap()  # what the probe and the released reads held goes back to the OS
                run.write_unit(
                    task_name,
                    index,
                    entry.kind,
                    tables,
                    {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mib": peak_rss_mib()},
                )
                if ledger is not None:  # what went to NDIF so far, kept if the run stops
                    record_remote(f"{task_name}/{entry.kind}")
                clock.mark(f"probe:{entry.kind}")
                say(f"{task_name} / {entry.kind}: {time.perf_counter() - t0:.1f}s")
            if shared is not None:  # every unit of the task is done: its pass is not needed
                shared.discard()
        if probes_only:  # a dry run: the requests are counted, the tables are placeholders
            return RunResults(Path(out), manifest, {})
        run.write_parquet("prompts.parquet", pd.concat(prompt_frames, ignore_index=True))
        tables: dict[str, list[pd.DataFrame]] = {}
        first_k = min(suite.shot_list)
        for task_name, (k, _) in prepared_tasks.items():
            for index, entry in enumerate(suite.probes):
                for name, frame in run.read_unit(task_name, index, entry.kind).items():
                    if k != first_k and "shots" in frame:  # zero-shot rows once, not per k
                        frame = frame[frame["shots"] != 0]
                    tables.setdefault(name, []).append(frame)
        merged = {name: pd.concat(frames, ignore_index=True) for name, frames in tables.items()}
        for name, frame in merged.items():
            run.write_table(name, frame)
        clock.mark("tables")
        if any(entry.config.compares_with_theory() for entry in suite.probes):
            from .compare import compare_run  # theory vs measurement: tables/theory_*.parquet

            merged.update(compare_run(run.path))
            clock.mark("theory_compare")
        from .claims import build_ledger  # the verdict: every claim the run's probes test

        merged["claims"] = build_ledger(merged, {**manifest, "tasks": task_info})
        run.write_table("claims", merged["claims"])
        clock.mark("claims")
        manifest.update(
            status="finished",
            finished=now_utc(),
            seconds_this_session=round(time.perf_counter() - started, 2),
            tasks=task_info,
            forward_stats=vars(handle.stats).copy(),
            self_check={**check.summary(), "rows_per_task": self_check_rows},
            stages=clock.stages,
        )
        if ledger is not None:
            manifest["remote"].update(ledger.totals(), this_session=ledger.as_dict())
        run.write_manifest(manifest)
        if report:
            from .report import build_report

            build_report(run.path)
            clock.mark("report")
            manifest["stages"] = clock.stages
            run.write_manifest(manifest)
    return RunResults(Path(out), manifest, merged)

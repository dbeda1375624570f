"""The ``cgar`` command line (typer). Every command is also a plain Python function.

Options are spelled the same everywhere: ``--model``, ``--backend``, ``--device``, ``--dtype``,
``--out``, ``--seed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

app = typer.Typer(
    name="cgar",
    help="cgar_interp: probe in-context learning as context-gated associative retrieval.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback never prints variables (an API key)
)
console = Console(stderr=True)

ModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="'embedded', a checkpoint directory, or a hub id.")
]
BackendOpt = Annotated[
    str,
    typer.Option("--backend", "-b", help="transformer_lens | nnsight | hf (plain transformers)."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu | cuda | cuda:N | auto (all GPUs).")]
DtypeOpt = Annotated[
    str | None,
    typer.Option("--dtype", help="float32 | bfloat16 | float16 (default: fp32 CPU, bf16 GPU)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(err: Exception) -> None:
    from rich.markup import escape

    from .remote_errors import scrub

    console.print(f"[bold red]error:[/] {escape(scrub(str(err)))}", soft_wrap=True)
    raise typer.Exit(code=2)


REMOTE_FAILED = 3
"""``cgar run --remote`` exit code when NDIF failed (finished units are kept: --resume)."""


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="'embedded', a checkpoint directory, or a hub id.")
    ] = "embedded",
    backend: BackendOpt = "transformer_lens",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="List the models NDIF reports as running (needs an NDIF API key); with a "
            "MODEL, also say whether NDIF runs it.",
        ),
    ] = False,
) -> None:
    """Print a model's architecture, backend, dtype, device and checkpoint hash."""
    from .embedded import EmbeddedModelMissing
    from .models import load_model

    if remote:
        _info_remote(None if model == "embedded" else model, as_json)
        return
    _quiet_transformers()
    try:
        handle = load_model(model, backend=backend, device=device, dtype=dtype)
    except (ValueError, EmbeddedModelMissing) as err:
        _fail(err)
    record = handle.provenance()
    if as_json:
        print(json.dumps(record, indent=2, default=str))
        return
    table = Table(title=f"{handle.name}", show_header=False)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for key in (
        "model_path",
        "model_hash",
        "backend",
        "device",
        "dtype",
        "prepend_bos",
        "bos_token",
    ):
        table.add_row(key, str(record[key]))
    for key, value in record["architecture"].items():
        table.add_row(key, str(value))
    table.add_row("versions", ", ".join(f"{k} {v}" for k, v in record["versions"].items()))
    Console().print(table)


def _info_remote(model: str | None, as_json: bool) -> None:
    """``cgar info --remote``: NDIF's running models (and whether ``model`` is one)."""
    from .remote import configured_api_key
    from .remote_errors import scrub
    from .remote_preflight import (
        RemotePreflightError,
        check_model,
        deployments,
        ndif_host,
        ndif_status,
    )

    key = configured_api_key()
    if key is None:
        _fail(
            ValueError(
                "cgar info --remote needs an NDIF API key, read from $NDIF_API_KEY first, else "
                "from nnsight's saved config: set the variable or run nnsight.login() (keys are "
                "issued at https://login.ndif.us)"
            )
        )
    try:
        found = deployments(ndif_status(key))
    except RemotePreflightError as err:
        _fail(err)
    running = [d for d in found if d["running"]]
    verdict = None
    if model is not None:
        try:
            check_model(model, found)
            verdict = f"NDIF runs {model}"
        except RemotePreflightError as err:
            verdict = str(err)
    if as_json:
        record = {"host": ndif_host(), "running": running, "model": model, "verdict": verdict}
        print(scrub(json.dumps(record, indent=2)))
        return
    table = Table(title=f"models running on NDIF ({ndif_host()})")
    for column in ("model", "level", "state", "replicas"):
        table.add_column(column)
    for d in running:
        table.add_row(d["repo_id"], d["level"], d["state"], str(d["replicas"]))
    Console().print(table)
    if not running:
        console.print(f"NDIF at {ndif_host()} reports no running model")
    if verdict is not None:
        console.print(scrub(verdict), markup=False, soft_wrap=True)


@app.command()
def sites(
    layers: Annotated[
        int | None,
        typer.Option(help="Also list every site name for a model with this many layers."),
    ] = None,
) -> None:
    """List the site kinds (names, canonical shapes, whether patchable)."""
    from .sites import all_sites, site_kinds

    table = Table(title="site kinds (name: <kind>.<layer>)")
    for column in ("kind", "shape", "patchable", "meaning"):
        table.add_column(column)
    for kind in site_kinds().values():
        table.add_row(kind.name, kind.shape, "yes" if kind.patchable else "", kind.doc)
    Console().print(table)
    if layers is not None:
        print(" ".join(str(s) for s in all_sites(layers)))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to write.")] = Path(
        "runs/demo"
    ),
    model: ModelOpt = "embedded",
    backend: BackendOpt = "transformer_lens",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Run the demo on the embedded model and write a run directory."""
    from .demo import run_demo
    from .embedded import EmbeddedModelMissing

    _quiet_transformers()
    try:
        path = run_demo(
            out, model=model, backend=backend, device=device, dtype=dtype, console=console
        )
    except (ValueError, EmbeddedModelMissing) as err:
        _fail(err)
    console.print(f"[green]demo written to[/] {path}")


class _RateColumn:
    """Prompts per second of a rich progress task (a rich ProgressColumn, built lazily)."""

    def __new__(cls):
        from rich.progress import ProgressColumn
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed:.2f} prompts/s" if task.speed else "- prompts/s")

        return Rate()


def _progress_factory(progress_bar):
    def make(description: str, total: int):
        task = progress_bar.add_task(description, total=total)
        return lambda n: progress_bar.advance(task, n)

    return make


@app.command()
def run(
    suite_file: Annotated[
        Path, typer.Argument(help="Suite TOML file, or a shipped suite name (see `cgar suites`).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<suite name>).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Override the suite's model.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", "-b", help="Override the suite's backend.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="Override the suite's device.")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="Override the suite's dtype.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the suite's seed.")] = None,
    n_eval: Annotated[
        int | None, typer.Option("--n-eval", help="Override eval queries per task.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete the run in --out and start over.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    jsonl: Annotated[
        bool, typer.Option("--jsonl", help="Progress and result as JSON lines on stdout.")
    ] = False,
    allow_self_check_failure: Annotated[
        bool,
        typer.Option(
            "--allow-self-check-failure",
            help="Go on when a fast path disagrees with a plain forward (recorded in the "
            "manifest; a red banner in the report).",
        ),
    ] = False,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Run every forward pass on NDIF (nnsight's remote execution; the model is a hub "
            "id NDIF hosts; the API key is read from $NDIF_API_KEY, else from nnsight's saved "
            "config, see nnsight.login()). Checks first that NDIF runs the model, knows the "
            "key and runs this nnsight.",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="With --remote: print the requests and the bytes up and down a run would "
            "make, with independent passes grouped into sessions and with one request per "
            "pass, and run nothing (with a key configured, the NDIF preflight runs first).",
        ),
    ] = False,
) -> None:
    """Run a probe suite into a run directory (tables, figures, report.html).

    Before the first probe, the run compares every shortcut it will use (KV-cache prefix
    reuse, one-token suffix passes, decode algebra, attention patterns) with a plain forward
    on a few of its own prompts, and stops if one differs beyond the dtype's tolerance.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .backends import remote_backend
    from .config import ConfigError
    from .embedded import EmbeddedModelMissing
    from .remote import RemoteRunError, configured_api_key, remote_failure
    from .remote_errors import scrub
    from .rundir import RunDirError
    from .runner import plan_remote, run_suite
    from .selfcheck import SelfCheckFailed
    from .suite import load_suite

    _quiet_transformers()
    if dry_run and not remote:
        _fail(ValueError("--dry-run counts the requests of a remote run; add --remote"))
    try:
        suite = load_suite(
            suite_file,
            model=model,
            backend=remote_backend() if remote else backend,
            device=device,
            dtype=dtype,
            seed=seed,
            n_eval=n_eval,
            remote=True if remote else None,
        )
    except ConfigError as err:
        _fail(err)
    out = out or Path("runs") / suite.name
    resume_command = _resume_command(
        suite_file,
        out,
        remote=remote,
        model=model,
        backend=None if remote else backend,
        device=device,
        dtype=dtype,
        seed=seed,
        n_eval=n_eval,
        allow_self_check_failure=allow_self_check_failure,
    )
    stdout = sys.stdout  # JSON lines only, under --jsonl: everything else goes to stderr

    def remote_failed(err: RemoteRunError) -> None:
        message = scrub(str(err))
        if jsonl:
            record = {"event": "error", "kind": err.kind, "message": message}
            print(json.dumps({**record, "resume": resume_command}), file=stdout, flush=True)
        console.print(
            f"NDIF failure ({err.kind}): {message} Resume with: {resume_command}",
            markup=False,
            highlight=False,
            soft_wrap=True,
            style="red",
        )
        raise typer.Exit(code=REMOTE_FAILED)

    if dry_run:
        from .remote_preflight import preflight

        key = configured_api_key()
        try:
            if key is None:
                print(
                    "NDIF preflight skipped: no API key ($NDIF_API_KEY, or nnsight.login()); "
                    "the dry run sends nothing"
                )
            else:
                for line in preflight(suite.model, key).lines():
                    print(line)
            plan = plan_remote(suite)
        except (ConfigError, EmbeddedModelMissing, ValueError) as err:
            _fail(err)
        except RemoteRunError as err:
            _fail(err)
        for line in plan.lines():
            print(line)
        return

    def emit(message: str) -> None:
        message = scrub(message)
        if jsonl:
            print(json.dumps({"event": "unit", "message": message}), file=stdout, flush=True)
        elif not quiet:
            console.print(message, markup=False, highlight=False)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, disable=quiet or jsonl, transient=False)
    # nnsight's status line and download bars print to stdout: stderr under --jsonl
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if jsonl else contextlib.nullcontext()
    try:
        with quiet_stdout, bar:
            results = run_suite(
                suite,
                out,
                resume=resume,
                force=force,
                log=emit,
                progress=_progress_factory(bar),
                allow_self_check_failure=allow_self_check_failure,
            )
    except RemoteRunError as err:
        remote_failed(err)
    except (
        ConfigError,
        RunDirError,
        EmbeddedModelMissing,
        ValueError,
        SelfCheckFailed,
    ) as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]; finished units are kept. Resume with: {resume_command}",
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    except Exception as err:  # an NDIF failure outside a request (nnsight, httpx, websocket)
        failure = remote_failure(err, suite.model) if suite.remote else None
        if failure is None:
            raise
        remote_failed(failure)
    if jsonl:
        print(
            json.dumps(
                {"event": "finished", "run_dir": str(out), "tables": sorted(results.tables)}
            ),
            file=stdout,
            flush=True,
        )
    elif not quiet:
        console.print(f"[green]finished[/]: {out}/report.html")


def _resume_command(suite_file: Path, out: Path, **options) -> str:
    """The ``cgar run`` command that resumes this run: the same suite, --out and overrides."""
    import shlex

    parts = ["cgar", "run", str(suite_file), "--out", str(out)]
    if options.pop("remote", False):
        parts.append("--remote")
    for name, value in options.items():
        if value is True:
            parts.append(f"--{name.replace('_', '-')}")
        elif value not in (None, False):
            parts += [f"--{name.replace('_', '-')}", str(value)]
    parts.append("--resume")
    return " ".join(shlex.quote(p) for p in parts)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")]) -> None:
    """(Re)build figures and report.html of a run directory from its tables."""
    from .report import build_report

    if not (run_dir / "manifest.json").is_file():
        _fail(ValueError(f"{str(run_dir)!r} is not a run directory (no manifest.json)"))
    console.print(f"[green]written[/]: {build_report(run_dir)}")


@app.command()
def verdict(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")],
    rows: Annotated[
        bool,
        typer.Option(
            "--rows",
            help="Every row: task, test, the split it selected on, the difference with its "
            "paired interval, alpha_i, the detectable difference, the queries that would "
            "decide an inconclusive row.",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """The claims ledger of a run as a claim x task matrix (100 columns): each cell's verdict
    and key difference with its interval, then each claim's rule and correction once."""
    from .runner import run_ledger

    if not (run_dir / "manifest.json").is_file():
        _fail(ValueError(f"{str(run_dir)!r} is not a run directory (no manifest.json)"))
    ledger = run_ledger(run_dir)  # a multi-seed run: every seed and the overall verdict
    if json_out:
        print(ledger.to_json(orient="records"))
        return
    print_verdict(ledger, rows=rows, title=f"Verdict of {run_dir}")


TONE_STYLES = {"green": "green", "red": "red", "amber": "yellow", "grey": "bright_black"}
"""The terminal colour of each tone of :data:`cgar_interp.claims.matrix.TONES`."""


def print_verdict(ledger, rows: bool = False, title: str = "Verdict", width: int = 100) -> None:
    """The ledger on stdout, no line wider than ``width``: the claim x task matrix with what
    its cells say and each claim's rule and correction once, or (``rows``) every row."""
    from rich.text import Text

    from .claims.matrix import legend_lines, matrix_lines, row_lines, verdict_matrix

    out = Console(highlight=False, soft_wrap=True, width=width)
    if ledger.empty:
        out.print(f"{title}: the ledger has no rows (no probe of this run feeds a claim)")
        return
    matrix = verdict_matrix(ledger)
    if rows:
        lines = row_lines(matrix, width)
    else:
        head = f"{title}: {len(matrix.claims)} claims x {len(matrix.tasks)} tasks"
        lines = [[(head[:width], None)], *matrix_lines(matrix, width), [("", None)]]
        lines += legend_lines(matrix, width)
    for line in lines:
        text = Text()
        for piece, tone in line:
            text.append(piece, style=TONE_STYLES.get(tone or "", ""))
        out.print(text)


@app.command()
def suites() -> None:
    """List the shipped probe suites."""
    import tomllib

    from .suite import shipped_suites

    table = Table(title="shipped suites (cgar run NAME)")
    for column in ("name", "file", "tasks", "probes"):
        table.add_column(column)
    for path in shipped_suites():
        data = tomllib.loads(path.read_text())
        table.add_row(
            path.stem,
            str(path),
            ", ".join(data.get("tasks", [])),
            ", ".join(p.get("kind", "?") for p in data.get("probe", [])),
        )
    Console().print(table)


theory_app = typer.Typer(
    help="The context-gated Hopfield model: simulations, and theory vs measurement.",
    no_args_is_help=True,
)
app.add_typer(theory_app, name="theory")

PlotlyJsOpt = Annotated[
    str,
    typer.Option(
        "--plotlyjs",
        help="'directory' (one plotly.min.js beside the figures) or 'inline' (self-contained).",
    ),
]


def _print_frame(frame, title: str, floats: str = "{:.3g}") -> None:
    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(floats.format(v) if isinstance(v, float) else str(v) for v in row))
    Console().print(table)


@theory_app.command("simulate")
def theory_simulate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the tables and figures.")],
    seed: Annotated[int, typer.Option("--seed", help="Master seed of the simulations.")] = 0,
    plotlyjs: PlotlyJsOpt = "directory",
    as_json: JsonOpt = False,
) -> None:
    """Simulate the gated memory (the paper's N=50, d=10, beta=3.5): tables, figures, regime."""
    from dataclasses import asdict

    from plotly.offline import get_plotlyjs

    from .compare import simulation_summary
    from .figures.simulations import simulation_figures
    from .results import atomic_write_bytes, atomic_write_json, atomic_write_text
    from .rundir import parquet_bytes
    from .theory import SimulationConfig, run_simulations

    if plotlyjs not in ("directory", "inline"):
        _fail(ValueError(f"--plotlyjs {plotlyjs!r} is not valid: 'directory' or 'inline'"))
    try:
        config = SimulationConfig(seed=seed)
    except ValueError as err:
        _fail(err)
    tables = run_simulations(config)
    summary = simulation_summary(tables)
    for name, frame in {**tables, "summary": summary}.items():
        atomic_write_bytes(out / f"{name}.parquet", parquet_bytes(frame))
    atomic_write_json(out / "config.json", asdict(config))
    if plotlyjs == "directory":
        atomic_write_text(out / "plotly.min.js", get_plotlyjs())
    include = "directory" if plotlyjs == "directory" else True
    for name, fig in simulation_figures(tables).items():
        atomic_write_text(out / f"{name}.html", fig.to_html(include_plotlyjs=include))
    lam_unique = (2.0 * float(tables["retrieval_vs_lambda"].eta_min.mean()) / config.beta) ** 0.5
    if as_json:
        record = {
            "out": str(out),
            "config": asdict(config),
            "lam_unique_max": lam_unique,
            "summary": summary.to_dict(orient="records"),
        }
        print(json.dumps(record, indent=2, default=str))
        return
    short = {
        "lam": "lambda",
        "contraction_bound": "beta lam^2/2eta",
        "frac_uniqueness": "unique cond.",
        "error_first_order": "err 1st order",
        "error_fixed_point": "err fixed pt",
        "bound_mean": "Thm 3.1 bound",
        "bound_holds_fixed_point": "bound holds",
        "fixed_points_max": "fixed pts (max)",
        "stable_max": "stable (max)",
    }
    _print_frame(
        summary[[c for c in short if c in summary]].rename(columns=short),
        f"gated memory, N={config.n_memories}, d={config.dim}, beta={config.beta:g}: means "
        "over trials per lambda",
    )
    console.print(
        f"uniqueness condition beta lam^2/(2 eta_min) < 1 holds for lambda < {lam_unique:.3g} "
        f"(mean eta_min, alpha={config.alpha:g}); written to [green]{out}[/]"
    )


@theory_app.command("compare")
def theory_compare(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a context_gate probe.")],
    report: Annotated[
        bool, typer.Option("--report", help="Also rebuild figures and report.html.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit the section-2 model to a context-gate run and report its agreement (R^2, residuals)."""
    from .compare import compare_run

    try:
        tables = compare_run(run_dir)
    except ValueError as err:
        _fail(err)
    summary = tables["theory_summary"]
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(run_dir),
                    "fit": tables["theory_fit"].to_dict(orient="records"),
                    "summary": summary.to_dict(orient="records"),
                },
                indent=2,
                default=str,
            )
        )
    else:
        _print_frame(tables["theory_fit"], "effective beta per task and query layer")
        if not summary.empty:
            last_q = summary.q_layer.max()
            shown = summary[
                (summary["mode"] == "decode")
                & (summary.q_layer == last_q)
                & summary.metric.isin(("label_correct", "label_mass", "label_entropy"))
                & (summary.pooled | (summary.c_layer == summary.c_layer.max()))
            ][["task", "c_layer", "model", "metric", "r2", "rmse", "worst_lam"]]
            _print_frame(
                shown.replace({"c_layer": {-1: "all"}}),
                f"theory vs decode (q={last_q}; c = last, and pooled over c: 'all')",
            )
        console.print(
            f"[green]written[/]: {run_dir / 'tables'}/theory_*.parquet (diagnoses per curve in "
            "theory_summary; R^2 is nan where the measured curve is flat)"
        )
    if report:
        from .report import build_report

        if not (run_dir / "manifest.json").is_file():
            _fail(ValueError(f"{str(run_dir)!r} is not a run directory (no manifest.json)"))
        console.print(f"[green]written[/]: {build_report(run_dir)}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``cgar``). Run as a command (``argv`` None), it first
    restarts itself under tcmalloc where that is installed (``CGAR_ALLOCATOR``;
    :func:`cgar_interp.heap.reexec_under_allocator`): same numbers, less time and memory."""
    if argv is None:
        from .heap import reexec_under_allocator

        try:
            reexec_under_allocator(sys.orig_argv[1:])
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    app(args=argv if argv is not None else sys.argv[1:], prog_name="cgar")


if __name__ == "__main__":
    main()

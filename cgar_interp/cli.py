"""The ``cgar`` command line (typer). Every command is also a plain Python function.

Options are spelled the same everywhere: ``--model``, ``--backend``, ``--device``, ``--dtype``,
``--out``, ``--seed``.
"""

from __future__ import annotations

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
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


@app.command()
def info(
    model: Annotated[
        str, typer.Argument(help="'embedded', a checkpoint directory, or a hub id.")
    ] = "embedded",
    backend: BackendOpt = "transformer_lens",
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a model's architecture, backend, dtype, device and checkpoint hash."""
    from .embedded import EmbeddedModelMissing
    from .models import load_model

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
) -> None:
    """Run a probe suite into a run directory (tables, figures, report.html)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .config import ConfigError
    from .embedded import EmbeddedModelMissing
    from .rundir import RunDirError
    from .runner import run_suite
    from .suite import load_suite

    _quiet_transformers()
    try:
        suite = load_suite(
            suite_file,
            model=model,
            backend=backend,
            device=device,
            dtype=dtype,
            seed=seed,
            n_eval=n_eval,
        )
    except ConfigError as err:
        _fail(err)
    out = out or Path("runs") / suite.name

    def emit(message: str) -> None:
        if jsonl:
            print(json.dumps({"event": "unit", "message": message}), flush=True)
        elif not quiet:
            console.print(message)

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    bar = Progress(*columns, console=console, disable=quiet or jsonl, transient=False)
    try:
        with bar:
            results = run_suite(
                suite, out, resume=resume, force=force, log=emit, progress=_progress_factory(bar)
            )
    except (ConfigError, RunDirError, EmbeddedModelMissing, ValueError) as err:
        _fail(err)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]; finished units are kept. Resume with: "
            f"cgar run {suite_file} --out {out} --resume"
        )
        raise typer.Exit(code=130) from None
    if jsonl:
        print(
            json.dumps(
                {"event": "finished", "run_dir": str(out), "tables": sorted(results.tables)}
            ),
            flush=True,
        )
    elif not quiet:
        console.print(f"[green]finished[/]: {out}/report.html")


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A finished run directory.")]) -> None:
    """(Re)build figures and report.html of a run directory from its tables."""
    from .report import build_report

    if not (run_dir / "manifest.json").is_file():
        _fail(ValueError(f"{str(run_dir)!r} is not a run directory (no manifest.json)"))
    console.print(f"[green]written[/]: {build_report(run_dir)}")


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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``cgar``)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="cgar")


if __name__ == "__main__":
    main()

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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``cgar``)."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="cgar")


if __name__ == "__main__":
    main()

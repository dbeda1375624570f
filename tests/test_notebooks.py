"""The walkthrough notebooks execute top to bottom on the embedded model (integration tier)."""

from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CPU_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("0[1-3]_*.ipynb"))


def execute(path: Path, cwd: Path) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return nb


@pytest.mark.integration
@pytest.mark.parametrize("name", CPU_NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    nb = execute(NOTEBOOKS / name, tmp_path)
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert errors == []


def test_every_notebook_is_valid_and_built_from_the_script():
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert "01_quickstart" in names and "04_llama3_gpu" in names
    for path in NOTEBOOKS.glob("*.ipynb"):
        nbformat.validate(nbformat.read(path, as_version=4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="04_llama3_gpu needs a CUDA GPU")
def test_gpu_notebook(tmp_path):
    execute(NOTEBOOKS / "04_llama3_gpu.ipynb", tmp_path)

"""The walkthrough notebooks execute top to bottom on the embedded model (integration tier)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
GPU_NOTEBOOKS = {"04_llama3_gpu.ipynb"}  # executed by test_gpu_notebook where CUDA exists
CPU_NOTEBOOKS = sorted(
    p.name for p in NOTEBOOKS.glob("0[0-9]_*.ipynb") if p.name not in GPU_NOTEBOOKS
)


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
    assert "05_own_data.ipynb" in CPU_NOTEBOOKS and not GPU_NOTEBOOKS & set(CPU_NOTEBOOKS)
    for path in NOTEBOOKS.glob("*.ipynb"):
        nbformat.validate(nbformat.read(path, as_version=4))
    spec = importlib.util.spec_from_file_location(
        "build_notebooks", NOTEBOOKS / "build_notebooks.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert sorted(script.NOTEBOOKS) == names
    for name, cells in script.NOTEBOOKS.items():  # rerun build_notebooks.py after editing it
        written = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
        assert [(c.cell_type, c.source) for c in written] == [
            (c.cell_type, c.source) for c in cells
        ], f"{name}.ipynb differs from build_notebooks.py"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="04_llama3_gpu needs a CUDA GPU")
def test_gpu_notebook(tmp_path):
    execute(NOTEBOOKS / "04_llama3_gpu.ipynb", tmp_path)

"""The figures package: figure keys, the registry, and figures rebuilt from a run's tables alone."""

import ast
import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

import cgar_interp
from cgar_interp.figures import FIGURES, FigureKey, build_figures, figures_for, register_figure
from cgar_interp.figures.registry import FigureSpec, section_rank, section_title

from .probe_helpers import synthetic_inputs

PACKAGE = Path(cgar_interp.__file__).parent

# --------------------------------------------------------------------------------------------
# keys and the registry


@pytest.mark.parametrize(
    ("name", "table", "task"),
    [
        ("context_gate-sst2-mini", "context_gate", "sst2-mini"),
        ("head_mediation_heads-a-b-c", "head_mediation_heads", "a-b-c"),
        ("shots-reviews", "shots", "reviews"),
        ("subspace--lead", "subspace", "-lead"),
    ],
)
def test_figure_key_parses_at_the_first_dash_and_prints_the_name(name, table, task):
    key = FigureKey.parse(name)
    assert (key.table, key.task) == (table, task)
    assert str(key) == name == f"{table}-{task}"
    assert FigureKey.parse(key) is key
    assert hash(key) == hash(FigureKey(table, task))


@pytest.mark.parametrize("name", ["context_gate", "-sst2", "context_gate-", ""])
def test_figure_key_refuses_a_name_without_table_or_task(name):
    with pytest.raises(ValueError, match="figure"):
        FigureKey.parse(name)


def test_a_table_name_with_a_dash_is_refused():
    with pytest.raises(ValueError, match="without '-'"):
        FigureKey("context-gate", "sst2")
    with pytest.raises(ValueError, match="without '-'"):
        register_figure("my-table", lambda table, task: go.Figure())


def test_registry_holds_every_table_figure_once_with_its_section():
    assert list(FIGURES) == [
        "context_gate",
        "task_vectors",
        "shots",
        "theory_compare",
        "hopfield_heads",
        "hopfield_regimes",
        "subspace",
        "head_mediation",
        "head_mediation_heads",
    ]
    assert all(isinstance(spec, FigureSpec) and spec.table == t for t, spec in FIGURES.items())
    assert [t for t, spec in FIGURES.items() if spec.sweep] == ["shots"]
    assert section_rank("context_gate") == 0 and section_rank("subspace") == 1
    assert section_title("head_mediation_heads") == "head mediation heads"
    assert section_title("not_registered") == "not registered"
    with pytest.raises(ValueError, match="already has a figure"):
        register_figure("subspace", lambda table, task: go.Figure())


def test_a_registered_figure_is_built_for_each_task_of_its_table():
    def build(table, task):
        return go.Figure(go.Scatter(y=table[table.task == task].value))

    spec = register_figure("my_probe", build, section="my probe, per task")
    try:
        table = pd.DataFrame({"task": ["a-1", "a-1", "b"], "value": [1.0, 2.0, 3.0]})
        figs = build_figures({"my_probe": table, "other": table})
        assert list(figs) == [FigureKey("my_probe", "a-1"), FigureKey("my_probe", "b")]
        assert list(figs[FigureKey("my_probe", "a-1")].data[0].y) == [1.0, 2.0]
        assert section_title("my_probe") == spec.section == "my probe, per task"
        assert set(figures_for({"my_probe": table})) == {"my_probe-a-1", "my_probe-b"}
    finally:
        del FIGURES["my_probe"]


def _project_imports(path: Path) -> set[str]:
    """The ``cgar_interp`` modules a source file imports (relative imports resolved)."""
    package = ["cgar_interp", *path.relative_to(PACKAGE).parent.parts]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module is None:  # from . import a, b
                found |= {f"{module}.{alias.name}" for alias in node.names}
            else:
                found.add(module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m == "cgar_interp" or m.startswith("cgar_interp.")}


def test_figure_modules_import_only_downwards_and_compare_draws_nothing():
    figures = PACKAGE / "figures"
    imports = {p.stem: _project_imports(p) for p in figures.glob("*.py")}
    assert imports["style"] == set()  # the leaf
    assert imports["registry"] == {"cgar_interp.shots"}
    for family in ("gate", "hopfield", "subspace", "mediation", "theory", "simulations"):
        others = imports[family] - {"cgar_interp.figures.style", "cgar_interp.figures.registry"}
        # families never import the package, each other, or anything above the tables' code
        assert not {m for m in others if m.startswith("cgar_interp.figures")}, family
        assert others <= {"cgar_interp.compare.predict", "cgar_interp.compare.terms"}, family
    for sub in ("compare", "theory"):
        for path in (PACKAGE / sub).glob("*.py"):
            assert not {m for m in _project_imports(path) if m.startswith("cgar_interp.figures")}
    import cgar_interp.compare
    import cgar_interp.theory

    assert not hasattr(cgar_interp.compare, "theory_compare_figure")
    assert not hasattr(cgar_interp.theory, "simulation_figures")


# --------------------------------------------------------------------------------------------
# figures rebuilt from the tables of a run directory alone


@pytest.fixture(scope="module")
def run_dir(tiny_handles, tmp_path_factory):
    """A tiny run directory: every probe with a figure, on the tiny Llama, plus the theory
    comparison; written as parquet and a manifest, as the runner writes them."""
    from cgar_interp.compare import compare_tables
    from cgar_interp.probes import ProbeContext, get_probe
    from cgar_interp.probes.context_gate import ContextGateConfig
    from cgar_interp.probes.head_mediation import HeadMediationConfig
    from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig
    from cgar_interp.probes.subspace import SubspaceConfig
    from cgar_interp.probes.task_vectors import TaskVectorConfig

    handle = tiny_handles["hf"]
    inputs = synthetic_inputs(n=12)
    configs = {
        "context_gate": ContextGateConfig(context_layers=(1, 2), lambdas=(0.0, 0.1, 1.0)),
        "task_vectors": TaskVectorConfig(),
        "hopfield_heads": HopfieldHeadsConfig(max_queries=6),
        "subspace": SubspaceConfig(cv_folds=2, n_random=20),
        "head_mediation": HeadMediationConfig(
            top_k=2, n_random=2, max_queries=6, n_permutations=50
        ),
    }
    ctx = ProbeContext(handle, inputs, (0, 1, 2), n_boot=20, keep_states=True)
    tables: dict[str, pd.DataFrame] = {}
    for kind, config in configs.items():
        out = get_probe(kind).run(config, ctx)
        ctx.tables.update(out)
        tables.update(out)
    tables.update(compare_tables(tables["gate_terms"], tables["context_gate"], n_layers=2))
    path = tmp_path_factory.mktemp("figures") / "run"
    (path / "tables").mkdir(parents=True)
    for name, frame in tables.items():
        frame.to_parquet(path / "tables" / f"{name}.parquet", index=False)
    manifest = {"suite": {"name": "tiny", "tasks": [inputs.task]}, "status": "finished"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path, figures_for(tables)


def test_figures_rebuild_from_the_run_directory_tables_alone(run_dir):
    from cgar_interp.runner import RunResults

    path, in_memory = run_dir
    tables = RunResults.load(path).tables
    figs = figures_for(tables)
    task = "synthetic-tiny"
    expected = {f"{t}-{task}" for t, spec in FIGURES.items() if not spec.sweep}
    assert set(figs) == expected
    for name, fig in figs.items():
        assert isinstance(fig, go.Figure) and len(fig.data) >= 1, name
        assert fig.to_json() == in_memory[name].to_json(), name
    assert {str(key) for key in build_figures(tables)} == set(figs)


def test_a_k_shot_sweep_adds_the_shots_figure_and_draws_the_largest_k(run_dir):
    from cgar_interp.runner import RunResults

    path, _ = run_dir
    tables = RunResults.load(path).tables
    sweep = {}
    for name, frame in tables.items():
        k1 = frame.assign(shots=1)
        k2 = frame.assign(shots=2)
        if "value" in frame.columns:
            k2 = k2.assign(value=frame.value * 0.5)
        sweep[name] = pd.concat([k1, k2], ignore_index=True)
    figs = figures_for(sweep)
    assert "shots-synthetic-tiny" in figs
    assert len(figs["shots-synthetic-tiny"].data) >= 2
    at_k2 = {name: frame[frame.shots == 2] for name, frame in sweep.items()}
    assert (
        figs["subspace-synthetic-tiny"].to_json()
        == figures_for(at_k2)["subspace-synthetic-tiny"].to_json()
    )

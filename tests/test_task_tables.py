"""A researcher's own data through a suite: [[task]] tables, file tasks, the k-shot sweep."""

import json
import math

import pandas as pd
import pytest

from cgar_interp.config import ConfigError
from cgar_interp.data import CONTROL_KINDS, PromptConfig, build_prompts, load_task
from cgar_interp.suite import load_suite, parse_suite
from cgar_interp.task_spec import TaskSpec

PROBE = [{"kind": "task_vectors", "layers": [0, 20]}]


def write_reviews(path, n_per_class=4, flip=False):
    """A small hand-written task file: 4 examples per class (fewer than the default pool)."""
    good = ["a delight", "warm and funny", "superb acting", "I loved it", "a gem", "moving"]
    bad = ["a bore", "dull and long", "badly acted", "I hated it", "a mess", "tedious"]
    rows = [{"text": t, "label": 1} for t in good[:n_per_class]]
    rows += [{"text": t, "label": 0} for t in bad[:n_per_class]]
    if flip:
        rows[0]["text"] = "changed"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def suite_file(directory, body: str):
    path = directory / "suite.toml"
    path.write_text(body)
    return path


def test_task_tables_parse_with_every_option(tmp_path):
    write_reviews(tmp_path / "reviews.jsonl")
    path = suite_file(
        tmp_path,
        """
tasks = ["sst2-mini"]
[[task]]
path = "reviews.jsonl"
classes = ["negative", "positive"]
label_words = ["bad", "good"]
template = { query = "Review: {text}\\nVerdict:", answer = " {label}\\n" }
demo_pool_per_class = 2
n_fit = 2
n_eval = 3
duplicates = "drop"
[[probe]]
kind = "task_vectors"
""",
    )
    suite = load_suite(path)
    names, table = suite.task_specs
    assert names == TaskSpec(name="sst2-mini")
    assert table.path == str((tmp_path / "reviews.jsonl").resolve())
    assert table.template.query == "Review: {text}\nVerdict:"
    options = table.loader_options()
    assert options["label_words"] == ("bad", "good") and options["duplicates"] == "drop"
    task = load_task(table.source, **options)
    assert task.template.format_query("x") == "Review: x\nVerdict:"
    assert suite.to_dict()["task"][0]["demo_pool_per_class"] == 2


def test_plain_suites_keep_their_hash():
    """A suite without [[task]] tables hashes as before they existed (old runs resume)."""
    suite = parse_suite({"tasks": ["sst2-mini"], "probe": PROBE})
    assert "task" not in suite.to_dict()
    assert (
        suite.config_hash() == parse_suite({"tasks": ["sst2-mini"], "probe": PROBE}).config_hash()
    )


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (
            {"path": "r.jsonl", "templat": {}},
            r"unknown key 'templat' in \[\[task\]\] 1 \(r.jsonl\).*did you mean 'template'",
        ),
        (
            {"name": "sst2-mini", "duplicates": "keep"},
            r"\[\[task\]\] 1 \(sst2-mini\).*'duplicates' must be one of error, drop; got 'keep'",
        ),
        ({"name": "sst2", "path": "r.jsonl"}, r"exactly one of 'name'.*and 'path'.*got both"),
        ({"classes": ["a"]}, r"exactly one of 'name'.*got neither"),
        (
            {"path": "r.jsonl", "demo_pool_per_class": 0},
            r"\(r.jsonl\).*'demo_pool_per_class' must be >= 1; got 0",
        ),
        (
            {"path": "r.jsonl", "template": {"query": "no text slot"}},
            r"\(r.jsonl\).*template query must contain '\{text\}' once",
        ),
        (
            {"path": "r.jsonl", "classes": ["a", "b"], "label_words": ["x"]},
            r"one label word per class",
        ),
        ({"path": "../outside.jsonl"}, r"outside the suite's directory"),
        (
            {"path": "r.jsonl", "n_eval": "ten"},
            r"key 'n_eval' in \[\[task\]\] 1 \(r.jsonl\).*must be an integer; got 'ten'",
        ),
    ],
)
def test_bad_task_tables_name_the_key_and_the_task(tmp_path, table, match):
    with pytest.raises(ConfigError, match=match):
        parse_suite({"task": [table], "probe": PROBE}, base_dir=tmp_path)


def test_shots_lists_are_validated():
    for shots, match in (
        ([0], r"at least one >= 1"),
        ([1, -1], r">= 0"),
        ([1, 1], r"repeats a value"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_suite({"tasks": ["sst2-mini"], "shots": shots, "probe": PROBE})
    suite = parse_suite({"tasks": ["sst2-mini"], "shots": [8, 0, 2, 1], "probe": PROBE})
    assert suite.shot_list == (1, 2, 8) and suite.sweeps_shots


def test_same_file_name_in_two_folders_gets_two_keys(tmp_path):
    a = TaskSpec(path=str(tmp_path / "a" / "data.jsonl"))
    b = TaskSpec(path=str(tmp_path / "b" / "data.jsonl"))
    assert a.key() != b.key()
    for key in (a.key(), b.key()):
        assert key.startswith("data-") and "/" not in key and ".." not in key


def test_prompts_are_nested_as_k_grows():
    """A query keeps its demonstrations (and their order) as k grows."""
    task = load_task("sst2-mini")
    built = {
        k: build_prompts(
            task, PromptConfig(k=k, k_max=4, n_fit=4, n_eval=8, label_controls=CONTROL_KINDS)
        )
        for k in (1, 2, 4)
    }
    for q in range(12):
        demos = {k: built[k].get("icl")[q].demo_ids for k in built}
        assert len(demos[1]) == 2 and len(demos[2]) == 4 and len(demos[4]) == 8
        for small, big in ((1, 2), (2, 4)):
            assert set(demos[small]) <= set(demos[big])
            assert [d for d in demos[big] if d in demos[small]] == list(demos[small])
        zero = {built[k].get("zero")[q].text for k in built}
        assert len(zero) == 1  # the same queries and zero-shot prompts at every k
    # without k_max, prompts are exactly what they were before sweeps existed
    plain = build_prompts(task, PromptConfig(k=1, n_fit=4, n_eval=8))
    assert plain.texts("icl") == build_prompts(task, PromptConfig(k=1, n_fit=4, n_eval=8)).texts(
        "icl"
    )


SMALL = """
name = "own"
model = "embedded"
backend = "hf"
n_fit = 2
n_eval = 2
n_boot = 20
batch_size = 8
{extra}
[[task]]
path = "a/data.jsonl"
classes = ["negative", "positive"]
template = {{ query = "Review: {{text}}\\nSentiment:", answer = " {{label}}\\n" }}
demo_pool_per_class = 2
[[task]]
path = "b/data.jsonl"
classes = ["negative", "positive"]
demo_pool_per_class = 2

[[probe]]
kind = "task_vectors"
layers = [0, 20]
"""


@pytest.mark.integration
def test_file_tasks_run_end_to_end_and_a_changed_file_is_refused(tmp_path, embedded_handles):
    from cgar_interp.rundir import RunDirError
    from cgar_interp.runner import run_suite

    write_reviews(tmp_path / "a" / "data.jsonl")
    write_reviews(tmp_path / "b" / "data.jsonl", flip=True)
    suite = load_suite(suite_file(tmp_path, SMALL.format(extra="tasks = []")))
    out = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    result = run_suite(suite, out, handle=embedded_handles["hf"], report=False)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    touched = [p for p in after if before.get(p) != after[p]]
    scratch = out.parent / f".{out.name}.tmp"  # the atomic writer's temp files, beside it
    inside = [out, scratch]
    assert touched and all(p in inside or any(d in p.parents for d in inside) for p in touched)
    keys = [spec.key() for spec in suite.task_specs]
    assert len(set(keys)) == 2
    for key in keys:  # each task has its own directory inside the run
        assert (out / "units" / key / "00-task_vectors" / "done.json").is_file()
    table = result.tables["task_vectors"]
    assert sorted(table.task.unique()) == sorted(keys)  # two data.jsonl, told apart
    manifest = json.loads((out / "manifest.json").read_text())
    from cgar_interp.data.loaders import sha256_file

    for spec in suite.task_specs:
        assert manifest["data_sha256"][spec.key()] == sha256_file(spec.path)
    write_reviews(tmp_path / "b" / "data.jsonl", flip=False)  # the file changes ...
    with pytest.raises(RunDirError, match=r"b/data.jsonl' changed since this run began"):
        run_suite(suite, out, handle=embedded_handles["hf"], resume=True, report=False)


@pytest.mark.integration
def test_shots_sweep_tables_and_figures(tmp_path, embedded_handles):
    from cgar_interp.runner import run_suite

    suite = parse_suite(
        {
            "model": "embedded",
            "backend": "hf",
            "tasks": ["sst2-mini"],
            "shots": [0, 1, 2],
            "n_fit": 4,
            "n_eval": 6,
            "n_boot": 20,
            "probe": [
                {
                    "kind": "context_gate",
                    "context_layers": [30],
                    "lambdas": [0, 1],
                    "vectors": ["context"],
                },
                {"kind": "task_vectors", "layers": [20]},
            ],
        }
    )
    result = run_suite(suite, tmp_path / "run", handle=embedded_handles["hf"])
    gate = result.tables["context_gate"]
    base = gate[(gate["mode"] == "baseline") & (gate.metric == "label_mass")]
    assert sorted(base[base.vector == "zero_shot"].shots) == [0]  # once, not per k
    assert sorted(base[base.vector == "icl"].shots) == [1, 2]
    assert set(result.tables["task_vectors"].shots) == {1, 2}
    assert set(result.tables["theory_fit"].shots) == {1, 2}
    assert set(result.tables["theory_gate_strength"].shots) == {1, 2}
    assert "shots-sst2-mini" in result.figure_names
    fig = result.figure("shots-sst2-mini")
    assert [list(t.x) for t in fig.data[:2]] == [[0, 1, 2], [0, 1, 2]]
    assert (tmp_path / "run" / "units" / "sst2-mini" / "shots-2" / "00-context_gate").is_dir()
    prompts = pd.read_parquet(tmp_path / "run" / "prompts.parquet")
    one, two = (prompts[(prompts.kind == "icl") & (prompts.shots == k)] for k in (1, 2))
    for a, b in zip(one.demo_ids, two.demo_ids, strict=True):
        assert set(a) <= set(b)  # nested


def test_saved_dataset_directory_and_hub_names_through_task_tables(tmp_path):
    """A save_to_disk directory loads through a [[task]] table's `path`; a hub name keeps its
    exact offline error."""
    import datasets

    from cgar_interp.data.loaders import DatasetUnavailable, sha256_dir
    from cgar_interp.tasks_bridge import load_spec

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    texts = [f"review number {i}" for i in range(12)]
    data = datasets.Dataset.from_dict(
        {"text": texts, "label": [i % 2 for i in range(12)]}, features=features
    )
    data.save_to_disk(str(tmp_path / "saved"))
    suite = parse_suite(
        {"task": [{"path": "saved", "demo_pool_per_class": 2}], "probe": PROBE}, base_dir=tmp_path
    )
    (spec,) = suite.task_specs
    task = load_spec(spec)
    assert task.classes == ("neg", "pos") and len(task.examples) == 12
    assert spec.data_sha256() == sha256_dir(tmp_path / "saved")
    hub = parse_suite({"task": [{"name": "sst2", "split": "validation"}], "probe": PROBE})
    with pytest.raises(DatasetUnavailable, match="HF_HUB_OFFLINE"):
        load_spec(hub.task_specs[0])


def test_an_option_the_loader_does_not_take_names_the_task(tmp_path):
    from cgar_interp.tasks_bridge import load_spec

    write_reviews(tmp_path / "r.jsonl")
    suite = parse_suite(
        {"task": [{"path": "r.jsonl", "revision": "main"}], "probe": PROBE}, base_dir=tmp_path
    )
    with pytest.raises(ConfigError, match=r"task '.*r.jsonl'.*revision"):
        load_spec(suite.task_specs[0])


def test_fitted_gate_strength_interpolates_the_decode_curve():
    """lambda at which the decode curve reaches ICL's label mass, in closed form."""
    from cgar_interp.compare.tables import gate_strength

    def row(mode, vector, c, lam, value):
        return {"task": "t", "mode": mode, "vector": vector, "q_layer": 4, "c_layer": c,
                "lam": lam, "metric": "label_mass", "value": value, "n": 10,
                "ci_low": value - 0.01, "ci_high": value + 0.01}  # fmt: skip

    gate = pd.DataFrame(
        [row("baseline", "icl", -1, 0.0, 0.5)]
        + [row("decode", "context", 4, lam, v) for lam, v in ((0, 0.1), (1, 0.3), (10, 0.7))]
        + [row("decode", "context", 2, lam, v) for lam, v in ((0, 0.1), (1, 0.2), (10, 0.4))]
    )
    groups = {("t", 4, c): pd.DataFrame({"cbar_norm": [3.0]}) for c in (2, 4)}
    out = gate_strength(groups, gate).set_index("c_layer")
    # log-linear between lambda = 1 (0.3) and 10 (0.7): 10 ** ((0.5 - 0.3) / 0.4)
    assert out.loc[4, "lam_fit"] == pytest.approx(10**0.5) and out.loc[4, "reached"]
    assert math.isnan(out.loc[2, "lam_fit"]) and not out.loc[2, "reached"]
    assert out.loc[2, "best_label_mass"] == pytest.approx(0.4) and out.loc[2, "lam_best"] == 10


@pytest.mark.slow
def test_the_shipped_own_data_example_runs(tmp_path):
    """probes/own_data_example.toml as a fresh clone has it: a CSV with integer labels, class
    names, label words, a template, a small pool and a k-shot sweep, on the embedded model."""
    from cgar_interp.data.loaders import sha256_file
    from cgar_interp.runner import run_suite
    from cgar_interp.suite import SUITES_DIR

    suite = load_suite(SUITES_DIR / "own_data_example.toml")
    result = run_suite(suite, tmp_path / "run")
    gate = result.tables["context_gate"]
    assert set(gate.task) == {"sst2-mini", "movie_reviews"}
    assert set(gate.shots) == {0, 1, 2, 4}
    assert {"shots-movie_reviews", "shots-sst2-mini"} <= set(result.figure_names)
    csv = SUITES_DIR / "data" / "movie_reviews.csv"
    assert sha256_file(csv) in result.manifest["data_sha256"].values()
    assert result.manifest["self_check"]["passed"]
    # the hand-written reviews are learnt in context: ICL beats zero-shot on label mass
    mass = gate[(gate.task == "movie_reviews") & (gate.metric == "label_mass")]
    base = mass[mass["mode"] == "baseline"].set_index("shots").value
    assert base[4] > base[0]


def test_a_loader_of_your_own_is_one_registration(tmp_path):
    """A new kind of task source: one ``register_task_source`` call (no edit of the catalog,
    the suite's task table or the data package); its own keywords come through ``options``."""
    from cgar_interp.data import load_task
    from cgar_interp.data.catalog import EXTRA_SOURCES, TaskSource, register_task_source
    from cgar_interp.data.tasks import TaskError
    from cgar_interp.task_spec import TaskSpec

    seen = {}

    def load_bench(name, /, **options):
        seen.update(options, name=name)
        return load_task("synthetic", n_classes=2, n_per_class=4, seed=options.get("seed", 0))

    source = TaskSource("bench", lambda n: str(n).startswith("bench:"), load_bench, "bench:NAME")
    register_task_source(source)
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_task_source(source)
        spec = TaskSpec.parse({"name": "bench:hard", "options": {"level": 3, "seed": 1}}, "t")
        assert spec.loader_options() == {"level": 3, "seed": 1}
        assert spec.to_dict()["options"] == {"level": 3, "seed": 1}
        task = load_task(spec.source, **spec.loader_options())
        assert task.n_classes == 2 and seen == {"name": "bench:hard", "level": 3, "seed": 1}
        with pytest.raises(TaskError, match=r"unknown task 'nothing'; bench:NAME; shipped"):
            load_task("nothing")
        with pytest.raises(ConfigError, match="given in 'options' but is a key"):
            TaskSpec.parse({"name": "bench:x", "split": "a", "options": {"split": "b"}}, "t")
        with pytest.raises(ConfigError, match="key 'options' must be a table"):
            TaskSpec.parse({"name": "bench:x", "options": [1, 2]}, "t")
    finally:
        EXTRA_SOURCES.remove(source)
    assert load_task("sst2-mini").name == "sst2-mini"  # the built-ins, as before

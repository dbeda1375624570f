"""Paths in suite files stay inside the places they name; a run writes only under its directory."""

import os
from pathlib import Path

import pytest

from cgar_interp.config import ConfigError
from cgar_interp.suite import load_suite, parse_suite

ROWS = "\n".join(
    f'{{"text": "review number {i} {word}", "label": "{word}"}}'
    for i, word in enumerate(["positive", "negative"] * 4)
)


def write_suite(directory: Path, task: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "suite.toml"
    path.write_text(f'name = "paths"\ntasks = ["{task}"]\n\n[[probe]]\nkind = "task_vectors"\n')
    return path


def test_relative_task_paths_resolve_next_to_the_suite_file(tmp_path, monkeypatch):
    suites = tmp_path / "suites"
    (suites / "data").mkdir(parents=True)
    (suites / "data" / "reviews.jsonl").write_text(ROWS)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    suite = load_suite(write_suite(suites, "data/reviews.jsonl"))
    assert suite.tasks == (str((suites / "data" / "reviews.jsonl").resolve()),)
    assert Path(suite.tasks[0]).is_file()


@pytest.mark.parametrize(
    "task", ["../outside.jsonl", "data/../../outside.csv", "a/../../x.parquet"]
)
def test_relative_paths_escaping_the_suite_directory_are_refused(tmp_path, task):
    (tmp_path / "outside.jsonl").write_text(ROWS)
    with pytest.raises(ConfigError, match=r"outside the suite's directory .*stay inside it") as err:
        load_suite(write_suite(tmp_path / "suites", task))
    assert repr(task) in str(err.value)


def test_a_symlink_pointing_outside_is_refused(tmp_path):
    (tmp_path / "secret.jsonl").write_text(ROWS)
    suites = tmp_path / "suites"
    suites.mkdir()
    os.symlink(tmp_path / "secret.jsonl", suites / "link.jsonl")
    with pytest.raises(ConfigError, match=r"'link.jsonl' .* resolves to .*secret.jsonl"):
        load_suite(write_suite(suites, "link.jsonl"))


def test_absolute_paths_and_task_names_are_kept(tmp_path, monkeypatch):
    absolute = tmp_path / "data.csv"
    probe = [{"kind": "task_vectors"}]
    suite = parse_suite(
        {"tasks": [str(absolute), "sst2-mini", "synthetic", "ag_news"], "probe": probe}
    )
    assert suite.tasks == (str(absolute), "sst2-mini", "synthetic", "ag_news")
    monkeypatch.chdir(tmp_path)  # a dict suite resolves against the working directory
    assert parse_suite({"tasks": ["rows.jsonl"], "probe": probe}).tasks == (
        str(tmp_path.resolve() / "rows.jsonl"),
    )
    with pytest.raises(ConfigError, match="outside the suite's directory"):
        parse_suite({"tasks": ["../rows.jsonl"], "probe": probe})


@pytest.mark.integration
def test_a_run_writes_only_under_its_directory(tmp_path, monkeypatch, embedded_handles):
    """cwd and HOME stay empty; every file the run made is under the run directory."""
    from cgar_interp.embedded import cache_dir
    from cgar_interp.runner import run_suite

    cwd, home, out = tmp_path / "cwd", tmp_path / "home", tmp_path / "runs" / "one"
    cwd.mkdir()
    home.mkdir()
    monkeypatch.setenv("CGAR_CACHE", str(cache_dir()))  # the model cache is the one allowed place
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(cwd)
    suite = parse_suite(
        {
            "tasks": ["sst2-mini"],
            "backend": "hf",
            "n_fit": 2,
            "n_eval": 4,
            "n_boot": 10,
            "probe": [{"kind": "context_gate", "context_layers": [30], "modes": ["decode"]}],
        }
    )
    run_suite(suite, out, handle=embedded_handles["hf"], report=True)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written, "the run wrote nothing"
    assert [p for p in written if not p.is_relative_to(out)] == []
    assert (out / "report.html").is_file()
    assert list(cwd.iterdir()) == [] and list(home.iterdir()) == []

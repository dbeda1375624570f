"""Same seed, same tables across processes; another seed changes only what the seed controls."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.integration

SUITE = """
name = "seeds"
model = "embedded"
backend = "hf"
tasks = ["sst2-mini"]
n_fit = 3
n_eval = 5
batch_size = 8
n_boot = 50

[[probe]]
kind = "context_gate"
context_layers = [30]
lambdas = [0, 1]
modes = ["decode"]
vectors = ["context", "random"]
"""


def run(suite: Path, out: Path, seed: int) -> Path:
    cmd = [sys.executable, "-m", "cgar_interp.cli", "run", str(suite), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--seed", str(seed), "-q"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def tables(out: Path) -> dict[str, bytes]:
    files = sorted(out.glob("tables/*.parquet")) + [out / "prompts.parquet"]
    assert len(files) > 2, files
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    suite = root / "seeds.toml"
    suite.write_text(SUITE)
    return {name: run(suite, root / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 7))}


def test_same_seed_gives_byte_identical_tables_in_separate_processes(runs):
    first, second = tables(runs["a"]), tables(runs["b"])
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], name


def test_another_seed_changes_what_the_seed_controls_and_nothing_else(runs):
    a, c = runs["a"], runs["c"]
    prompts_a = pd.read_parquet(a / "prompts.parquet")
    prompts_c = pd.read_parquet(c / "prompts.parquet")
    # the seed draws the queries and demonstrations ...
    assert not prompts_a["text"].equals(prompts_c["text"])
    # ... and the random baseline direction, so the tables differ
    assert tables(a)["tables/context_gate.parquet"] != tables(c)["tables/context_gate.parquet"]
    manifest_a = json.loads((a / "manifest.json").read_text())
    manifest_c = json.loads((c / "manifest.json").read_text())
    assert (manifest_a["seed"], manifest_c["seed"]) == (0, 7)
    # what the seed does not touch: the model, its hash, the label tokens, the suite otherwise
    for key in ("model_hash", "backend", "dtype"):
        assert manifest_a[key] == manifest_c[key], key
    labels = "sst2-mini"
    assert manifest_a["tasks"][labels]["labels"] == manifest_c["tasks"][labels]["labels"]
    suite_a, suite_c = dict(manifest_a["suite"]), dict(manifest_c["suite"])
    suite_a.pop("seed"), suite_c.pop("seed")
    assert suite_a == suite_c

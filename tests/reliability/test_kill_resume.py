"""Kill ``cgar run`` with SIGKILL at seeded random points, resume: byte-identical tables.

Slow tier (`make test-slow`, also run by `.ci/run`): each point starts the CLI in a fresh
process on the embedded model.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SUITE = """
name = "kill"
model = "embedded"
backend = "hf"
tasks = ["sst2-mini", "trec-mini"]
n_fit = 4
n_eval = 8
batch_size = 8
n_boot = 50

[[probe]]
kind = "context_gate"
context_layers = [28, 30]
lambdas = [0, 1]

[[probe]]
kind = "task_vectors"
layers = [26, 30]
"""
TABLES = ("context_gate", "task_vectors", "gate_terms")


def cgar(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cgar_interp.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def assert_nothing_partial(run_dir: Path) -> None:
    """Every file inside the run directory is whole: no temp file, every table readable."""
    assert [p for p in run_dir.rglob("*.part")] == []
    for path in run_dir.rglob("*.parquet"):
        pd.read_parquet(path)
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    suite = root / "kill.toml"
    suite.write_text(SUITE)
    start = time.perf_counter()
    proc = cgar(["run", str(suite), "--out", str(root / "ref"), "-q"])
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return suite, root / "ref", time.perf_counter() - start


def test_sigkill_at_random_points_then_resume(reference, tmp_path):
    suite, ref_dir, seconds = reference
    rng = random.Random(1234)
    points = sorted(rng.uniform(0.15, 0.95) * seconds for _ in range(5))
    for i, delay in enumerate(points):
        run_dir = tmp_path / f"run{i}"
        proc = cgar(["run", str(suite), "--out", str(run_dir), "-q"])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if run_dir.exists():
            assert_nothing_partial(run_dir)
        resumed = cgar(["run", str(suite), "--out", str(run_dir), "--resume", "-q"])
        _, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 0, err
        assert_nothing_partial(run_dir)
        for name in TABLES:
            a = (ref_dir / "tables" / f"{name}.parquet").read_bytes()
            assert (run_dir / "tables" / f"{name}.parquet").read_bytes() == a, (i, delay, name)


def test_sigint_stops_cleanly_and_says_how_to_resume(reference, tmp_path):
    suite, _, seconds = reference
    run_dir = tmp_path / "int"
    proc = cgar(["run", str(suite), "--out", str(run_dir), "-q"])
    # mid-run for sure: after the first of its four units is written (a fixed fraction of the
    # reference run's time could land after the end on a machine whose speed drifts)
    deadline = time.perf_counter() + 2 * seconds + 60
    while not list(run_dir.glob("units/**/done.json")):
        assert proc.poll() is None, "the run ended before its first unit was written"
        assert time.perf_counter() < deadline, "no unit written in twice the reference time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "interrupted" in " ".join(err.split())
    assert_nothing_partial(run_dir)


def test_second_run_on_the_same_directory_is_refused(reference, tmp_path):
    suite, _, seconds = reference
    run_dir = tmp_path / "twice"
    first = cgar(["run", str(suite), "--out", str(run_dir), "-q"])
    time.sleep(min(8.0, 0.5 * seconds))
    second = cgar(["run", str(suite), "--out", str(run_dir), "--resume", "-q"])
    _, err = second.communicate(timeout=300)
    assert second.returncode == 2 and "in use by another process" in " ".join(err.split())
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err

"""Run directory: locking, identity checks, atomic units (no model needed)."""

import os

import pandas as pd
import pytest

from cgar_interp.results import PART_SUFFIX
from cgar_interp.rundir import RunDir, RunDirError, discard_temp_dir, temp_dir_for

ID = {"config_hash": "abc", "model_hash": "m1"}


def test_second_opener_is_refused_while_the_first_holds_the_lock(tmp_path):
    with (
        RunDir.open(tmp_path / "r", ID),
        pytest.raises(RunDirError, match=r"is in use by another process"),
    ):
        RunDir.open(tmp_path / "r", ID, resume=True)
    RunDir.open(tmp_path / "r", ID, resume=True).close()  # released on close


def test_identity_resume_and_force(tmp_path):
    with RunDir.open(tmp_path, ID) as run:
        run.write_manifest({"identity": ID, "status": "running"})
        run.write_unit("t", 0, "p", {"x": pd.DataFrame({"a": [1]})}, {})
    with pytest.raises(RunDirError, match=r"pass --resume to continue it or --force"):
        RunDir.open(tmp_path, ID)
    with pytest.raises(
        RunDirError, match=r"different model_hash \(model_hash: 'm1' there, 'm2' now\)"
    ):
        RunDir.open(tmp_path, {**ID, "model_hash": "m2"}, resume=True)
    with RunDir.open(tmp_path, ID, resume=True) as run:
        assert run.unit_done("t", 0, "p")
        assert run.read_unit("t", 0, "p")["x"].a.tolist() == [1]
    with RunDir.open(tmp_path, {**ID, "model_hash": "m2"}, force=True) as run:
        assert not run.unit_done("t", 0, "p") and run.read_manifest() is None


def test_foreign_directory_is_not_clobbered(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"not empty and holds no run manifest"):
        RunDir.open(tmp_path, ID)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match=r"cannot write to run directory"):
            RunDir.open(target, ID)
    finally:
        target.chmod(0o700)


def test_unit_without_done_marker_is_not_done(tmp_path):
    with RunDir.open(tmp_path, ID) as run:
        directory = run.unit_dir("t", 0, "p")
        directory.mkdir(parents=True)
        (directory / "x.parquet").write_bytes(b"partial")
        assert not run.unit_done("t", 0, "p")


def test_unwritable_location_is_a_clear_error(tmp_path):
    """A run directory that cannot be created (here: below a file; works as root too)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match=r"cannot write to run directory .*file/run"):
        RunDir.open(blocker / "run", ID)


def test_closing_a_run_leaves_nothing_beside_it(tmp_path):
    """Atomic writes keep their temp files in a sibling directory; once the run closes, the
    sibling is gone (and a killed writer's leftover is cleaned by the next open)."""
    path = tmp_path / "r"
    with RunDir.open(path, ID) as run:
        run.write_manifest({"identity": ID})
        run.write_table("t", pd.DataFrame({"a": [1]}))
        assert run.tmp.is_dir()  # the writes used it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    # a writer killed mid-write leaves a part file: the sibling stays until the next open
    stale = temp_dir_for(path) / f".t.parquet.abc{PART_SUFFIX}"
    stale.parent.mkdir()
    stale.write_bytes(b"partial")
    discard_temp_dir(path)
    assert stale.is_file()
    RunDir.open(path, ID, resume=True).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]

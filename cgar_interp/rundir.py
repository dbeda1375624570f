"""The run directory: manifest, lock, resumable units, final tables.

Layout::

    runs/NAME/manifest.json                 provenance, suite config, identity, status, stats
    runs/NAME/prompts.parquet               every prompt: text, token ids, query, kind, split
    runs/NAME/units/<task>/<i>-<probe>/     one finished unit: its tables + done.json (last)
    runs/NAME/tables/<table>.parquet        all units' rows, concatenated in suite order
    runs/NAME/figures/*.html, report.html

A unit counts as finished only when its ``done.json`` exists; it is written after the unit's
tables, each file atomically, so a killed run never shows a partial file and a resumed run
redoes exactly the units that had not finished. An exclusive ``flock`` on ``.lock`` keeps a
second process out of a directory in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import shutil
from pathlib import Path

import pandas as pd

from .remote_errors import scrub_data
from .results import atomic_write_bytes, atomic_write_json, remove_stale_parts

MANIFEST = "manifest.json"


class RunDirError(RuntimeError):
    """The output directory cannot be used as asked (other run, in use, not writable)."""


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def temp_dir_for(run_path: Path) -> Path:
    """Where a run directory's atomic writes keep their temp files: beside the run, not in it,
    so nothing partial is ever visible inside (a kill mid-write leaves only the sibling)."""
    run_path = Path(run_path)
    return run_path.parent / f".{run_path.name}.tmp"


def discard_temp_dir(run_path: Path) -> None:
    """Remove the run's sibling temp directory if it is empty: nothing of a finished write is
    left outside the run directory. One that still holds a killed writer's part file stays
    until the next :meth:`RunDir.open` removes the part and then the directory."""
    # absent, or not empty (a killed writer's part file, or a writer of the same run mid-write)
    with contextlib.suppress(OSError):
        temp_dir_for(run_path).rmdir()


class RunDir:
    """An opened, locked run directory. Use :meth:`open`."""

    def __init__(self, path: Path, lock_fh):
        self.path = path
        self._lock_fh = lock_fh
        self.tmp = temp_dir_for(path)

    @classmethod
    def open(
        cls, path: str | Path, identity: dict, *, resume: bool = False, force: bool = False
    ) -> RunDir:
        """Open ``path`` for a run whose numbers are determined by ``identity``.

        Args:
            identity: what must match to resume (suite config hash, model hash, ...).
            resume: continue a run with the same identity.
            force: delete whatever run is there and start over.

        Raises:
            RunDirError: another run with a different identity is there (and not ``force``), a
                run with the same identity is there and neither ``resume`` nor ``force`` was
                given, another process holds the lock, or the directory is not writable.
        """
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            lock_fh = open(path / ".lock", "a+")  # noqa: SIM115 - held for the run's lifetime
        except OSError as err:
            raise RunDirError(f"cannot write to run directory {str(path)!r}: {err}") from err
        try:
            fcntl.flock(lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_fh.close()
            raise RunDirError(
                f"run directory {str(path)!r} is in use by another process; wait for it to "
                "finish or choose another --out"
            ) from None
        run = cls(path, lock_fh)
        try:
            remove_stale_parts(path)  # a killed writer's temp files; we hold the lock
            if run.tmp.exists():
                remove_stale_parts(run.tmp)
                discard_temp_dir(path)
            run._check_identity(identity, resume=resume, force=force)
            if not os.access(path, os.W_OK):
                raise RunDirError(f"run directory {str(path)!r} is not writable")
        except BaseException:
            run.close()
            raise
        return run

    def _check_identity(self, identity: dict, *, resume: bool, force: bool) -> None:
        manifest = self.read_manifest()
        if manifest is None:
            if any(p.name not in (".lock",) for p in self.path.iterdir()) and not force:
                raise RunDirError(
                    f"{str(self.path)!r} is not empty and holds no run manifest; choose another "
                    "--out or pass --force to clear it"
                )
            if force:
                self._clear()
            return
        if force:
            self._clear()
            return
        old = manifest.get("identity", {})
        if old != identity:
            diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise RunDirError(
                f"{str(self.path)!r} holds a run with a different {', '.join(diff)} "
                f"({', '.join(f'{k}: {old.get(k)!r} there, {identity.get(k)!r} now' for k in diff)}); "
                "choose another --out, or pass --force to delete it and start over"
            )
        if not resume:
            raise RunDirError(
                f"{str(self.path)!r} already holds this run (status "
                f"{manifest.get('status', '?')!r}); pass --resume to continue it or --force to "
                "start over"
            )

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name == ".lock":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def close(self) -> None:
        if self._lock_fh is not None:
            discard_temp_dir(self.path)  # still under the lock: no writer of this run is left
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> dict | None:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as err:
            raise RunDirError(f"{self.path / MANIFEST} is not valid JSON: {err}") from err

    def write_manifest(self, manifest: dict) -> None:
        """Write ``manifest.json``, every string scrubbed of the NDIF API key."""
        atomic_write_json(self.path / MANIFEST, scrub_data(manifest), self.tmp)

    # ------------------------------------------------------------------ units
    def unit_dir(self, task: str, index: int, kind: str) -> Path:
        return self.path / "units" / task / f"{index:02d}-{kind}"

    def unit_done(self, task: str, index: int, kind: str) -> bool:
        return (self.unit_dir(task, index, kind) / "done.json").is_file()

    def write_unit(
        self, task: str, index: int, kind: str, tables: dict[str, pd.DataFrame], info: dict
    ) -> None:
        directory = self.unit_dir(task, index, kind)
        for name, frame in tables.items():
            atomic_write_bytes(directory / f"{name}.parquet", parquet_bytes(frame), self.tmp)
        atomic_write_json(directory / "done.json", {"tables": sorted(tables), **info}, self.tmp)

    def read_unit(self, task: str, index: int, kind: str) -> dict[str, pd.DataFrame]:
        directory = self.unit_dir(task, index, kind)
        done = json.loads((directory / "done.json").read_text())
        return {name: pd.read_parquet(directory / f"{name}.parquet") for name in done["tables"]}

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        return atomic_write_bytes(
            self.path / "tables" / f"{name}.parquet", parquet_bytes(frame), self.tmp
        )

    def write_parquet(self, relative: str, frame: pd.DataFrame) -> Path:
        return atomic_write_bytes(self.path / relative, parquet_bytes(frame), self.tmp)

"""Run-directory plumbing: atomic writes and the provenance manifest.

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a
killed run never leaves a half-written file that a resumed run would trust. The file gets the
mode the umask allows (``0o666 & ~umask``, 0644 under the usual 022), like any other tool's
output, not the 0600 of the temporary file, so a colleague on a shared server can open it.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PART_SUFFIX = ".part"
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows.

    Linux reports it in ``/proc/self/status``. Elsewhere ``os.umask`` is the only way, and it
    sets while it reads: the mask is briefly set to the strict 0o077 (never looser) under a lock.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def remove_stale_parts(root: str | os.PathLike) -> list[Path]:
    """Delete temporary files a killed writer left under ``root`` (call only under its lock)."""
    removed = []
    for path in Path(root).rglob(f".*{PART_SUFFIX}"):
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def atomic_write_bytes(
    path: str | os.PathLike, data: bytes, tmp_dir: str | os.PathLike | None = None
) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + ``os.replace``).

    ``tmp_dir`` (same filesystem) holds the temp file; default: ``path``'s own directory. A run
    directory passes a sibling, so that no partial file is ever visible inside the run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tmp_dir) if tmp_dir is not None else path.parent
    where.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PART_SUFFIX, dir=where)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, tmp_dir=None) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), tmp_dir)


def atomic_write_json(path: str | os.PathLike, obj: Any, tmp_dir=None) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    return atomic_write_text(path, text, tmp_dir)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

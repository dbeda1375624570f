"""Which environment a run runs in, measured against the lock it is meant to run in.

``make install`` installs ``requirements.lock`` (every transitive dependency pinned with ``==``
and its sha256 hashes; ``make lock`` regenerates it). :func:`lock_info` goes into every manifest
as ``environment``, beside ``versions``: the lock's SHA-256 and whether the installed packages
are the locked ones, so a number can be traced to the exact environment that produced it.

>>> info = lock_info()
>>> sorted(info)
['installed_matches_lock', 'lock_file', 'lock_sha256', 'mismatches']

Where no lock file is beside the package (a wheel installed into someone's own environment),
every value is None: that run's versions are the ones recorded under ``versions`` only.

``python -m cgar_interp.environment`` prints :func:`lock_info` as JSON; with ``--drift NAME...``
(as ``make test-latest`` runs it) it prints the named packages' versions against the lock and
every package that differs from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

LOCK_NAME = "requirements.lock"

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;.*)?$")
_HASH = re.compile(r"^--hash=(?P<algo>[a-z0-9]+):(?P<digest>[0-9a-f]+)$")


@dataclass(frozen=True)
class LockEntry:
    """One pinned package of a lock file: ``name==version`` and its ``--hash`` values."""

    name: str
    version: str
    hashes: tuple[str, ...]


def canonical_name(name: str) -> str:
    """PEP 503 normalised package name (``Jinja2`` and ``jinja2``, ``a_b`` and ``a-b`` agree)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_lock_path() -> Path | None:
    """The lock file of a source checkout (beside the package), or None (a wheel install)."""
    path = Path(__file__).resolve().parent.parent / LOCK_NAME
    return path if path.is_file() else None


def parse_lock(text: str) -> list[LockEntry]:
    """The pinned entries of a hash-pinned requirements file.

    Raises:
        ValueError: an entry that is not ``name==version`` (a range, an option line, a URL),
            or a malformed ``--hash``, naming the line.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append(pending.strip())
        pending = ""
    if pending.strip():
        logical.append(pending.strip())

    entries = []
    for line in logical:
        head, *options = line.split(" --")
        match = _PIN.match(head.strip())
        if match is None:
            raise ValueError(f"lock entry {line[:80]!r} does not pin one version with '=='")
        hashes = []
        for option in options:
            option = "--" + option.strip()
            hashed = _HASH.match(option)
            if hashed is None:
                raise ValueError(f"lock entry {match['name']!r} has an unexpected {option!r}")
            hashes.append(f"{hashed['algo']}:{hashed['digest']}")
        entries.append(LockEntry(canonical_name(match["name"]), match["version"], tuple(hashes)))
    return entries


def installed_versions() -> dict[str, str]:
    """Installed distributions, ``{canonical name: version}`` (the first on ``sys.path`` wins)."""
    out: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            out.setdefault(canonical_name(name), dist.version)
    return out


def _same_version(installed: str, locked: str) -> bool:
    if installed == locked:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging comes with transformers
        return False
    try:
        return Version(installed) == Version(locked)
    except InvalidVersion:
        return False


def lock_info(
    path: str | os.PathLike | None = None, installed: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The lock's hash and whether the installed packages are the locked ones.

    Args:
        path: the lock file; default: ``requirements.lock`` of the source checkout.
        installed: ``{name: version}`` to compare (default: this interpreter's packages).

    Returns:
        ``{"lock_file", "lock_sha256", "installed_matches_lock", "mismatches"}``; mismatches
        read ``"name: installed X, lock Y"`` or ``"name: not installed, lock Y"``. All four are
        None where there is no lock file (a wheel install).
    """
    lock = Path(path) if path is not None else default_lock_path()
    if lock is None or not lock.is_file():
        return {
            "lock_file": None,
            "lock_sha256": None,
            "installed_matches_lock": None,
            "mismatches": None,
        }
    data = lock.read_bytes()
    info: dict[str, Any] = {"lock_file": lock.name, "lock_sha256": hashlib.sha256(data).hexdigest()}
    try:
        entries = parse_lock(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        return {**info, "installed_matches_lock": False, "mismatches": [f"unreadable lock: {err}"]}
    have = (
        installed_versions()
        if installed is None
        else {canonical_name(k): v for k, v in installed.items()}
    )
    mismatches = []
    for entry in sorted(entries, key=lambda e: e.name):
        got = have.get(entry.name)
        if got is None:
            mismatches.append(f"{entry.name}: not installed, lock {entry.version}")
        elif not _same_version(got, entry.version):
            mismatches.append(f"{entry.name}: installed {got}, lock {entry.version}")
    return {**info, "installed_matches_lock": not mismatches, "mismatches": mismatches}


def _drift_report(names: list[str]) -> str:
    """The named packages' versions here against the lock, then every package that differs."""
    info = lock_info()
    have = installed_versions()
    path = default_lock_path()
    locked = {e.name: e.version for e in parse_lock(path.read_text())} if path else {}
    lines = [f"{'package':<20} {'installed':<16} lock"]
    for name in names:
        key = canonical_name(name)
        lines.append(f"{name:<20} {have.get(key, '-'):<16} {locked.get(key, '-')}")
    if info["lock_file"] is None:
        lines.append(f"no {LOCK_NAME} beside the package: nothing to compare")
    elif info["installed_matches_lock"]:
        lines.append(f"every package matches {LOCK_NAME} (sha256 {info['lock_sha256'][:12]})")
    else:
        lines.append(f"{len(info['mismatches'])} packages differ from {LOCK_NAME}:")
        lines.extend(f"  {m}" for m in info["mismatches"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--drift":
        print(_drift_report(argv[1:]))
    else:
        print(json.dumps(lock_info(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

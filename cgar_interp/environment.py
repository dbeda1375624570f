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

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>.*?))?\s*$"
)
_HASH = re.compile(r"^--hash=(?P<algo>[a-z0-9]+):(?P<digest>[0-9a-f]+)$")


@dataclass(frozen=True)
class LockEntry:
    """One pinned package of a lock file: ``name==version``, its ``--hash`` values, the
    environment marker it applies under (``None``: everywhere) and the packages that need it
    (uv's ``# via`` annotation; canonical names, ``()`` where the lock does not say)."""

    name: str
    version: str
    hashes: tuple[str, ...]
    marker: str | None = None
    via: tuple[str, ...] = ()

    def requirement_line(self) -> str:
        """The entry as a hash-pinned requirements line (what ``pip -r`` reads)."""
        head = f"{self.name}=={self.version}" + (f" ; {self.marker}" if self.marker else "")
        return " \\\n    ".join([head] + [f"--hash={h}" for h in self.hashes]) + "\n"

    def applies(self, environment: Mapping[str, str] | None = None) -> bool:
        """Whether the marker holds here (or in ``environment``, a PEP 508 marker mapping)."""
        if not self.marker:
            return True
        from packaging.markers import Marker  # packaging comes with transformers

        return Marker(self.marker).evaluate(dict(environment) if environment else None)


def canonical_name(name: str) -> str:
    """PEP 503 normalised package name (``Jinja2`` and ``jinja2``, ``a_b`` and ``a-b`` agree)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def default_lock_path() -> Path | None:
    """The lock file of a source checkout (beside the package), or None (a wheel install)."""
    path = Path(__file__).resolve().parent.parent / LOCK_NAME
    return path if path.is_file() else None


def parse_lock(text: str) -> list[LockEntry]:
    """The pinned entries of a hash-pinned requirements file (uv's universal output included:
    ``name==version ; marker``, the same name twice under disjoint markers).

    Raises:
        ValueError: an entry that is not ``name==version`` (a range, an option line, a URL),
            or a malformed ``--hash``, naming the line.
    """
    blocks: list[tuple[str, list[str]]] = []  # (logical requirement line, its comment lines)
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#"):
            if blocks and not pending and raw[:1].isspace():
                blocks[-1][1].append(stripped[1:].strip())
            continue
        line = raw.split(" #", 1)[0].strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            blocks.append((pending.strip(), []))
        pending = ""
    if pending.strip():
        blocks.append((pending.strip(), []))

    entries = []
    for line, comments in blocks:
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
        entries.append(
            LockEntry(
                canonical_name(match["name"]),
                match["version"],
                tuple(hashes),
                match["marker"] or None,
                _via(comments),
            )
        )
    return entries


def _via(comments: list[str]) -> tuple[str, ...]:
    """Package names of uv's ``# via`` annotation (``via a`` or ``via`` then one name a line);
    ``-r file`` and ``name (pyproject.toml)`` sources keep their first word."""
    names: list[str] = []
    reading = False
    for comment in comments:
        if comment.startswith("via"):
            reading = True
            comment = comment[3:].strip()
        if reading and comment:
            word = comment.split()[0]
            names.append(comment if word == "-r" else canonical_name(word))
    return tuple(names)


# The package whose own runtime (CUDA libraries, triton) depends on which build is installed.
TORCH = "torch"


def torch_runtime(entries: list[LockEntry], torch_requires: list[str] | None) -> set[str]:
    r"""Lock entries that only the installed torch build can ask for, and that this one does not.

    A universal lock carries the CUDA build's runtime (``nvidia-*``, ``triton``, ...), pinned
    for Linux. A CPU build of the same version (``torch==2.13.0+cpu``) requires none of them.
    The packages reached *only* through torch (uv's ``# via``) are torch's runtime; of those,
    the ones the installed torch names in its metadata, and what they in turn need, are kept.

    Args:
        entries: the lock's entries (:func:`parse_lock`).
        torch_requires: the installed torch's ``Requires-Dist`` lines
            (``importlib.metadata.requires("torch")``), or None where torch is not installed
            (then nothing is left out).

    Returns:
        Canonical names that need not be installed (and whose absence is no mismatch).

    >>> def pin(name, via):
    ...     return f"{name}==1.0 \\\n    --hash=sha256:{'a' * 64}\n    # via {via}\n"
    >>> lock = parse_lock(
    ...     pin("torch", "x") + pin("sympy", "torch") + pin("nvidia-a", "nvidia-b")
    ...     + pin("nvidia-b", "torch"))
    >>> sorted(torch_runtime(lock, ["sympy>=1"]))  # a CPU build
    ['nvidia-a', 'nvidia-b']
    >>> sorted(torch_runtime(lock, ["sympy>=1", "nvidia-b==1.0; sys_platform == 'linux'"]))
    []
    """
    if torch_requires is None:
        return set()
    by_name: dict[str, set[str]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, set()).update(entry.via)
    only_torch = {TORCH}
    changed = True
    while changed:
        changed = False
        for name, via in by_name.items():
            if name not in only_torch and via and via <= only_torch:
                only_torch.add(name)
                changed = True
    wanted = {
        canonical_name(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0]) for req in torch_requires
    }
    needed = wanted & only_torch
    changed = True
    while changed:
        changed = False
        for name in only_torch - needed - {TORCH}:
            if by_name[name] & (needed - {TORCH}):
                needed.add(name)
                changed = True
    return only_torch - needed - {TORCH}


def installed_torch_requires() -> list[str] | None:
    """The installed torch's ``Requires-Dist`` lines, or None where torch is not installed."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        return list(requires(TORCH) or [])
    except PackageNotFoundError:
        return None


def installed_versions() -> dict[str, str]:
    """Installed distributions, ``{canonical name: version}`` (the first on ``sys.path`` wins)."""
    out: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            out.setdefault(canonical_name(name), dist.version)
    return out


def _same_version(installed: str, locked: str) -> bool:
    """``installed`` satisfies ``==locked`` as pip reads it: a pin without a local label
    (``torch==2.13.0``) admits any local build of that version (``2.13.0+cpu``, ``+cu126``)."""
    if installed == locked:
        return True
    try:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.version import InvalidVersion
    except ImportError:  # pragma: no cover - packaging comes with transformers
        return False
    try:
        return SpecifierSet(f"=={locked}").contains(installed, prereleases=True)
    except (InvalidVersion, InvalidSpecifier):
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
    # the CUDA build's runtime, where the installed torch does not ask for it, is no mismatch
    left_out = torch_runtime(entries, installed_torch_requires()) if installed is None else set()
    mismatches = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not entry.applies():
            continue  # another platform's or another Python's pin
        got = have.get(entry.name)
        if got is None and entry.name in left_out:
            continue
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
    locked = (
        {e.name: e.version for e in parse_lock(path.read_text()) if e.applies()} if path else {}
    )
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

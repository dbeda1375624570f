"""Installs requirements.lock into the running interpreter's environment (`make install`).

Run by the venv's own python: ``.venv/bin/python scripts/install_lock.py requirements.lock``.

1. torch first, alone, from its lock entry (hash-checked). Where a folder of pip's find-links
   holds a local build of the pinned version for this interpreter whose sha256 is among the
   lock's torch hashes (``torch-2.13.0+cpu-cp311-...whl`` on our machines), that file is
   installed: pip itself would rank the index's build above it, since the index's links carry
   hashes and a folder's do not. Elsewhere pip takes the index's build for this platform: CUDA
   on Linux, Metal on macOS. With ``--torch-index URL`` (``make install TORCH_INDEX=URL``) torch comes from
   that index instead, with the CUDA libraries that build asks for, e.g. a specific CUDA build for
   an older driver; they are then the packages not checked against the lock's hashes, and the
   run's manifest records torch's local version (``2.13.0+cu126``).
2. Every other entry whose environment marker holds here, hash-checked, with ``--no-deps``
   (the lock is the whole closure), except the CUDA runtime (``nvidia-*``, ``triton``, ...) that
   the installed torch build does not ask for: a CPU build asks for none of it.

The lock's parsing and the choice of torch's runtime live in ``cgar_interp/environment.py``
(loaded here by path: the package's dependencies are not installed yet), so that every run's
manifest judges the environment by the same rules that installed it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _environment_module():
    spec = importlib.util.spec_from_file_location(
        "_cgar_environment", ROOT / "cgar_interp" / "environment.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *args]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise SystemExit(f"install_lock: `{' '.join(cmd)}` failed ({result.returncode})")


def _find_links() -> list[Path]:
    """Local folders among pip's find-links (``PIP_FIND_LINKS`` and ``pip config``)."""
    values = os.environ.get("PIP_FIND_LINKS", "").split()
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    for line in listed.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            values += value.strip().strip("'\"").split()
    folders = []
    for value in values:
        if "://" in value and not value.startswith("file://"):
            continue  # an index page, not a folder
        path = Path(value.removeprefix("file://"))
        if path.is_dir() and path not in folders:
            folders.append(path)
    return folders


def local_wheel(name: str, version: str, hashes: tuple[str, ...]) -> tuple[Path, str] | None:
    """A wheel of ``name==version`` (any local build label) in pip's find-links folders that
    installs on this interpreter and whose sha256 is one of ``hashes``: ``(path, hash)``."""
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import InvalidWheelFilename, parse_wheel_filename
    from pip._vendor.packaging.version import Version

    supported = set(sys_tags())
    for folder in _find_links():
        for wheel in sorted(folder.glob("*.whl")):
            try:
                wheel_name, wheel_version, _, tags = parse_wheel_filename(wheel.name)
            except InvalidWheelFilename:
                continue
            if wheel_name != name or wheel_version.public != Version(version).public:
                continue
            if not tags & supported:
                continue
            digest = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
            if digest in hashes:
                return wheel, digest
    return None


def _pip_marker_environment() -> dict[str, str]:
    """PEP 508 marker values of this interpreter, from pip's own vendored packaging (the
    project's packaging is not installed yet)."""
    from pip._vendor.packaging.markers import default_environment

    return default_environment()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--torch-index", default="", help="a package index URL for torch alone")
    args = parser.parse_args(argv)

    env = _environment_module()
    entries = env.parse_lock(args.lock.read_text())
    here = _pip_marker_environment()
    from pip._vendor.packaging.markers import Marker

    def applies(entry) -> bool:
        return not entry.marker or Marker(entry.marker).evaluate(here)

    torch = [e for e in entries if e.name == env.TORCH and applies(e)]
    if len(torch) != 1:
        raise SystemExit(f"install_lock: {args.lock} pins torch {len(torch)} times here, not once")
    with tempfile.TemporaryDirectory() as tmp:
        if args.torch_index:
            print(
                f"install_lock: torch=={torch[0].version} from {args.torch_index} (no hash check)"
            )
            # with its own dependencies: that build's CUDA libraries live on its index
            _pip("--index-url", args.torch_index, f"torch=={torch[0].version}")
        else:
            only_torch = Path(tmp) / "torch.txt"
            local = local_wheel(env.TORCH, torch[0].version, torch[0].hashes)
            if local is not None:
                print(f"install_lock: torch from the local wheel {local[0]} (hash in the lock)")
                only_torch.write_text(f"{local[0]} --hash={local[1]}\n")
            else:
                only_torch.write_text(torch[0].requirement_line())
            _pip("--require-hashes", "--no-deps", "-r", str(only_torch))

        left_out = env.torch_runtime(entries, env.installed_torch_requires())
        rest = [e for e in entries if e.name != env.TORCH and e.name not in left_out]
        others = Path(tmp) / "rest.txt"
        others.write_text("".join(e.requirement_line() for e in rest))
        _pip("--require-hashes", "--no-deps", "-r", str(others))
    from importlib.metadata import version

    print(
        f"install_lock: torch {version('torch')}; {sum(applies(e) for e in rest)} more packages"
        f" from {args.lock.name}"
        + (
            f"; not needed by this torch build: {len(left_out)} ({', '.join(sorted(left_out))})"
            if left_out
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

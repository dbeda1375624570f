"""Checks that requirements.lock installs on every platform it claims, without those machines:
for each (Python, platform) it takes the lock entries whose markers hold there and asks pip
(``install --dry-run --only-binary=:all: --require-hashes --platform ...``) to find a
hash-checked wheel for each. Needs the package index; not part of the tests.

    python scripts/check_lock_platforms.py            # every claimed platform
    python scripts/check_lock_platforms.py 3.12 linux-aarch64

Packages that publish no wheel for a platform are listed; they install from their sdist there
(its hash is in the lock too) and may need a compiler.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLATFORMS = {  # marker values, and the wheel tags pip may take there
    "linux-x86_64": (
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
        [f"manylinux_2_{v}_x86_64" for v in range(5, 41)]
        + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"],
    ),
    "linux-aarch64": (
        {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
        [f"manylinux_2_{v}_aarch64" for v in range(5, 41)]
        + ["manylinux2014_aarch64", "linux_aarch64"],
    ),
    "macos-arm64": (
        {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
        [f"macosx_{v}_0_arm64" for v in range(11, 16)]
        + [f"macosx_10_{v}_universal2" for v in range(9, 16)]
        + [f"macosx_{v}_0_universal2" for v in range(11, 16)],
    ),
}
PYTHONS = ("3.11", "3.12", "3.13")


def check(version: str, platform: str) -> tuple[int, list[str]]:
    """(pins with a wheel, names without one) for one interpreter and platform."""
    from packaging.markers import default_environment

    from cgar_interp.environment import parse_lock

    markers, tags = PLATFORMS[platform]
    env = {**default_environment(), **markers}
    env.update(python_version=version, python_full_version=f"{version}.0")
    entries = [e for e in parse_lock((ROOT / "requirements.lock").read_text()) if e.applies(env)]
    without: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            lines = [
                " ".join([f"{e.name}=={e.version}"] + [f"--hash={h}" for h in e.hashes])
                for e in entries
                if e.name not in without
            ]
            req = Path(tmp) / "req.txt"
            req.write_text("\n".join(lines) + "\n")
            report = Path(tmp) / "report.json"
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "--quiet",
                "--ignore-installed",
                "--target",
                str(Path(tmp) / "t"),
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                version,
                "--require-hashes",
                "-r",
                str(req),
                "--report",
                str(report),
            ]
            for tag in tags:
                cmd += ["--platform", tag]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode == 0:
                return len(json.loads(report.read_text())["install"]), without
            missing = [
                line.split("requirement ", 1)[1].split("==")[0]
                for line in out.stderr.splitlines()
                if "Could not find a version that satisfies the requirement" in line
            ]
            if not missing:
                raise SystemExit(f"pip failed for {version} {platform}:\n{out.stderr[-2000:]}")
            without += missing


def main(argv: list[str]) -> int:
    targets = [(argv[0], argv[1])] if argv else [(v, p) for p in PLATFORMS for v in PYTHONS]
    for version, platform in targets:
        wheels, without = check(version, platform)
        note = f"; no wheel (sdist): {', '.join(without)}" if without else ""
        print(f"Python {version} {platform}: {wheels} hash-checked wheels{note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

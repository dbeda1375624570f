"""docs/science.md is the project's own science document: the code cites it (never a file the
repository does not hold), every anchor cited exists, and every function it names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCIENCE = ROOT / "docs" / "science.md"
CITING = [
    *ROOT.joinpath("cgar_interp").rglob("*.py"),
    *ROOT.joinpath("probes").glob("*.toml"),
    ROOT / "notebooks" / "build_notebooks.py",
]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_code_cites_only_the_repositorys_science_document():
    anchors = _anchors(SCIENCE.read_text())
    assert {"context-gate-sweep", "claims-ledger", "known-limitations"} <= anchors
    cited = 0
    for path in CITING:
        text = path.read_text()
        assert "SCIENCE.md" not in text, path
        for anchor in re.findall(r"docs/science\.md#([\w-]+)", text):
            cited += 1
            assert anchor in anchors, (path, anchor)
        for anchor in re.findall(r"\sand\s#([a-z][\w-]+)", text):  # "...md#a and #b"
            if "science.md" in text:
                assert anchor in anchors, (path, anchor)
    assert cited >= 8


def test_names_in_the_science_document_exist():
    pattern = (
        r"`((?:compare|claims|theory|probes|figures|metrics|subspace_math|decoding|models|capture"
        r"|prefix|sites|shots|selfcheck|runner|backends|checkpoints)(?:\.\w+)+)(?:\([^`]*\))?`"
    )
    names = sorted(set(re.findall(pattern, SCIENCE.read_text())))
    assert len(names) > 20
    missing = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module("cgar_interp." + ".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, missing

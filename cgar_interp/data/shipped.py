"""Shipped offline task sets (``sst2-mini``, ``trec-mini``, ``agnews-mini``).

Small balanced sets written for this project in the style of SST-2, TREC and AG-News, so every
machine can run the paper's three label spaces without the hub. They are a stand-in for offline
use, **not** the benchmarks: see ``cgar_interp/assets/tasks/README.md``.

The JSONL files live inside the package (``cgar_interp/assets/tasks/``) and are declared as
package data, so they are found from a source checkout, an editable install and a wheel alike;
they are located relative to this module, never relative to the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .loaders import load_file, sha256_file
from .tasks import Task, TaskError

TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tasks"


@dataclass(frozen=True)
class ShippedSet:
    """One shipped task set.

    Attributes:
        name: the task name (``sst2-mini``); distinct from the hub datasets' names.
        filename: JSONL file in :data:`TASKS_DIR` with ``id``, ``text``, ``label`` (class name).
        family: the label space it stands in for.
        description: one line for listings.
    """

    name: str
    filename: str
    family: str
    description: str

    @property
    def path(self) -> Path:
        return TASKS_DIR / self.filename


SHIPPED: dict[str, ShippedSet] = {
    s.name: s
    for s in (
        ShippedSet(
            "sst2-mini",
            "sst2-mini.jsonl",
            "sst2",
            "movie-review sentences, negative/positive (SST-2 style stand-in)",
        ),
        ShippedSet(
            "trec-mini",
            "trec-mini.jsonl",
            "trec",
            "questions, six coarse answer types (TREC style stand-in)",
        ),
        ShippedSet(
            "agnews-mini",
            "agnews-mini.jsonl",
            "ag_news",
            "news leads, world/sports/business/technology (AG-News style stand-in)",
        ),
    )
}


def load_shipped(name: str) -> Task:
    """Load a shipped task set by name (works offline).

    >>> task = load_shipped("sst2-mini")
    >>> task.classes, task.family
    (('negative', 'positive'), 'sst2')
    """
    if name not in SHIPPED:
        raise TaskError(f"unknown shipped task set {name!r}; shipped: {', '.join(SHIPPED)}")
    spec = SHIPPED[name]
    path = spec.path
    if not path.is_file():
        raise FileNotFoundError(
            f"shipped task file {str(path)!r} is missing: the package was installed without its "
            "data files; reinstall it (pip install -e .) from a full checkout"
        )
    source = (
        f"shipped:{name} (cgar_interp/assets/tasks/{spec.filename} sha256={sha256_file(path)[:16]})"
    )
    return load_file(path, id_column="id", like=spec.family, name=name, source=source)

"""``load_task``: one entry point for shipped sets, the synthetic family, hub datasets, files and
directories saved by ``datasets``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loaders import (
    FILE_SUFFIXES,
    HUB_DATASETS,
    hub_dataset,
    load_file,
    load_hub,
    load_saved_dataset,
)
from .shipped import SHIPPED, load_shipped
from .synthetic import synthetic_task
from .tasks import Task, TaskError


@dataclass(frozen=True)
class TaskSource:
    """One kind of thing :func:`load_task` reads: a name it recognises and how to load it.

    Attributes:
        name: what the source is called (``"shipped"``, ``"file"``, ...; unique).
        matches: ``matches(name_or_path) -> bool``; the first source that matches loads.
        load: ``load(name_or_path, /, **options) -> Task`` (positional-only: a ``name`` option
            reaches the loader as an option).
        describe: a phrase for the error that lists what :func:`load_task` accepts.
    """

    name: str
    matches: Callable[[str | os.PathLike], bool]
    load: Callable[..., Task]
    describe: str


def _shipped(name, /, **options) -> Task:
    if options:
        raise TaskError(f"shipped task {name!r} takes no options; got {', '.join(sorted(options))}")
    return load_shipped(name)


def _hub(name, /, **options) -> Task:
    return load_hub(hub_dataset(str(name)).name, **options)


# In the order they are tried: an existing directory or file takes precedence over a hub name
# spelled the same.
BUILTIN_SOURCES: tuple[TaskSource, ...] = (
    TaskSource("shipped", lambda n: isinstance(n, str) and n in SHIPPED, _shipped, "shipped"),
    TaskSource(
        "synthetic",
        lambda n: isinstance(n, str) and n == "synthetic",
        lambda n, /, **o: synthetic_task(**o),
        "synthetic",
    ),
    TaskSource(
        "saved_dataset",
        lambda n: Path(n).is_dir(),
        lambda n, /, **o: load_saved_dataset(Path(n), **o),
        "saved_dataset",
    ),
    TaskSource(
        "file",
        lambda n: Path(n).suffix.lower() in FILE_SUFFIXES or Path(n).is_file(),
        lambda n, /, **o: load_file(Path(n), **o),
        "file",
    ),
    TaskSource("hub", lambda n: hub_dataset(str(n)) is not None, _hub, "hub"),
)

# Sources a researcher registers (:func:`register_task_source`), tried before the built-in ones.
EXTRA_SOURCES: list[TaskSource] = []


def register_task_source(source: TaskSource) -> TaskSource:
    """Make :func:`load_task` (and so a suite's ``tasks`` and ``[[task]]`` tables) read a new
    kind of task: ``source`` is tried before the built-in sources. A ``[[task]]`` table passes
    its loader options, and any of its ``options = {...}`` table, as keywords.

    Raises:
        ValueError: a source of that name is already registered.
    """
    if any(s.name == source.name for s in (*EXTRA_SOURCES, *BUILTIN_SOURCES)):
        raise ValueError(f"a task source named {source.name!r} is already registered")
    EXTRA_SOURCES.append(source)
    return source


def task_sources() -> tuple[TaskSource, ...]:
    """Every source, in the order :func:`load_task` tries them."""
    return (*EXTRA_SOURCES, *BUILTIN_SOURCES)


def load_task(name: str | os.PathLike, /, **options: Any) -> Task:
    """Load a task by name or path.

    Args:
        name: one of

            - a shipped offline set: ``sst2-mini``, ``trec-mini``, ``agnews-mini``;
            - ``synthetic`` (options: ``n_classes``, ``n_per_class``, ``keys_per_class``,
              ``n_fillers``, ``seed``; see :func:`~cgar_interp.data.synthetic.synthetic_task`);
            - a hub dataset: ``sst2``, ``trec``, ``ag_news`` or their hub ids (options: ``split``,
              ``revision``, ``max_per_class``, ``seed``, ``duplicates``; needs the hub or the
              local HF cache);
            - a local ``.jsonl`` / ``.csv`` / ``.parquet`` file (options: ``text_column``,
              ``label_column``, ``id_column``, ``like``, ``classes``, ``label_words``,
              ``template``, ``name``, ``duplicates``);
            - a directory written by ``datasets``' ``Dataset.save_to_disk`` or
              ``DatasetDict.save_to_disk`` (the file options, plus ``split``,
              ``max_per_class`` and ``seed``; a ``ClassLabel`` label column gives the classes;
              see :func:`~cgar_interp.data.loaders.load_saved_dataset`).

            An existing directory or file takes precedence over a hub name spelled the same.
        **options: passed to the loader named above (``name`` is positional-only, so a
            ``name=...`` option reaches a file or directory loader as the task name).

    >>> load_task("trec-mini").label_words
    ('abbreviation', 'entity', 'description', 'human', 'location', 'number')
    >>> load_task("synthetic", n_classes=4, n_per_class=8, seed=3).n_classes
    4
    """
    for source in task_sources():
        if source.matches(name):
            return source.load(name, **options)
    raise TaskError(f"unknown task {str(name)!r}; {describe_tasks()}")


def describe_tasks() -> str:
    """One line naming everything :func:`load_task` accepts."""
    hub = ", ".join(f"{s.name} ({s.hub_id})" for s in HUB_DATASETS.values())
    extra = "".join(f"{s.describe}; " for s in EXTRA_SOURCES)
    return (
        f"{extra}shipped offline sets: {', '.join(SHIPPED)}; synthetic: 'synthetic'; hub "
        f"datasets: {hub}; or a path to a {'/'.join(FILE_SUFFIXES)} file or to a directory "
        "written by datasets' save_to_disk"
    )


def available_tasks() -> dict[str, str]:
    """Task names that load offline, with a one-line description each."""
    out = {name: spec.description for name, spec in SHIPPED.items()}
    out["synthetic"] = "nonsense key words -> arbitrary label words, zero-shot at chance"
    return out

"""``load_task``: one entry point for shipped sets, the synthetic family, hub datasets, files and
directories saved by ``datasets``."""

from __future__ import annotations

import os
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
    if isinstance(name, str) and name in SHIPPED:
        if options:
            raise TaskError(
                f"shipped task {name!r} takes no options; got {', '.join(sorted(options))}"
            )
        return load_shipped(name)
    if isinstance(name, str) and name == "synthetic":
        return synthetic_task(**options)
    path = Path(name)
    if path.is_dir():
        return load_saved_dataset(path, **options)
    if path.suffix.lower() in FILE_SUFFIXES or path.is_file():
        return load_file(path, **options)
    spec = hub_dataset(str(name))
    if spec is not None:
        return load_hub(spec.name, **options)
    raise TaskError(f"unknown task {str(name)!r}; {describe_tasks()}")


def describe_tasks() -> str:
    """One line naming everything :func:`load_task` accepts."""
    hub = ", ".join(f"{s.name} ({s.hub_id})" for s in HUB_DATASETS.values())
    return (
        f"shipped offline sets: {', '.join(SHIPPED)}; synthetic: 'synthetic'; hub datasets: "
        f"{hub}; or a path to a {'/'.join(FILE_SUFFIXES)} file or to a directory written by "
        "datasets' save_to_disk"
    )


def available_tasks() -> dict[str, str]:
    """Task names that load offline, with a one-line description each."""
    out = {name: spec.description for name, spec in SHIPPED.items()}
    out["synthetic"] = "nonsense key words -> arbitrary label words, zero-shot at chance"
    return out

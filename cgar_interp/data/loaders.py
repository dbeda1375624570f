"""Real data: the paper's datasets through HF ``datasets``, and any local file a user has.

Hub datasets (:data:`HUB_DATASETS`), with the columns and splits used:

==========  ====================  ===============  ================  ===========================
name        hub id                text column      label column      default split (others)
==========  ====================  ===============  ================  ===========================
sst2        ``stanfordnlp/sst2``  ``sentence``     ``label``         validation (train; test is
                                                                     unlabelled, -1)
trec        ``CogComp/trec``      ``text``         ``coarse_label``  test (train)
ag_news     ``fancyzhx/ag_news``  ``text``         ``label``         test (train)
==========  ====================  ===============  ================  ===========================

No machine of this project reaches the hub. Offline, a hub request fails with
:class:`DatasetUnavailable`, whose message shows how to pass a local copy; another dataset is
never substituted. Local files (``.jsonl``, ``.csv``, ``.parquet``) load with named text and label
columns; ``like="sst2"`` gives them a family's classes, label words and template.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .tasks import Duplicates, PromptTemplate, Task, TaskError, get_family, make_task

FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")


class DatasetUnavailable(TaskError):
    """A hub dataset that cannot be loaded here (offline, or unreachable)."""


@dataclass(frozen=True)
class HubDataset:
    """Where one of the paper's datasets lives on the hub and how to read it.

    Attributes:
        name: short name (``sst2``); also its task family.
        hub_id: dataset id on the Hugging Face hub.
        text_column: column holding the text.
        label_column: column holding the integer class label.
        default_split: split loaded when none is asked for (a labelled one).
        label_names: the ClassLabel names expected in ``label_column`` (checked when present).
    """

    name: str
    hub_id: str
    text_column: str
    label_column: str
    default_split: str
    label_names: tuple[str, ...]


HUB_DATASETS: dict[str, HubDataset] = {
    "sst2": HubDataset(
        "sst2", "stanfordnlp/sst2", "sentence", "label", "validation", ("negative", "positive")
    ),
    "trec": HubDataset(
        "trec", "CogComp/trec", "text", "coarse_label", "test", get_family("trec").classes
    ),
    "ag_news": HubDataset(
        "ag_news", "fancyzhx/ag_news", "text", "label", "test", get_family("ag_news").classes
    ),
}


def hub_dataset(name: str) -> HubDataset | None:
    """The :class:`HubDataset` for a short name, family alias or hub id; None if unknown."""
    lowered = name.lower()
    for spec in HUB_DATASETS.values():
        if lowered == spec.hub_id.lower():
            return spec
    try:
        family = get_family(lowered).name
    except TaskError:
        return None
    return HUB_DATASETS.get(family)


def _offline() -> bool:
    flags = (os.environ.get(key, "") for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag.strip().lower() in ("1", "true", "yes", "on") for flag in flags)


def _local_copy_hint(spec: HubDataset, split: str) -> str:
    stem = f"{spec.name}-{split}"
    return (
        "Pass a local copy instead: on a machine with network, save the split with\n"
        f"    datasets.load_dataset({spec.hub_id!r}, split={split!r}).to_parquet({stem + '.parquet'!r})\n"
        "then load it here with\n"
        f"    load_task({stem + '.parquet'!r}, like={spec.name!r}, "
        f"text_column={spec.text_column!r}, label_column={spec.label_column!r})\n"
        f"(or use the shipped stand-in {spec.name.replace('_', '') + '-mini'!r}, which is not "
        "the benchmark)."
    )


def load_hub(
    name: str,
    *,
    split: str | None = None,
    revision: str | None = None,
    max_per_class: int | None = None,
    seed: int = 0,
    duplicates: Duplicates = "error",
) -> Task:
    """Load one of the paper's datasets from the hub (or the local HF cache) as a task.

    Args:
        name: ``sst2``, ``trec``, ``ag_news`` (aliases and hub ids accepted).
        split: split to load (default: the dataset's labelled default, see module docs).
        revision: hub revision; for a dataset still served by a loading script (which
            ``datasets`` >= 4 refuses), ``"refs/convert/parquet"`` selects the hub's parquet
            export.
        max_per_class: keep at most this many examples per class (seeded, balanced sample).
        seed: seed of that sample.
        duplicates: ``"error"`` or ``"drop"`` repeated texts (see :func:`make_task`).

    Raises:
        DatasetUnavailable: offline or unreachable; the message shows how to pass a local copy.
        TaskError: unexpected columns or label names in what was downloaded.
    """
    spec = hub_dataset(name)
    if spec is None:
        known = ", ".join(f"{s.name} ({s.hub_id})" for s in HUB_DATASETS.values())
        raise TaskError(f"unknown hub dataset {name!r}; known: {known}")
    split = split or spec.default_split
    what = f"dataset {spec.hub_id!r} (split {split!r})"
    try:
        import datasets

        data = datasets.load_dataset(spec.hub_id, split=split, revision=revision)
    except RuntimeError as err:
        if "script" not in str(err).lower():
            raise
        raise TaskError(
            f"cannot load {what}: {_first_line(err)}. The hub still serves it through a loading "
            "script; try revision='refs/convert/parquet' (the hub's parquet export).\n"
            f"{_local_copy_hint(spec, split)}"
        ) from err
    except (ConnectionError, OSError) as err:
        first = _first_line(err)
        state = (
            "the hub is switched off here (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set) and the "
            "split is not in the local HF datasets cache"
            if _offline()
            else "the hub could not be reached or refused the request"
        )
        raise DatasetUnavailable(
            f"cannot load {what}: {state} ({type(err).__name__}: {first}). No other dataset is "
            f"used in its place.\n{_local_copy_hint(spec, split)}"
        ) from err
    for column in (spec.text_column, spec.label_column):
        if column not in data.column_names:
            raise TaskError(
                f"{what} has no column {column!r}; columns present: {', '.join(data.column_names)}"
            )
    names = getattr(data.features[spec.label_column], "names", None)
    if names is not None and tuple(names) != spec.label_names:
        raise TaskError(
            f"{what}: label column {spec.label_column!r} has class names {list(names)}, expected "
            f"{list(spec.label_names)}; the hub copy changed, load it as a local file with "
            "explicit classes=[...]"
        )
    texts = list(data[spec.text_column])
    labels = list(data[spec.label_column])
    ids = [f"{split}-{i}" for i in range(len(texts))]
    rows = list(zip(texts, labels, ids, strict=True))
    if max_per_class is not None:
        rows = _balanced_sample(rows, max_per_class, seed)
    fingerprint = getattr(data, "_fingerprint", None)
    source = f"hf:{spec.hub_id} split={split}" + (f" revision={revision}" if revision else "")
    if fingerprint:
        source += f" fingerprint={fingerprint}"
    if max_per_class is not None:
        source += f" max_per_class={max_per_class} seed={seed}"
    return make_task(
        [(t, y) for t, y, _ in rows],
        name=spec.name,
        source=source,
        family=spec.name,
        ids=[i for _, _, i in rows],
        text_field=spec.text_column,
        duplicates=duplicates,
        where=what,
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _balanced_sample(rows: list, per_class: int, seed: int) -> list:
    if per_class < 1:
        raise TaskError(f"max_per_class must be >= 1; got {per_class}")
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[1], []).append(row)
    rng = random.Random(f"cgar-sample|{seed}")
    keep = set()
    for label in sorted(groups, key=str):
        chosen = groups[label]
        if len(chosen) > per_class:
            chosen = rng.sample(chosen, per_class)
        keep.update(id(row) for row in chosen)
    return [row for row in rows if id(row) in keep]


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ``.jsonl``, ``.csv`` or ``.parquet`` file into a DataFrame.

    CSV cells are read as strings (labels may then be class names or digits).

    Raises:
        FileNotFoundError: no such file.
        TaskError: an unsupported suffix, an unreadable file, or a file with no rows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise TaskError(
            f"cannot read {str(path)!r}: unsupported file type {suffix or '(none)'!r}; "
            f"supported: {', '.join(FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such task file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise TaskError(f"file {str(path)!r} is empty: it has no rows")
    try:
        if suffix == ".jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except pd.errors.EmptyDataError as err:
        raise TaskError(f"file {str(path)!r} is empty: it has no rows") from err
    except ValueError as err:
        raise TaskError(f"cannot read {str(path)!r} as {suffix[1:]}: {err}") from err
    if len(frame) == 0:
        raise TaskError(
            f"file {str(path)!r} is empty: it has no rows (columns: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    return frame


def _check_column(frame: pd.DataFrame, column: str, role: str, where: str) -> None:
    if column in frame.columns:
        return
    present = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(column, present, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TaskError(
        f"{role} column {column!r} not found in {where}; columns present: "
        f"{', '.join(present)}{hint}; pass {role}_column=..."
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_file(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    like: str | None = None,
    classes: Sequence[str] | None = None,
    label_words: Sequence[str] | None = None,
    template: PromptTemplate | None = None,
    name: str | None = None,
    duplicates: Duplicates = "error",
    source: str | None = None,
) -> Task:
    """Load a local ``.jsonl`` / ``.csv`` / ``.parquet`` file as a task.

    Args:
        path: the file.
        text_column: column with the texts.
        label_column: column with the labels (class names, label words or integer indices).
        id_column: column with example ids (default: the row number).
        like: a family (``sst2``, ``trec``, ``ag_news``) giving classes, label words, template.
        classes: class names in label order (needed for integer labels without ``like``).
        label_words: verbaliser aligned with ``classes``.
        template: prompt template.
        name: task name (default: the file's stem).
        duplicates: ``"error"`` or ``"drop"`` repeated texts.
        source: provenance override (default: ``file:<path> sha256=<hash>``).

    Raises:
        TaskError: bad column names (the message lists the columns present), an empty file,
            unknown labels (naming the bad label and the valid ones), duplicate rows.
    """
    path = Path(path)
    frame = read_table(path)
    where = f"file {str(path)!r}"
    _check_column(frame, text_column, "text", where)
    _check_column(frame, label_column, "label", where)
    if id_column is not None:
        _check_column(frame, id_column, "id", where)
    rows = list(zip(frame[text_column].tolist(), frame[label_column].tolist(), strict=True))
    ids = frame[id_column].tolist() if id_column is not None else None
    return make_task(
        rows,
        name=name or path.stem,
        source=source or f"file:{path.resolve()} sha256={sha256_file(path)[:16]}",
        family=like,
        classes=classes,
        label_words=label_words,
        template=template,
        ids=ids,
        text_field=text_column,
        duplicates=duplicates,
        where=where,
    )

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
columns; ``like="sst2"`` gives them a family's classes, label words and template. A directory
written by ``datasets``' ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` loads the same
way (:func:`load_saved_dataset`), with ``split`` choosing a split of a ``DatasetDict``.
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


def _check_column(columns: Sequence, column: str, role: str, where: str) -> None:
    """Raise a TaskError listing ``columns`` unless ``column`` is one of them."""
    if column in columns:
        return
    present = [str(c) for c in columns]
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


def sha256_dir(path: str | os.PathLike) -> str:
    """sha256 of a directory's contents (or of a file: then it is :func:`sha256_file`).

    The digest covers every regular file under the directory (symlinked files are read,
    symlinked directories are not entered), as ``<relative posix path>\\0<file sha256>\\n`` lines
    in sorted path order: it is independent of where the directory lives and of the order the
    filesystem lists it, and changes when a file is added, removed, renamed or edited.

    Raises:
        FileNotFoundError: no such file or directory.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or directory: {str(path)!r}")
    entries = []
    for root, _dirs, files in os.walk(path):
        for filename in files:
            file = Path(root, filename)
            if file.is_file():
                entries.append((file.relative_to(path).as_posix(), file))
    digest = hashlib.sha256()
    for rel, file in sorted(entries):
        digest.update(f"{rel}\0{sha256_file(file)}\n".encode())
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
    _check_column(frame.columns, text_column, "text", where)
    _check_column(frame.columns, label_column, "label", where)
    if id_column is not None:
        _check_column(frame.columns, id_column, "id", where)
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


SAVED_DATASET_EXPECTED = (
    "a directory written by datasets' Dataset.save_to_disk (holding dataset_info.json and "
    "state.json) or DatasetDict.save_to_disk (holding dataset_dict.json)"
)


def load_saved_dataset(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = None,
    like: str | None = None,
    classes: Sequence[str] | None = None,
    label_words: Sequence[str] | None = None,
    template: PromptTemplate | None = None,
    name: str | None = None,
    duplicates: Duplicates = "error",
    max_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """Load a directory written by ``datasets``' ``save_to_disk`` as a task.

    The directory is read with ``datasets.load_from_disk`` (no network). Columns and labels
    are handled as in :func:`load_file`. A ``ClassLabel`` label column brings its class names:
    without ``classes`` or ``like`` they become the task's classes (and, as in
    :func:`make_task`, its label words unless ``label_words`` is given); with ``like`` the
    labels are matched to the family's classes by name, so a reordered copy is read right;
    with ``classes`` the integers index ``classes`` as given.

    Args:
        path: the directory.
        split: the split of a ``DatasetDict`` to load (may be left out when it has exactly one);
            must be None for a plain ``Dataset``.
        text_column, label_column, id_column, like, classes, label_words, template,
            duplicates: as for :func:`load_file`.
        name: task name (default: the directory's name).
        max_per_class: keep at most this many examples per class (seeded, balanced sample).
        seed: seed of that sample.

    The task's source is ``saved:<resolved dir> fingerprint=<dataset fingerprint>
    [split=<split>] sha256=<first 16 hex digits of sha256_dir(dir)>``.

    Raises:
        FileNotFoundError: no such directory.
        TaskError: not a saved dataset, a missing or unexpected split (the message lists the
            splits), bad column names (the message lists the columns present), unknown labels,
            duplicate rows.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such saved dataset directory: {str(path)!r}")
    if not path.is_dir():
        raise TaskError(
            f"{str(path)!r} is a file, not a saved dataset directory; expected "
            f"{SAVED_DATASET_EXPECTED} (load data files with load_file)"
        )
    try:
        import datasets

        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise TaskError(
            f"directory {str(path)!r} is not a saved dataset ({type(err).__name__}: "
            f"{_first_line(err)}); expected {SAVED_DATASET_EXPECTED}"
        ) from err
    where = f"saved dataset {str(path)!r}"
    if isinstance(loaded, datasets.DatasetDict):
        available = list(loaded)
        if split is None:
            if len(available) != 1:
                raise TaskError(
                    f"{where} is a DatasetDict with splits {', '.join(available)}; pass "
                    "split=... to choose one"
                )
            split = available[0]
        elif split not in loaded:
            raise TaskError(
                f"{where} has no split {split!r}; splits present: {', '.join(available)}"
            )
        data = loaded[split]
        where += f" (split {split!r})"
    else:
        if split is not None:
            raise TaskError(
                f"{where} is a single Dataset without splits; got split={split!r}, leave it "
                "out (only a DatasetDict directory has splits)"
            )
        data = loaded
    columns = list(data.column_names)
    _check_column(columns, text_column, "text", where)
    _check_column(columns, label_column, "label", where)
    if id_column is not None:
        _check_column(columns, id_column, "id", where)
    texts = list(data[text_column])
    labels = list(data[label_column])
    names = getattr(data.features[label_column], "names", None)
    if names is not None and classes is None:
        if like is None:
            classes = tuple(names)
        else:
            labels = _class_names_for_family(labels, names, like, label_column, where)
    if id_column is not None:
        ids = [str(i) for i in data[id_column]]
    else:
        ids = [f"{split}-{i}" if split else str(i) for i in range(len(texts))]
    rows = list(zip(texts, labels, ids, strict=True))
    if max_per_class is not None:
        rows = _balanced_sample(rows, max_per_class, seed)
    source = f"saved:{path.resolve()} fingerprint={getattr(data, '_fingerprint', None)}"
    if split is not None:
        source += f" split={split}"
    source += f" sha256={sha256_dir(path)[:16]}"
    if max_per_class is not None:
        source += f" max_per_class={max_per_class} seed={seed}"
    return make_task(
        [(t, y) for t, y, _ in rows],
        name=name or path.resolve().name,
        source=source,
        family=like,
        classes=classes,
        label_words=label_words,
        template=template,
        ids=[i for _, _, i in rows],
        text_field=text_column,
        duplicates=duplicates,
        where=where,
    )


def _class_names_for_family(
    labels: list, names: Sequence[str], like: str, label_column: str, where: str
) -> list:
    """ClassLabel integers as their names, checked against family ``like``'s classes."""
    family = get_family(like)
    known = {c.lower() for c in family.classes} | {w.lower() for w in family.label_words}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise TaskError(
            f"{where}: label column {label_column!r} has class names {list(names)}, which do "
            f"not match family {family.name!r} (classes {list(family.classes)}); pass "
            "classes=[...] to read its integer labels in that order instead"
        )
    # Out-of-range integers (e.g. -1, unlabelled) are kept so make_task names them.
    return [names[y] if isinstance(y, int) and 0 <= y < len(names) else y for y in labels]

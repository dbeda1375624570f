"""A suite's tasks: ``tasks = ["sst2-mini"]`` strings and ``[[task]]`` tables, as one type.

A ``[[task]]`` table names a shipped set, ``synthetic`` or a hub dataset by ``name``, or a local
file (``.jsonl`` / ``.csv`` / ``.parquet``) or a directory written by ``datasets``'
``save_to_disk`` by ``path``, and carries every option :func:`~cgar_interp.data.load_task`
takes, plus the prompt settings that depend on the data::

    [[task]]
    path = "reviews.csv"
    classes = ["negative", "positive"]
    label_words = ["bad", "good"]
    template = { query = "Review: {text}\\nVerdict:", answer = " {label}\\n" }
    demo_pool_per_class = 4
    n_eval = 20

Each task gets a directory name inside the run that is safe (no separators, no ``..``) and
unique (a file's stem plus a hash of its resolved path), and a data hash (sha256 of the file or
of the saved dataset's files) that the manifest records and a resumed run checks.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import ConfigError, build
from .data.tasks import PromptTemplate

DUPLICATES = ("error", "drop")


@dataclass(frozen=True)
class TemplateSpec:
    """``template = { query = "...", answer = "...", separator = "..." }`` (see PromptTemplate)."""

    query: str = "Input: {text}\nLabel:"
    answer: str = " {label}\n"
    separator: str = ""

    def __post_init__(self):
        self.build()  # the template's own checks ({text} once, {label} once), at parse time

    def build(self) -> PromptTemplate:
        try:
            return PromptTemplate(self.query, self.answer, self.separator)
        except ValueError as err:
            raise ConfigError(str(err)) from None


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite. Exactly one of ``name`` and ``path``.

    Attributes:
        name: a shipped set (``sst2-mini``), ``synthetic`` or a hub dataset (``sst2``).
        path: a local data file or a ``save_to_disk`` directory (relative to the suite file).
        like, classes, label_words, text_column, label_column, id_column, split, revision,
            max_per_class, duplicates, template: the options of :func:`load_task` by name.
        options: a table of further keywords for a loader of your own
            (:func:`~cgar_interp.data.catalog.register_task_source`), e.g.
            ``options = {subset = "hard"}``; stored as sorted ``(key, value)`` pairs.
        demo_pool_per_class: examples per class reserved as demonstrations (default 8, and
            never fewer than the largest number of shots).
        n_fit, n_eval: this task's query counts (default: the suite's).
    """

    name: str | None = None
    path: str | None = None
    like: str | None = None
    classes: tuple[str, ...] | None = None
    label_words: tuple[str, ...] | None = None
    text_column: str | None = None
    label_column: str | None = None
    id_column: str | None = None
    split: str | None = None
    revision: str | None = None
    max_per_class: int | None = None
    duplicates: str | None = None
    template: TemplateSpec | None = None
    options: Any = None
    demo_pool_per_class: int | None = None
    n_fit: int | None = None
    n_eval: int | None = None

    def __post_init__(self):
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        if self.options is not None and not (
            isinstance(self.options, tuple)
            and all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in self.options
            )
        ):
            raise ConfigError(
                f"key 'options' must be a table of loader keywords; got {self.options!r}"
            )
        named = {f.name for f in fields(self)} & {key for key, _ in self.options or ()}
        if named:
            raise ConfigError(
                f"loader option {', '.join(sorted(named))} is given in 'options' but is a key of "
                "the [[task]] table itself; set it there"
            )
        if (self.name is None) == (self.path is None):
            raise ConfigError(
                "a [[task]] table needs exactly one of 'name' (a shipped set, 'synthetic' or a "
                "hub dataset) and 'path' (a .jsonl/.csv/.parquet file or a save_to_disk "
                f"directory); got {'both' if self.name else 'neither'}"
            )
        if self.duplicates is not None and self.duplicates not in DUPLICATES:
            raise ConfigError(
                f"key 'duplicates' must be one of {', '.join(DUPLICATES)}; got {self.duplicates!r}"
            )
        for key in ("max_per_class", "demo_pool_per_class", "n_fit", "n_eval"):
            value = getattr(self, key)
            low = 0 if key == "n_fit" else 1
            if value is not None and value < low:
                raise ConfigError(f"key {key!r} must be >= {low}; got {value}")
        if (
            self.classes is not None
            and self.label_words is not None
            and len(self.classes) != len(self.label_words)
        ):
            raise ConfigError(
                f"'classes' has {len(self.classes)} entries and 'label_words' "
                f"{len(self.label_words)}; give one label word per class"
            )

    @classmethod
    def parse(cls, value: Any, where: str) -> TaskSpec:
        """From a ``tasks`` string (a name or a file path) or a ``[[task]]`` table."""
        if isinstance(value, str):
            from .data.loaders import FILE_SUFFIXES

            is_path = Path(value).suffix.lower() in FILE_SUFFIXES
            return cls(path=value) if is_path else cls(name=value)
        try:
            return build(cls, value, where)
        except ConfigError as err:  # a table's own checks: say which table
            text = str(err)
            raise ConfigError(text if where in text else f"{where}: {text}") from None

    @property
    def is_file(self) -> bool:
        return self.path is not None

    @property
    def source(self) -> str:
        """What the task is read from: its name or its path."""
        return self.name if self.name is not None else self.path

    def loader_options(self) -> dict[str, Any]:
        """The :func:`load_task` keywords this table sets."""
        skip = {"name", "path", "template", "options", "demo_pool_per_class", "n_fit", "n_eval"}
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip and getattr(self, f.name) is not None
        }
        out.update(self.options or ())
        if self.template is not None:
            out["template"] = self.template.build()
        return out

    def key(self) -> str:
        """A directory name for this task inside a run: safe, and unique per source.

        A shipped or hub name that is already safe is kept (``sst2-mini``); a path becomes its
        stem plus 8 hex digits of its resolved path, so ``a/data.jsonl`` and ``b/data.jsonl``
        differ.

        >>> TaskSpec(name="sst2-mini").key()
        'sst2-mini'
        >>> TaskSpec(path="/x/data.jsonl").key() != TaskSpec(path="/y/data.jsonl").key()
        True
        """
        if self.name is not None and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            return self.name
        text = self.source
        stem = Path(text).stem if self.path is not None else text
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:48] or "task"
        resolved = str(Path(text).resolve()) if self.path is not None else text
        return f"{slug}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"

    def data_sha256(self) -> str | None:
        """sha256 of a file task's data (a file, or a saved dataset's files); None for names."""
        if self.path is None:
            return None
        from .data.loaders import sha256_dir

        return sha256_dir(Path(self.path))

    def to_dict(self) -> dict[str, Any]:
        """The table as the manifest records it (None keys left out)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, TemplateSpec):
                value = {"query": value.query, "answer": value.answer, "separator": value.separator}
            elif f.name == "options":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

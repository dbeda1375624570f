"""The task model: examples, class names, the verbaliser and the prompt template.

A :class:`Task` is what every loader returns (hub dataset, local file, shipped set, synthetic
family) and what the prompt builder consumes. It is frozen and validated on construction:
classes and label words are distinct, every example's label is a valid class index, ids and
texts are unique. :func:`make_task` turns raw ``(text, label)`` rows into a task, with the errors
a user needs (unknown label -> the bad value and the valid ones; duplicated text -> both rows).

The three label spaces of the paper are :data:`FAMILIES` (``sst2``, ``trec``, ``ag_news``): their
class names in the hub datasets' order, the label word of each class and the prompt template.

>>> task = make_task(
...     [("a warm, funny film", "positive"), ("a dull mess", 0)],
...     name="toy", family="sst2", source="doctest")
>>> task.verbaliser
{'negative': 'negative', 'positive': 'positive'}
>>> [ex.label for ex in task.examples]
[1, 0]
>>> task.template.demo("a dull mess", "negative")
'Review: a dull mess\\nSentiment: negative\\n'
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Duplicates = Literal["error", "drop"]


class TaskError(ValueError):
    """A task, file or prompt request that is not valid; the message says what to change."""


@dataclass(frozen=True)
class Example:
    """One labelled example.

    Attributes:
        id: stable identifier, unique within its task (recorded in every prompt that uses it).
        text: the input text (a review, a question, a news lead, ...).
        label: class index into :attr:`Task.classes`.
    """

    id: str
    text: str
    label: int


@dataclass(frozen=True)
class PromptTemplate:
    """How one example becomes prompt text.

    A demonstration is ``query`` with the text filled in, followed by ``answer`` with the label
    word filled in; demonstrations are concatenated with ``separator`` between them and before
    the query, and the query ends with ``query`` alone, so the next token is the label's.

    Attributes:
        query: contains ``{text}`` once, e.g. ``"Review: {text}\\nSentiment:"``.
        answer: contains ``{label}`` once, e.g. ``" {label}\\n"``; the part before ``{label}``
            (here a space) is the prefix under which label words are tokenised and scored.
        separator: text between consecutive demonstrations and before the query. The default
            ``""`` keeps every demonstration block ending in a newline, which on byte-level BPE
            tokenizers makes the block's token ids a prefix of the whole prompt's (prefix reuse).
    """

    query: str = "Input: {text}\nLabel:"
    answer: str = " {label}\n"
    separator: str = ""

    def __post_init__(self):
        if self.query.count("{text}") != 1:
            raise TaskError(f"template query must contain '{{text}}' once; got {self.query!r}")
        if self.answer.count("{label}") != 1:
            raise TaskError(f"template answer must contain '{{label}}' once; got {self.answer!r}")

    @property
    def label_prefix(self) -> str:
        """What precedes the label word in an answer (``" "`` for ``" {label}\\n"``)."""
        return self.answer.split("{label}")[0]

    def format_query(self, text: str) -> str:
        """The query part for ``text`` (ends where the label would start)."""
        return self.query.replace("{text}", text)

    def demo(self, text: str, label_word: str) -> str:
        """One demonstration: the query for ``text`` followed by its answer."""
        return self.format_query(text) + self.answer.replace("{label}", label_word)

    def prefix(self, demos: Sequence[tuple[str, str]]) -> str:
        """The demonstration block for ``(text, label_word)`` pairs, ready to precede a query."""
        return "".join(self.demo(text, word) + self.separator for text, word in demos)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TaskFamily:
    """A label space shared by a hub dataset, its shipped stand-in and matching local files.

    Attributes:
        name: family key (``sst2``, ``trec``, ``ag_news``).
        classes: class names, in the hub dataset's label order (index = integer label).
        label_words: the word each class is verbalised as, aligned with ``classes``.
        template: the prompt template.
        text_field: what one text is (for people reading manifests).
    """

    name: str
    classes: tuple[str, ...]
    label_words: tuple[str, ...]
    template: PromptTemplate
    text_field: str


FAMILIES: dict[str, TaskFamily] = {
    "sst2": TaskFamily(
        "sst2",
        ("negative", "positive"),
        ("negative", "positive"),
        PromptTemplate("Review: {text}\nSentiment:"),
        "movie-review sentence",
    ),
    "trec": TaskFamily(
        "trec",
        ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"),
        ("abbreviation", "entity", "description", "human", "location", "number"),
        PromptTemplate("Question: {text}\nAnswer type:"),
        "question",
    ),
    "ag_news": TaskFamily(
        "ag_news",
        ("World", "Sports", "Business", "Sci/Tech"),
        ("world", "sports", "business", "technology"),
        PromptTemplate("Article: {text}\nTopic:"),
        "news lead",
    ),
}
FAMILY_ALIASES = {"sst-2": "sst2", "agnews": "ag_news", "ag-news": "ag_news", "trec6": "trec"}


def get_family(name: str) -> TaskFamily:
    """The family ``name`` (aliases such as ``agnews`` accepted)."""
    key = FAMILY_ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise TaskError(f"unknown task family {name!r}; known families: {', '.join(FAMILIES)}")
    return FAMILIES[key]


@dataclass(frozen=True)
class Task:
    """A classification task ready for prompting.

    Validated on construction: at least two distinct classes, one distinct label word per class,
    unique example ids and texts, every label a valid class index.

    Attributes:
        name: task name recorded in manifests and tables (``sst2-mini``, ``sst2``, a file stem).
        classes: class names; an example's ``label`` indexes this tuple.
        label_words: the verbaliser, aligned with ``classes`` (``label_words[i]`` is the word
            the model should produce for class ``i``).
        template: how examples become prompt text.
        examples: the labelled examples (queries and demonstrations are both drawn from these,
            disjointly, by :func:`cgar_interp.data.build_prompts`).
        source: where the examples came from (hub id and split, file path and hash, shipped set).
        text_field: the column the texts came from (``sentence`` for SST-2 on the hub).
        family: the label-space family, when the task uses one of :data:`FAMILIES`.
        n_dropped_duplicates: rows dropped as repeated texts (only with ``duplicates="drop"``).
    """

    name: str
    classes: tuple[str, ...]
    label_words: tuple[str, ...]
    template: PromptTemplate
    examples: tuple[Example, ...]
    source: str
    text_field: str = "text"
    family: str | None = None
    n_dropped_duplicates: int = 0

    def __post_init__(self):
        k = len(self.classes)
        if k < 2:
            raise TaskError(f"task {self.name!r} needs at least 2 classes; got {self.classes!r}")
        _require_distinct(self.classes, "class names", self.name)
        if len(self.label_words) != k:
            raise TaskError(
                f"task {self.name!r}: {len(self.label_words)} label words for {k} classes; give "
                "one label word per class"
            )
        for word in self.label_words:
            if not word or word != word.strip():
                raise TaskError(
                    f"task {self.name!r}: label word {word!r} must be non-empty without leading "
                    "or trailing whitespace (the template's answer adds the space)"
                )
        _require_distinct(self.label_words, "label words", self.name)
        if not self.examples:
            raise TaskError(f"task {self.name!r} has no examples")
        ids: dict[str, int] = {}
        texts: dict[str, int] = {}
        for i, ex in enumerate(self.examples):
            key = " ".join(ex.text.split())
            if key in texts:
                raise TaskError(
                    f"task {self.name!r}: examples {texts[key]} and {i} have the same text "
                    f"{_short(ex.text)}; texts must be unique"
                )
            texts[key] = i
            if isinstance(ex.label, bool) or not isinstance(ex.label, int):
                raise TaskError(
                    f"task {self.name!r}: example {ex.id!r} has label {ex.label!r}; labels are "
                    "class indices (int)"
                )
            if ex.id in ids:
                raise TaskError(
                    f"task {self.name!r}: example id {ex.id!r} is used by examples {ids[ex.id]} "
                    f"and {i}; ids must be unique"
                )
            ids[ex.id] = i
            if not 0 <= ex.label < k:
                raise TaskError(
                    f"task {self.name!r}: example {ex.id!r} has label {ex.label}; valid labels "
                    f"are 0..{k - 1}"
                )

    @property
    def verbaliser(self) -> dict[str, str]:
        """Class name -> label word."""
        return dict(zip(self.classes, self.label_words, strict=True))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def example(self, example_id: str) -> Example:
        """The example with id ``example_id``."""
        for ex in self.examples:
            if ex.id == example_id:
                return ex
        raise KeyError(f"task {self.name!r} has no example {example_id!r}")

    def by_class(self) -> tuple[tuple[Example, ...], ...]:
        """Examples grouped by class index, each group in file order."""
        return tuple(
            tuple(ex for ex in self.examples if ex.label == c) for c in range(self.n_classes)
        )

    def class_counts(self) -> dict[str, int]:
        return {name: len(group) for name, group in zip(self.classes, self.by_class(), strict=True)}

    def fingerprint(self) -> str:
        """Short hash of the examples, classes, label words and template (identifies content)."""
        payload = json.dumps(
            {
                "classes": self.classes,
                "label_words": self.label_words,
                "template": self.template.to_dict(),
                "examples": [(ex.id, ex.text, ex.label) for ex in self.examples],
            },
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def manifest(self) -> dict[str, Any]:
        """Provenance for run manifests: which task set, from where, with what content hash."""
        return {
            "name": self.name,
            "family": self.family,
            "source": self.source,
            "text_field": self.text_field,
            "classes": list(self.classes),
            "label_words": list(self.label_words),
            "template": self.template.to_dict(),
            "n_examples": len(self.examples),
            "class_counts": self.class_counts(),
            "n_dropped_duplicates": self.n_dropped_duplicates,
            "fingerprint": self.fingerprint(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Alias of :meth:`manifest` (the provenance of this task, not its examples)."""
        return self.manifest()


def _require_distinct(values: Sequence[str], what: str, task: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise TaskError(f"task {task!r}: {what} must be distinct; {value!r} appears twice")
        seen.add(value)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_index(label: Any) -> bool:
    """An integer label (or a string of digits, as CSV cells are read)."""
    return not isinstance(label, str) or label.strip().lstrip("-").isdecimal()


def parse_label(raw: Any, classes: Sequence[str], label_words: Sequence[str], where: str) -> int:
    """The class index of a raw label: a class name, a label word, or an integer index.

    Strings are matched against class names, then label words, then both case-insensitively;
    a string of digits that names no class is read as an index.

    Raises:
        TaskError: the label is missing or names no class; the message lists the valid labels.
    """
    k = len(classes)
    valid = f"valid labels: {', '.join(classes)} (or indices 0..{k - 1})"
    if _is_missing(raw):
        raise TaskError(f"missing label in {where}; {valid}")
    if isinstance(raw, bool):
        raise TaskError(f"label {raw!r} in {where} is a boolean; {valid}")
    if isinstance(raw, str):
        value = raw.strip()
        for names in (classes, label_words):
            if value in names:
                return list(names).index(value)
        folded = [c.lower() for c in classes] + [w.lower() for w in label_words]
        if value.lower() in folded:
            return folded.index(value.lower()) % k
        if value.lstrip("-").isdecimal():  # "²".isdigit() is True, int() refuses it
            raw = int(value)
        else:
            raise TaskError(f"unknown label {raw!r} in {where}; {valid}")
    if isinstance(raw, numbers.Real) and not isinstance(raw, numbers.Integral):
        if not float(raw).is_integer():
            raise TaskError(f"unknown label {raw!r} in {where}; {valid}")
        raw = int(raw)
    if isinstance(raw, numbers.Integral):
        index = int(raw)
        if 0 <= index < k:
            return index
        raise TaskError(f"unknown label {index} in {where}; {valid}")
    raise TaskError(f"label {raw!r} ({type(raw).__name__}) in {where} is not valid; {valid}")


def make_task(
    rows: Iterable[tuple[Any, Any]],
    *,
    name: str,
    source: str,
    family: str | None = None,
    classes: Sequence[str] | None = None,
    label_words: Sequence[str] | None = None,
    template: PromptTemplate | None = None,
    ids: Sequence[Any] | None = None,
    text_field: str = "text",
    duplicates: Duplicates = "error",
    where: str = "",
) -> Task:
    """Build a validated :class:`Task` from raw ``(text, label)`` rows.

    Args:
        rows: ``(text, label)`` pairs; labels are class names, label words or integer indices.
        name: task name.
        source: provenance string recorded in manifests.
        family: a :data:`FAMILIES` key supplying classes, label words and template (each can
            still be overridden by the arguments below).
        classes: class names. Without a family or classes, they are the sorted distinct string
            labels (integer labels then need ``classes``).
        label_words: verbaliser aligned with ``classes`` (default: the family's, else the class
            names).
        template: prompt template (default: the family's, else :class:`PromptTemplate`).
        ids: one id per row (default: the row number).
        text_field: the column the texts came from (recorded).
        duplicates: ``"error"`` (default) or ``"drop"`` (keep the first of repeated texts;
            the count is recorded on the task). Texts that repeat with different labels are an
            error either way.
        where: what the rows are, for messages (``"file data.csv"``).

    Raises:
        TaskError: no rows, an empty or non-string text, an unknown label, duplicated texts.
    """
    if duplicates not in ("error", "drop"):
        raise TaskError(f"duplicates must be 'error' or 'drop'; got {duplicates!r}")
    rows = list(rows)
    origin = f" of {where}" if where else ""
    if not rows:
        raise TaskError(f"no examples{origin}: the data has no rows")
    fam = get_family(family) if family else None
    if classes is None and fam is not None:
        classes = fam.classes
    if classes is None:
        raw_labels = [label for _, label in rows if not _is_missing(label)]
        if any(_is_index(label) for label in raw_labels):
            raise TaskError(
                f"labels{origin} are integers but no class names were given; pass "
                "classes=[...] (in label order) or a family such as like='sst2'"
            )
        classes = sorted({label.strip() for label in raw_labels})
    classes = tuple(classes)
    if label_words is None:
        label_words = fam.label_words if fam is not None and classes == fam.classes else classes
    label_words = tuple(label_words)
    if template is None:
        template = fam.template if fam is not None else PromptTemplate()
    if ids is not None and len(ids) != len(rows):
        raise TaskError(f"{len(ids)} ids for {len(rows)} rows{origin}")

    examples: list[Example] = []
    first_row: dict[str, tuple[int, int]] = {}  # normalised text -> (row, label)
    dropped = 0
    repeats: list[tuple[int, int, str]] = []
    for row, (text, raw_label) in enumerate(rows):
        at = f"row {row}{origin}"
        if _is_missing(text) or (isinstance(text, str) and not text.strip()):
            raise TaskError(f"empty text in {at}; every example needs text")
        if not isinstance(text, str):
            raise TaskError(f"text in {at} is {text!r} ({type(text).__name__}), not a string")
        label = parse_label(raw_label, classes, label_words, at)
        key = " ".join(text.split())
        if key in first_row:
            prev_row, prev_label = first_row[key]
            if prev_label != label:
                raise TaskError(
                    f"duplicate rows{origin}: text {_short(text)} appears in row {prev_row} "
                    f"(label {classes[prev_label]!r}) and row {row} (label {classes[label]!r}) "
                    "with different labels; fix or remove one of them"
                )
            repeats.append((prev_row, row, text))
            dropped += 1
            continue
        first_row[key] = (row, label)
        example_id = str(ids[row]) if ids is not None else str(row)
        examples.append(Example(example_id, text.strip(), label))
    if repeats and duplicates == "error":
        prev_row, row, text = repeats[0]
        raise TaskError(
            f"duplicate rows{origin}: text {_short(text)} appears in rows {prev_row} and {row} "
            f"({len(repeats)} repeated row(s) in all); remove them, or pass duplicates='drop' "
            "to keep the first of each"
        )
    return Task(
        name=name,
        classes=classes,
        label_words=label_words,
        template=template,
        examples=tuple(examples),
        source=source,
        text_field=text_field,
        family=fam.name if fam is not None else None,
        n_dropped_duplicates=dropped,
    )


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= n else text[: n - 3] + "...")

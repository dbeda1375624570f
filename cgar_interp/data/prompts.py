"""The prompt builder: zero-shot and k-shot ICL prompts per query, fit/eval splits, provenance.

For a task and a :class:`PromptConfig`, :func:`build_prompts` partitions the examples, per class
and seeded, into a **demonstration pool** and **queries**; the queries are ordered class by
class in rounds (so any prefix is balanced) and split into a ``fit`` part (to estimate context
vectors) and a disjoint ``eval`` part. Every query gets

- a ``zero`` prompt: the template's query for its text (``"Review: ...\\nSentiment:"``);
- an ``icl`` prompt: ``k`` demonstrations per class from the pool, then the same query text, so
  both prompts end identically and their last positions are comparable;
- optionally label controls (:data:`CONTROL_KINDS`, the kinds named in
  ``PromptConfig.label_controls``): the same demonstrations and query with other labels shown,

  - ``icl_flipped``: every demonstration's label sent through one derangement of the classes
    (a permutation without a fixed point; with two classes, every label swapped), seeded per
    query: a consistent wrong mapping, one a model can learn from the prompt;
  - ``icl_random``: every demonstration's label drawn uniformly at random from the K classes,
    independently of its input (it may coincide with the true one), seeded per query and
    demonstration: the random labels of Min et al. (2022);
  - ``icl_permuted``: the prompt's demonstration labels permuted at random across its
    demonstrations (the same multiset of labels, seeded per query): the shuffled labels of
    Todd et al. (2024).

Demonstrations are drawn per query (seeded by the config seed and the query id, so a prompt does
not depend on which other queries were built) or ``pinned``: the same block for every query,
which makes the block a common prefix whose KV cache can be reused. Given a tokenizer and the
model's context length, prompts are checked to fit; an overflow is an error naming the length
and the limit, or, with ``on_overflow="drop_demos"``, the earliest demonstrations are dropped
with a warning.

>>> from cgar_interp.data import load_task
>>> prompts = build_prompts(load_task("sst2-mini"), PromptConfig(k=1, n_fit=4, n_eval=4))
>>> zero, icl = prompts.get("zero")[0], prompts.get("icl")[0]
>>> icl.text.endswith(zero.text), len(icl.demo_ids), zero.split
(True, 2, 'fit')
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import pandas as pd

from .tasks import Example, Task, TaskError

CONTROL_KINDS = ("icl_flipped", "icl_random", "icl_permuted")
KINDS = ("zero", "icl", *CONTROL_KINDS)
SPLITS = ("fit", "eval")
Overflow = Literal["error", "drop_demos"]


class ContextLengthError(TaskError):
    """A prompt longer than the model's context."""


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are built from a task (all of it is recorded in manifests).

    Attributes:
        k: demonstrations per class in an ICL prompt (>= 1; the paper uses 1).
        n_fit: queries in the ``fit`` split (context vectors are estimated on these).
        n_eval: queries in the ``eval`` split; ``None`` takes every remaining query.
        seed: seeds the pool/query partition and every demonstration draw.
        demo_pool_per_class: examples per class reserved as demonstrations (>= k); never used
            as queries.
        shuffle_order: shuffle the order of the demonstrations in each prompt (else classes
            follow the task's class order, round by round).
        pinned: every query gets the same demonstrations (one seeded draw from the pool).
        pinned_ids: explicit example ids to use as the demonstrations of every query, in this
            order (implies pinned; they are excluded from the queries).
        label_controls: the label-control prompt kinds to build as well, any of
            :data:`CONTROL_KINDS` (``icl_flipped``, ``icl_random``, ``icl_permuted``; see the
            module docstring); none by default.
        k_max: for a k-shot sweep, the largest k: every query draws ``k_max`` demonstrations
            per class once and shows the first ``k`` of each class, in the order they hold
            in its ``k_max``-shot prompt, so its demonstrations are nested as k grows
            (``None``: draw ``k``; the same prompts as before sweeps existed).
        on_overflow: ``"error"`` for a prompt longer than the context, or ``"drop_demos"`` to
            drop its earliest demonstrations until it fits (with a warning).
    """

    k: int = 1
    n_fit: int = 16
    n_eval: int | None = 48
    seed: int = 0
    demo_pool_per_class: int = 8
    shuffle_order: bool = True
    pinned: bool = False
    pinned_ids: tuple[str, ...] = ()
    label_controls: tuple[str, ...] = ()
    k_max: int | None = None
    on_overflow: Overflow = "error"

    def __post_init__(self):
        if self.k < 1:
            raise TaskError(f"k (demonstrations per class) must be >= 1; got {self.k}")
        if self.n_fit < 0:
            raise TaskError(f"n_fit must be >= 0; got {self.n_fit}")
        if self.n_eval is not None and self.n_eval < 1:
            raise TaskError(f"n_eval must be >= 1 or None (all remaining); got {self.n_eval}")
        if self.k_max is not None and self.k_max < self.k:
            raise TaskError(f"k_max ({self.k_max}) must be >= k ({self.k})")
        if self.demo_pool_per_class < (self.k_max or self.k):
            raise TaskError(
                f"demo_pool_per_class ({self.demo_pool_per_class}) must be >= the largest k "
                f"({self.k_max or self.k})"
            )
        if self.on_overflow not in ("error", "drop_demos"):
            raise TaskError(
                f"on_overflow must be 'error' or 'drop_demos'; got {self.on_overflow!r}"
            )
        bad = [kind for kind in self.label_controls if kind not in CONTROL_KINDS]
        if bad:
            renamed = (
                " ('icl_shuffled' was the class-level derangement, now 'icl_flipped')"
                if "icl_shuffled" in bad
                else ""
            )
            raise TaskError(
                f"label_controls has unknown kinds {bad}{renamed}; valid kinds: "
                f"{', '.join(CONTROL_KINDS)}"
            )
        object.__setattr__(
            self, "label_controls", tuple(k for k in CONTROL_KINDS if k in self.label_controls)
        )
        if len(set(self.pinned_ids)) != len(self.pinned_ids):
            raise TaskError(f"pinned_ids has repeated ids: {list(self.pinned_ids)}")
        object.__setattr__(self, "pinned_ids", tuple(self.pinned_ids))

    @property
    def is_pinned(self) -> bool:
        return self.pinned or bool(self.pinned_ids)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pinned_ids"] = list(self.pinned_ids)
        out["label_controls"] = list(self.label_controls)
        return out

    def manifest(self) -> dict[str, Any]:
        return self.to_dict()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptConfig:
        """Strict construction from user input (unknown keys are an error listing valid ones)."""
        from ..config import build

        return build(cls, data, "prompt config")


@dataclass(frozen=True)
class Prompt:
    """One built prompt.

    Attributes:
        query_id: the query example's id.
        query_text: the query example's text.
        kind: one of :data:`KINDS` (``zero``, ``icl`` or a label control).
        split: ``fit`` or ``eval``.
        demo_ids: ids of the demonstrations, in prompt order (empty for ``zero``).
        demo_labels: the class index *shown* with each demonstration (the true one for
            ``icl``, the control's for a label control).
        gold: the query's class index.
        label: the query's gold label word.
        prefix: the demonstration block (``""`` for ``zero``).
        query: the formatted query, the same string in every kind of prompt of this query.
    """

    query_id: str
    query_text: str
    kind: str
    split: str
    demo_ids: tuple[str, ...]
    demo_labels: tuple[int, ...]
    gold: int
    label: str
    prefix: str
    query: str

    @property
    def text(self) -> str:
        """The full prompt (prefix + query); the next token is the label's."""
        return self.prefix + self.query


@dataclass(frozen=True)
class PromptSet:
    """All prompts of one task under one config, aligned by query.

    Attributes:
        task: the task.
        config: the config they were built with.
        demo_pool_ids: ids reserved as demonstrations (never queries).
        fit_ids / eval_ids: query ids of each split (disjoint), in query order.
        prompts: every prompt, grouped by kind in :data:`KINDS` order, each in query order.
        notes: what the context check changed (dropped demonstrations), if anything.
    """

    task: Task
    config: PromptConfig
    demo_pool_ids: tuple[str, ...]
    fit_ids: tuple[str, ...]
    eval_ids: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    notes: tuple[str, ...] = ()

    @property
    def query_ids(self) -> tuple[str, ...]:
        """Every query id: fit first, then eval (the row order of :meth:`get`)."""
        return self.fit_ids + self.eval_ids

    @property
    def kinds(self) -> tuple[str, ...]:
        present = {p.kind for p in self.prompts}
        return tuple(k for k in KINDS if k in present)

    def get(self, kind: str, split: str | None = None) -> tuple[Prompt, ...]:
        """Prompts of ``kind`` (and ``split`` if given), in query order."""
        if kind not in self.kinds:
            raise KeyError(f"no {kind!r} prompts; built kinds: {', '.join(self.kinds)}")
        if split is not None and split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
        return tuple(
            p for p in self.prompts if p.kind == kind and (split is None or p.split == split)
        )

    def texts(self, kind: str, split: str | None = None) -> list[str]:
        """Full prompt strings of ``kind``, in query order (ready for ``handle.tokenize``)."""
        return [p.text for p in self.get(kind, split)]

    def gold(self, split: str | None = None) -> list[int]:
        """Gold class index per query, in query order."""
        return [p.gold for p in self.get("zero", split)]

    def split_indices(self) -> dict[str, list[int]]:
        """Row indices (into the query order) of the fit and eval queries."""
        n_fit = len(self.fit_ids)
        return {
            "fit": list(range(n_fit)),
            "eval": list(range(n_fit, n_fit + len(self.eval_ids))),
        }

    @property
    def common_prefix(self) -> str | None:
        """The shared demonstration block of pinned ICL prompts (None when not all share one)."""
        prefixes = {p.prefix for p in self.get("icl")}
        return prefixes.pop() if len(prefixes) == 1 else None

    def to_frame(self) -> pd.DataFrame:
        """One tidy row per prompt (see :func:`prompts_frame`)."""
        return prompts_frame(self.prompts, task=self.task.name)

    def manifest(self) -> dict[str, Any]:
        """Provenance: which task set, config (seed, k, sizes), split and pool ids, notes."""
        return {
            "task": self.task.manifest(),
            "config": self.config.to_dict(),
            "n_queries": {"fit": len(self.fit_ids), "eval": len(self.eval_ids)},
            "demo_pool_ids": list(self.demo_pool_ids),
            "fit_ids": list(self.fit_ids),
            "eval_ids": list(self.eval_ids),
            "pinned_demo_ids": list(self.get("icl")[0].demo_ids) if self.config.is_pinned else None,
            "kinds": list(self.kinds),
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        return self.manifest()


def prompts_frame(prompts: Sequence[Prompt], task: str | None = None) -> pd.DataFrame:
    """A tidy DataFrame, one row per prompt.

    Columns: ``task, query_id, kind, split, gold, label, n_demos, demo_ids, demo_labels,
    query_text, text`` (``demo_ids`` / ``demo_labels`` hold lists).
    """
    rows = [
        {
            "task": task,
            "query_id": p.query_id,
            "kind": p.kind,
            "split": p.split,
            "gold": p.gold,
            "label": p.label,
            "n_demos": len(p.demo_ids),
            "demo_ids": list(p.demo_ids),
            "demo_labels": list(p.demo_labels),
            "query_text": p.query_text,
            "text": p.text,
        }
        for p in prompts
    ]
    columns = [
        "task", "query_id", "kind", "split", "gold", "label", "n_demos",
        "demo_ids", "demo_labels", "query_text", "text",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _rng(seed: int, *keys: object) -> random.Random:
    """A generator seeded by the config seed and a purpose (string seeds hash stably)."""
    return random.Random("|".join(["cgar-prompts", str(seed), *map(str, keys)]))


def _partition(
    task: Task, config: PromptConfig
) -> tuple[list[list[Example]], list[Example], list[Example]]:
    """Demonstration pool per class, and fit / eval queries (disjoint)."""
    pinned = set(config.pinned_ids)
    known = {ex.id for ex in task.examples}
    missing = [i for i in config.pinned_ids if i not in known]
    if missing:
        raise TaskError(f"pinned_ids not in task {task.name!r}: {missing}")
    rng = _rng(config.seed, "partition")
    pools: list[list[Example]] = []
    queues: list[list[Example]] = []
    for c, group in enumerate(task.by_class()):
        rest = [ex for ex in group if ex.id not in pinned]
        rng.shuffle(rest)
        n_pool = 0 if pinned else config.demo_pool_per_class
        if len(rest) <= n_pool:
            raise TaskError(
                f"class {task.classes[c]!r} of task {task.name!r} has {len(group)} examples; "
                f"{n_pool} are reserved as demonstrations (demo_pool_per_class), leaving none "
                "to query; lower demo_pool_per_class (in a suite: the task's [[task]] table) "
                "or add examples"
            )
        pools.append(rest[:n_pool])
        queues.append(rest[n_pool:])
    order: list[Example] = []
    for r in range(max(len(q) for q in queues)):
        classes = list(range(task.n_classes))
        rng.shuffle(classes)
        order += [queues[c][r] for c in classes if r < len(queues[c])]
    n_eval = len(order) - config.n_fit if config.n_eval is None else config.n_eval
    if n_eval < 1 or config.n_fit + n_eval > len(order):
        raise TaskError(
            f"task {task.name!r} has {len(order)} queries after reserving "
            f"{sum(map(len, pools)) or len(pinned)} demonstrations; n_fit={config.n_fit} + "
            f"n_eval={config.n_eval} does not fit; lower them (n_eval=None takes the rest)"
        )
    return pools, order[: config.n_fit], order[config.n_fit : config.n_fit + n_eval]


def _arrange(picks: list[list[Example]], shuffle: bool, rng: random.Random) -> list[Example]:
    """Demonstrations in prompt order: round-robin over classes, or shuffled."""
    demos = [group[r] for r in range(max(map(len, picks))) for group in picks if r < len(group)]
    if shuffle:
        rng.shuffle(demos)
    return demos


def _draw(pools: list[list[Example]], config: PromptConfig, rng: random.Random) -> list[Example]:
    """One prompt's demonstrations: ``k`` per class, nested in a ``k_max`` draw if set.

    ``rng.sample(pool, K)[:k]`` is a uniform k-subset, so the k-shot prompt is the
    ``k_max``-shot prompt with each class's later picks left out, in the same order.
    """
    draw = config.k_max or config.k
    picks = [rng.sample(pool, draw) for pool in pools]
    demos = _arrange(picks, config.shuffle_order, rng)
    if draw == config.k:
        return demos
    keep = {id(ex) for group in picks for ex in group[: config.k]}
    return [ex for ex in demos if id(ex) in keep]


def _derangement(n: int, rng: random.Random) -> list[int]:
    """A uniform permutation of ``range(n)`` without a fixed point (rejection sampling)."""
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def _control_labels(
    kind: str,
    shown: tuple[int, ...],
    demo_ids: tuple[str, ...],
    n_classes: int,
    seed: int,
    key: str,
    flip: list[int],
) -> tuple[int, ...]:
    """The labels a label control shows with a prompt's demonstrations.

    ``key`` seeds the prompt (its query id, or ``"pinned"`` when every query shares the
    demonstrations, so the controls keep one common prefix too); ``flip`` is the prompt's
    derangement of the classes.
    """
    if kind == "icl_flipped":  # one class-level derangement (formerly "icl_shuffled")
        return tuple(flip[y] for y in shown)
    if kind == "icl_random":  # each label uniform over the classes, independent of the input;
        # seeded per demonstration, so a k-shot sweep's nested prompts keep their labels
        return tuple(_rng(seed, "random_labels", key, d).randrange(n_classes) for d in demo_ids)
    if kind == "icl_permuted":  # the prompt's own labels in a random order
        labels = list(shown)
        _rng(seed, "permute_labels", key).shuffle(labels)
        return tuple(labels)
    raise TaskError(f"unknown label control {kind!r}; valid kinds: {', '.join(CONTROL_KINDS)}")


def build_prompts(
    task: Task,
    config: PromptConfig | None = None,
    *,
    tokenizer=None,
    n_ctx: int | None = None,
    add_bos: bool = True,
) -> PromptSet:
    """Build the zero-shot and ICL prompts of every query of ``task``.

    Args:
        task: the task.
        config: the build settings (default :class:`PromptConfig`).
        tokenizer: optional; with ``n_ctx``, every prompt is checked to fit the context.
        n_ctx: the model's context length (``handle.arch.n_ctx``).
        add_bos: whether a BOS token will be put first (``handle.prepend_bos``); counted.

    Raises:
        TaskError: too few examples for the pool and the requested splits, unknown pinned ids.
        ContextLengthError: a prompt does not fit ``n_ctx`` (unless ``on_overflow="drop_demos"``
            and dropping demonstrations makes it fit).
    """
    config = config or PromptConfig()
    pools, fit, evals = _partition(task, config)
    by_id = {ex.id: ex for ex in task.examples}
    pinned_demos: list[Example] | None = None
    if config.pinned_ids:
        pinned_demos = [by_id[i] for i in config.pinned_ids]
    elif config.pinned:
        pinned_demos = _draw(pools, config, _rng(config.seed, "pinned"))
    pinned_perm = _derangement(task.n_classes, _rng(config.seed, "shuffle", "pinned"))

    prompts: dict[str, list[Prompt]] = {kind: [] for kind in KINDS}
    for split, queries in (("fit", fit), ("eval", evals)):
        for ex in queries:
            query = task.template.format_query(ex.text)
            common = {
                "query_id": ex.id,
                "query_text": ex.text,
                "split": split,
                "gold": ex.label,
                "label": task.label_words[ex.label],
                "query": query,
            }
            prompts["zero"].append(
                Prompt(kind="zero", demo_ids=(), demo_labels=(), prefix="", **common)
            )
            if pinned_demos is not None:
                demos, perm = pinned_demos, pinned_perm
            else:
                demos = _draw(pools, config, _rng(config.seed, "demos", ex.id))
                perm = _derangement(task.n_classes, _rng(config.seed, "shuffle", ex.id))
            ids = tuple(d.id for d in demos)
            shown = tuple(d.label for d in demos)
            prompts["icl"].append(
                Prompt(
                    kind="icl",
                    demo_ids=ids,
                    demo_labels=shown,
                    prefix=_render(task, ids, shown, by_id),
                    **common,
                )
            )
            key = "pinned" if pinned_demos is not None else ex.id
            for kind in config.label_controls:
                wrong = _control_labels(kind, shown, ids, task.n_classes, config.seed, key, perm)
                prompts[kind].append(
                    Prompt(
                        kind=kind,
                        demo_ids=ids,
                        demo_labels=wrong,
                        prefix=_render(task, ids, wrong, by_id),
                        **common,
                    )
                )
    built = PromptSet(
        task=task,
        config=config,
        demo_pool_ids=tuple(i for pool in pools for i in (ex.id for ex in pool))
        or config.pinned_ids,
        fit_ids=tuple(ex.id for ex in fit),
        eval_ids=tuple(ex.id for ex in evals),
        prompts=tuple(p for kind in KINDS for p in prompts[kind]),
    )
    if tokenizer is not None and n_ctx is not None:
        built = fit_context(built, tokenizer, n_ctx, add_bos=add_bos)
    return built


def _render(
    task: Task, demo_ids: Sequence[str], shown: Sequence[int], by_id: dict[str, Example]
) -> str:
    """The demonstration block for ``demo_ids`` shown with the labels ``shown``."""
    return task.template.prefix(
        [(by_id[i].text, task.label_words[y]) for i, y in zip(demo_ids, shown, strict=True)]
    )


def prompt_lengths(prompts: Sequence[Prompt], tokenizer, *, add_bos: bool = True) -> list[int]:
    """Token count of each prompt as ``ModelHandle.tokenize`` makes it (BOS counted if added)."""
    if not prompts:
        return []
    encoded = tokenizer([p.text for p in prompts], add_special_tokens=False)["input_ids"]
    return [len(ids) + int(add_bos) for ids in encoded]


def fit_context(prompts: PromptSet, tokenizer, n_ctx: int, *, add_bos: bool = True) -> PromptSet:
    """Check every prompt against the context length ``n_ctx``.

    With ``config.on_overflow == "error"`` a prompt that does not fit raises
    :class:`ContextLengthError` naming its length and the limit. With ``"drop_demos"`` the
    earliest demonstrations of an ICL prompt are dropped until it fits (pinned prompts all drop
    the same ones, so they keep a common prefix), with a :class:`UserWarning`; the dropped
    prompts record their remaining ``demo_ids`` and the set records a note.
    """
    lengths = prompt_lengths(prompts.prompts, tokenizer, add_bos=add_bos)
    over = [(p, n) for p, n in zip(prompts.prompts, lengths, strict=True) if n > n_ctx]
    if not over:
        return prompts
    for p, n in over:
        if p.kind == "zero":
            raise ContextLengthError(
                f"the zero-shot prompt of query {p.query_id!r} ({prompts.task.name}) is {n} "
                f"tokens, longer than the model's context of {n_ctx} tokens; the query alone "
                "does not fit: shorten or drop that example"
            )
    if prompts.config.on_overflow == "error":
        p, n = max(over, key=lambda item: item[1])
        raise ContextLengthError(
            f"the {p.kind} prompt of query {p.query_id!r} ({prompts.task.name}, "
            f"{len(p.demo_ids)} demonstrations) is {n} tokens, longer than the model's context "
            f"of {n_ctx} tokens ({len(over)} prompt(s) too long); use fewer demonstrations "
            "(smaller k) or on_overflow='drop_demos' to drop the earliest ones with a warning"
        )
    task = prompts.task
    by_id = {ex.id: ex for ex in task.examples}
    pinned = prompts.config.is_pinned
    drops: dict[tuple[str, str], int] = {}
    for p, _ in over:
        keep = len(p.demo_ids)
        while keep > 0:
            keep -= 1
            trial = replace(
                p,
                demo_ids=p.demo_ids[len(p.demo_ids) - keep :],
                demo_labels=p.demo_labels[len(p.demo_ids) - keep :],
            )
            trial = replace(trial, prefix=_render(task, trial.demo_ids, trial.demo_labels, by_id))
            if prompt_lengths([trial], tokenizer, add_bos=add_bos)[0] <= n_ctx:
                break
        drops[(p.kind, p.query_id)] = len(p.demo_ids) - keep
    if pinned:  # drop the same number from every ICL prompt, keeping one shared prefix
        worst = max(drops.values())
        drops = {(p.kind, p.query_id): worst for p in prompts.prompts if p.kind != "zero"}
    new_prompts = []
    for p in prompts.prompts:
        n_drop = drops.get((p.kind, p.query_id), 0)
        if n_drop:
            ids, shown = p.demo_ids[n_drop:], p.demo_labels[n_drop:]
            p = replace(p, demo_ids=ids, demo_labels=shown, prefix=_render(task, ids, shown, by_id))
        new_prompts.append(p)
    note = (
        f"{len(drops)} ICL prompt(s) of {task.name} exceeded the context of {n_ctx} tokens; "
        f"dropped up to {max(drops.values())} of their earliest demonstrations "
        f"(on_overflow='drop_demos')"
    )
    warnings.warn(note, UserWarning, stacklevel=2)
    return replace(prompts, prompts=tuple(new_prompts), notes=prompts.notes + (note,))

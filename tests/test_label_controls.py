"""The three label controls (issue #25, item 4), each named for what it is.

- ``icl_flipped``: every demonstration's label through one derangement of the classes (the
  former ``icl_shuffled``, the same prompts);
- ``icl_random``: every label drawn uniformly from the classes, independent of the input
  (Min et al., 2022);
- ``icl_permuted``: the prompt's labels permuted across its demonstrations (Todd et al., 2024).
"""

from __future__ import annotations

import random
import typing
from collections import Counter

import pytest

from cgar_interp.data import CONTROL_KINDS, PromptConfig, TaskError, build_prompts, load_task
from cgar_interp.probes.context_gate import VECTORS, ContextGateConfig
from cgar_interp.probes.head_mediation import HeadMediationConfig
from cgar_interp.probes.inputs import CONTROL_PROMPT_KINDS, PROMPT_KINDS_SHARED
from cgar_interp.probes.protocol import FLIPPED, PERMUTED, RANDOM_LABELS, PromptKind
from cgar_interp.suite import ProbeEntry, SuiteConfig
from cgar_interp.tasks_bridge import label_controls, prompt_config

ALL = ("icl_flipped", "icl_random", "icl_permuted")


@pytest.fixture(scope="module")
def trec():
    return load_task("trec-mini")  # 6 classes


@pytest.fixture(scope="module")
def sst2():
    return load_task("sst2-mini")  # 2 classes: the only derangement is the swap


def _build(task, kinds=ALL, **kw):
    kw = {"k": 1, "n_fit": 8, "n_eval": None, "seed": 0, **kw}
    return build_prompts(task, PromptConfig(label_controls=kinds, **kw))


def _expected_flip(seed: int, key: str, n: int) -> list[int]:
    """The derangement rule, written out again: a shuffle of the classes seeded by the config
    seed and the query id (or "pinned"), redrawn until no class maps to itself."""
    rng = random.Random("|".join(["cgar-prompts", str(seed), "shuffle", key]))
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


def test_the_kind_names_agree_everywhere():
    assert CONTROL_KINDS == CONTROL_PROMPT_KINDS == (FLIPPED, RANDOM_LABELS, PERMUTED) == ALL
    assert ("zero", "icl", *ALL) == PROMPT_KINDS_SHARED
    assert typing.get_args(PromptKind) == PROMPT_KINDS_SHARED


@pytest.mark.parametrize("task_name", ["sst2-mini", "trec-mini"])
@pytest.mark.parametrize("extra", [{}, {"pinned": True}, {"k": 2, "k_max": 3, "seed": 5}])
def test_flipped_prompts_are_the_class_level_derangement(task_name, extra):
    task = load_task(task_name)
    built = _build(task, ("icl_flipped",), n_eval=24, **extra)
    by_id = {ex.id: ex for ex in task.examples}
    seed = extra.get("seed", 0)
    flipped = built.get("icl_flipped")
    for icl, flip in zip(built.get("icl"), flipped, strict=True):
        perm = _expected_flip(
            seed, "pinned" if extra.get("pinned") else icl.query_id, task.n_classes
        )
        assert flip.demo_labels == tuple(perm[y] for y in icl.demo_labels)
        assert flip.demo_ids == icl.demo_ids and flip.query == icl.query
        shown = [
            (by_id[i].text, task.label_words[y])
            for i, y in zip(icl.demo_ids, flip.demo_labels, strict=True)
        ]
        assert flip.prefix == task.template.prefix(shown)
    if task.n_classes == 2:  # with two classes every label is swapped
        assert all(
            f.demo_labels == tuple(1 - y for y in i.demo_labels)
            for i, f in zip(built.get("icl"), flipped, strict=True)
        )


def test_random_labels_are_independent_of_the_input(trec):
    built = _build(trec, ("icl_random",), k=2)
    icl, rand = built.get("icl"), built.get("icl_random")
    pairs = Counter(
        (y, shown)
        for i, r in zip(icl, rand, strict=True)
        for y, shown in zip(i.demo_labels, r.demo_labels, strict=True)
    )
    k = trec.n_classes
    # every shown class appears under every true class, the truth included (not a derangement)
    assert set(pairs) == {(y, s) for y in range(k) for s in range(k)}
    total = sum(pairs.values())  # 132 prompts x 12 demonstrations
    coincide = sum(n for (y, s), n in pairs.items() if y == s) / total
    assert abs(coincide - 1 / k) < 0.04  # about 1/K of the labels are the true ones
    for y in range(k):  # the shown label's distribution does not depend on the true class
        row = [pairs[(y, s)] for s in range(k)]
        assert max(row) / sum(row) < 2.2 / k and min(row) / sum(row) > 0.3 / k
    # some prompt shows one label twice (not a permutation of the prompt's labels either)
    assert any(len(set(r.demo_labels)) < len(r.demo_labels) for r in rand)
    for i, r in zip(icl, rand, strict=True):
        assert r.demo_ids == i.demo_ids and r.query == i.query


def test_random_labels_are_seeded(sst2):
    a, b = _build(sst2, ("icl_random",), seed=3), _build(sst2, ("icl_random",), seed=3)
    assert a.get("icl_random") == b.get("icl_random")
    other = _build(sst2, ("icl_random",), seed=4)
    assert [p.demo_labels for p in a.get("icl_random")] != [
        p.demo_labels for p in other.get("icl_random")
    ]
    # a query's labels do not depend on which other controls are built
    everything = _build(sst2, ALL, seed=3)
    assert everything.get("icl_random") == a.get("icl_random")
    # with two classes: sometimes right, sometimes wrong, sometimes both demonstrations alike
    rand, icl = a.get("icl_random"), a.get("icl")
    assert any(r.demo_labels == i.demo_labels for r, i in zip(rand, icl, strict=True))
    assert any(r.demo_labels != i.demo_labels for r, i in zip(rand, icl, strict=True))
    assert any(r.demo_labels[0] == r.demo_labels[1] for r in rand)


def test_random_labels_are_nested_in_a_shot_sweep(trec):
    """A demonstration keeps its random label as k grows (seeded per demonstration)."""
    built = {k: _build(trec, ("icl_random",), k=k, k_max=3, n_eval=12) for k in (1, 3)}
    for small, big in zip(built[1].get("icl_random"), built[3].get("icl_random"), strict=True):
        labels = dict(zip(big.demo_ids, big.demo_labels, strict=True))
        assert set(small.demo_ids) <= set(labels)
        assert all(labels[d] == y for d, y in zip(small.demo_ids, small.demo_labels, strict=True))


@pytest.mark.parametrize("task_name", ["sst2-mini", "trec-mini"])
def test_permuted_labels_are_the_prompts_own_labels_in_another_order(task_name):
    task = load_task(task_name)
    built = _build(task, ("icl_permuted",), k=2)
    icl, perm = built.get("icl"), built.get("icl_permuted")
    moved = 0
    for i, p in zip(icl, perm, strict=True):
        assert sorted(p.demo_labels) == sorted(i.demo_labels)  # the same multiset
        assert p.demo_ids == i.demo_ids and p.query == i.query
        moved += p.demo_labels != i.demo_labels
    assert moved > len(icl) // 2  # not the identity
    if task.n_classes == 2:  # [0, 1, 0, 1] keeps its order in 4 of the 24 permutations
        assert moved < len(icl)  # a random permutation, not a derangement
    again = _build(task, ("icl_permuted",), k=2)
    assert again.get("icl_permuted") == perm
    other = _build(task, ("icl_permuted",), k=2, seed=1)
    assert [p.demo_labels for p in other.get("icl_permuted")] != [p.demo_labels for p in perm]


def test_pinned_controls_keep_one_shared_prefix(trec):
    built = _build(trec, ALL, pinned=True, n_eval=12)
    for kind in ALL:
        assert len({p.prefix for p in built.get(kind)}) == 1, kind


def test_only_the_requested_kinds_are_built(sst2):
    assert _build(sst2, ()).kinds == ("zero", "icl")
    for kind in ALL:
        built = _build(sst2, (kind,))
        assert built.kinds == ("zero", "icl", kind)
        with pytest.raises(KeyError, match="no 'icl_"):
            built.get(next(k for k in ALL if k != kind))
    both = _build(sst2, ("icl_permuted", "icl_flipped"))
    assert both.kinds == ("zero", "icl", "icl_flipped", "icl_permuted")
    assert both.config.label_controls == ("icl_flipped", "icl_permuted")  # canonical order
    assert both.manifest()["config"]["label_controls"] == ["icl_flipped", "icl_permuted"]


def _suite(*configs) -> SuiteConfig:
    kinds = {ContextGateConfig: "context_gate", HeadMediationConfig: "head_mediation"}
    return SuiteConfig(
        tasks=("sst2-mini",), probes=tuple(ProbeEntry(kinds[type(c)], c) for c in configs)
    )


def test_a_suite_builds_the_controls_its_probes_ask_for():
    gate = ContextGateConfig
    assert label_controls(_suite(gate(vectors=("context", "random")))) == ()
    assert label_controls(_suite(gate())) == ("icl_flipped", "icl_random")
    assert label_controls(_suite(gate(vectors=("context", "random_labels")))) == ("icl_random",)
    assert label_controls(_suite(HeadMediationConfig())) == ("icl_permuted",)
    assert label_controls(_suite(HeadMediationConfig(corrupted="flipped"))) == ("icl_flipped",)
    suite = _suite(gate(vectors=("context", "flipped")), HeadMediationConfig())
    assert prompt_config(suite, label_controls(suite)).label_controls == (
        "icl_flipped",
        "icl_permuted",
    )


def test_bad_control_names_are_refused_with_the_valid_ones():
    with pytest.raises(TaskError, match=r"\['nope'\]; valid kinds: icl_flipped, icl_random"):
        PromptConfig(label_controls=("nope",))
    with pytest.raises(TaskError, match="'icl_shuffled' was the class-level derangement"):
        PromptConfig(label_controls=("icl_shuffled",))
    built = PromptConfig.from_dict({"label_controls": ["icl_random"]})
    assert built.label_controls == ("icl_random",)


def test_context_gate_says_shuffled_was_renamed():
    with pytest.raises(ValueError) as err:
        ContextGateConfig(vectors=("context", "shuffled"))
    message = str(err.value)
    assert "'shuffled' was the class-level derangement, now 'flipped'" in message
    assert "'random_labels' is Min et al.'s random labels" in message
    assert "valid vectors: context, random, flipped, random_labels" in message
    assert VECTORS == ("context", "random", "flipped", "random_labels")
    with pytest.raises(ValueError, match="unknown vector 'y'; valid vectors: context, random"):
        ContextGateConfig(vectors=("context", "y"))

"""Shipped offline task sets and the synthetic family."""

from __future__ import annotations

import dataclasses
import json

import pytest

from cgar_interp.data import (
    SHIPPED,
    TASKS_DIR,
    TaskError,
    available_tasks,
    load_task,
    synthetic_task,
)

MIN_PER_CLASS = {"sst2-mini": 60, "trec-mini": 25, "agnews-mini": 25}
FAMILY = {"sst2-mini": "sst2", "trec-mini": "trec", "agnews-mini": "ag_news"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sets_load_offline_balanced_and_clean(name):
    task = load_task(name)
    assert task.name == name and task.family == FAMILY[name]
    counts = task.class_counts()
    assert set(counts) == set(task.classes)
    assert len(set(counts.values())) == 1, f"unbalanced: {counts}"
    assert min(counts.values()) >= MIN_PER_CLASS[name]
    normalised = [" ".join(ex.text.lower().split()) for ex in task.examples]
    assert len(set(normalised)) == len(normalised)
    assert all(len(ex.text.split()) >= 3 for ex in task.examples)
    assert task.source.startswith(f"shipped:{name} (cgar_interp/assets/tasks/")
    assert load_task(name).fingerprint() == task.fingerprint()


def test_shipped_sets_are_package_data_with_a_readme():
    import cgar_interp

    assert TASKS_DIR.parent.parent == __import__("pathlib").Path(cgar_interp.__file__).parent
    for spec in SHIPPED.values():
        rows = [json.loads(line) for line in spec.path.read_text().splitlines()]
        assert {tuple(sorted(row)) for row in rows} == {("id", "label", "text")}
    readme = (TASKS_DIR / "README.md").read_text()
    assert "not the benchmark" in readme
    for name in SHIPPED:
        assert name in readme


def test_verbalisers_of_the_three_label_spaces():
    assert load_task("sst2-mini").label_words == ("negative", "positive")
    assert load_task("trec-mini").label_words == (
        "abbreviation", "entity", "description", "human", "location", "number",
    )  # fmt: skip
    assert load_task("agnews-mini").verbaliser == {
        "World": "world", "Sports": "sports", "Business": "business", "Sci/Tech": "technology",
    }  # fmt: skip


def test_shipped_tasks_take_no_options():
    with pytest.raises(TaskError, match=r"shipped task 'sst2-mini' takes no options; got split"):
        load_task("sst2-mini", split="train")


def test_manifest_records_the_task_set():
    manifest = load_task("trec-mini").manifest()
    assert manifest["name"] == "trec-mini" and manifest["family"] == "trec"
    assert manifest["n_examples"] == sum(manifest["class_counts"].values())
    assert len(manifest["fingerprint"]) == 16
    assert set(available_tasks()) == {*SHIPPED, "synthetic"}


def test_synthetic_family_is_seeded_balanced_and_tunable():
    task = load_task("synthetic", n_classes=4, n_per_class=10, keys_per_class=2, seed=5)
    assert task == synthetic_task(n_classes=4, n_per_class=10, keys_per_class=2, seed=5)
    assert task != synthetic_task(n_classes=4, n_per_class=10, keys_per_class=2, seed=6)
    assert sorted(task.class_counts().values()) == [10] * 4
    assert task.name == "synthetic-c4-k2-f2-s5"
    # a key word identifies the class: keys never appear in another class's texts
    keys = [set.intersection(*(set(ex.text.split()) for ex in group)) for group in task.by_class()]
    assert all(not keys_c for keys_c in keys)  # two keys per class: no word shared by all
    words_by_class = [set(w for ex in group for w in ex.text.split()) for group in task.by_class()]
    private = [words_by_class[c] - set.union(*(words_by_class[d] for d in range(4) if d != c))
               for c in range(4)]  # fmt: skip
    assert all(len(p) == 2 for p in private)
    with pytest.raises(TaskError, match=r"n_classes must be 2\.\.12"):
        synthetic_task(n_classes=1)
    with pytest.raises(TaskError, match=r"cannot make 5 distinct texts"):
        synthetic_task(n_per_class=5, n_fillers=0)


def test_task_validation_names_the_problem():
    from cgar_interp.data import Example, Task

    task = load_task("sst2-mini")
    first = task.examples[0]
    with pytest.raises(TaskError, match=r"examples 0 and 1 have the same text"):
        dataclasses.replace(task, examples=(first, dataclasses.replace(first, id="copy")))
    with pytest.raises(TaskError, match=r"has label 2; valid labels are 0\.\.1"):
        dataclasses.replace(task, examples=(Example("x", "some text", 2),))
    with pytest.raises(TaskError, match=r"label words must be distinct; 'good' appears twice"):
        dataclasses.replace(task, label_words=("good", "good"))
    with pytest.raises(TaskError, match=r"template query must contain '\{text\}' once"):
        dataclasses.replace(task.template, query="Review:")
    assert isinstance(task, Task)

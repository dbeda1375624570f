"""Directories written by ``datasets``' ``save_to_disk`` load through ``load_task(path)``.

The hub's offline error (``load_task("sst2")`` -> DatasetUnavailable) is covered, unchanged, by
``test_loaders.py::test_offline_hub_request_is_a_clear_error``.
"""

from __future__ import annotations

import shutil

import pytest

from cgar_interp.data import TaskError, load_task
from cgar_interp.data.loaders import load_saved_dataset, sha256_dir, sha256_file

datasets = pytest.importorskip("datasets")

TEXTS = ["a warm and funny film", "dull and far too long", "a clever thriller", "the plot sags"]
LABELS = [1, 0, 1, 0]


@pytest.fixture(autouse=True)
def _quiet_progress():
    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


def _classlabel(texts=TEXTS, labels=LABELS, names=("neg", "pos"), **extra):
    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))}
    features.update({key: datasets.Value("string") for key in extra})
    return datasets.Dataset.from_dict(
        {"text": list(texts), "label": list(labels), **extra},
        features=datasets.Features(features),
    )


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "reviews"
    _classlabel().save_to_disk(str(path))
    return path


@pytest.fixture
def saved_dict(tmp_path):
    path = tmp_path / "splits"
    train = _classlabel()
    test = _classlabel(["great fun", "a bore", "lovely"], [1, 0, 1])
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(path))
    return path


def test_classlabel_dataset_loads_with_its_class_names(saved):
    task = load_task(str(saved))
    assert task.name == "reviews"
    assert task.classes == ("neg", "pos")
    assert task.label_words == ("neg", "pos")  # make_task's default: the class names
    assert [ex.text for ex in task.examples] == TEXTS
    assert [ex.label for ex in task.examples] == LABELS
    assert [ex.id for ex in task.examples] == ["0", "1", "2", "3"]
    assert task.family is None and task.text_field == "text"
    data = datasets.load_from_disk(str(saved))
    assert task.source == (
        f"saved:{saved.resolve()} fingerprint={data._fingerprint} sha256={sha256_dir(saved)[:16]}"
    )
    assert load_task(saved) == task  # a Path works too


def test_options_override_the_class_names(saved):
    task = load_task(
        str(saved), classes=["bad", "good"], label_words=["awful", "great"], name="mine"
    )
    assert task.name == "mine"
    assert task.verbaliser == {"bad": "awful", "good": "great"}
    assert [ex.label for ex in task.examples] == LABELS


def test_like_maps_class_names_to_the_family(tmp_path):
    path = tmp_path / "sst"
    # Names in the reverse of the family's order: matched by name, not by index.
    data = _classlabel(labels=[0, 1, 0, 1], names=("positive", "negative"))
    data.save_to_disk(str(path))
    task = load_task(str(path), like="sst2")
    assert task.classes == ("negative", "positive") and task.family == "sst2"
    assert [task.classes[ex.label] for ex in task.examples] == [
        "positive",
        "negative",
        "positive",
        "negative",
    ]
    other = tmp_path / "other"
    _classlabel().save_to_disk(str(other))
    with pytest.raises(TaskError, match=r"class names \['neg', 'pos'\], which do not match"):
        load_task(str(other), like="sst2")
    # Explicit classes read the integers in order instead.
    task = load_task(str(other), like="sst2", classes=["negative", "positive"])
    assert [ex.label for ex in task.examples] == LABELS


def test_string_labels_and_id_column(tmp_path):
    path = tmp_path / "plain"
    datasets.Dataset.from_dict(
        {
            "sentence": TEXTS,
            "y": ["positive", "negative", "positive", "negative"],
            "uid": ["a", "b", "c", "d"],
        }
    ).save_to_disk(str(path))
    task = load_task(str(path), text_column="sentence", label_column="y", id_column="uid")
    assert task.classes == ("negative", "positive")
    assert [ex.id for ex in task.examples] == ["a", "b", "c", "d"]
    assert task.text_field == "sentence"


def test_max_per_class_samples_and_is_recorded(saved):
    task = load_task(str(saved), max_per_class=1, seed=3)
    assert sorted(task.class_counts().values()) == [1, 1]
    assert task.source.endswith("max_per_class=1 seed=3")
    assert load_task(str(saved), max_per_class=1, seed=3) == task


def test_dataset_dict_split_selection(saved_dict):
    train = load_task(str(saved_dict), split="train")
    test = load_task(str(saved_dict), split="test")
    assert [ex.text for ex in train.examples] == TEXTS
    assert [ex.text for ex in test.examples] == ["great fun", "a bore", "lovely"]
    assert [ex.id for ex in test.examples] == ["test-0", "test-1", "test-2"]
    assert test.classes == ("neg", "pos")
    assert " split=test " in test.source
    with pytest.raises(TaskError, match=r"splits train, test; pass split=\.\.\."):
        load_task(str(saved_dict))
    with pytest.raises(TaskError, match=r"no split 'validation'; splits present: train, test"):
        load_task(str(saved_dict), split="validation")


def test_single_split_dict_needs_no_split_and_plain_dataset_takes_none(tmp_path, saved):
    path = tmp_path / "one"
    datasets.DatasetDict({"validation": _classlabel()}).save_to_disk(str(path))
    task = load_task(str(path))
    assert task.examples[0].id == "validation-0" and " split=validation " in task.source
    with pytest.raises(TaskError, match=r"single Dataset without splits; got split='train'"):
        load_task(str(saved), split="train")


def test_missing_column_lists_the_columns_present(saved):
    with pytest.raises(TaskError) as info:
        load_task(str(saved), text_column="sentence")
    message = str(info.value)
    assert "text column 'sentence' not found in saved dataset" in message
    assert "columns present: text, label" in message
    with pytest.raises(TaskError, match=r"label column 'lable'.*did you mean 'label'"):
        load_saved_dataset(saved, label_column="lable")


def test_a_directory_that_is_not_a_saved_dataset(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    with pytest.raises(TaskError) as info:
        load_task(str(folder))
    message = str(info.value)
    assert "\n" not in message
    assert repr(str(folder)) in message and "is not a saved dataset" in message
    assert "save_to_disk" in message and "dataset_info.json" in message
    assert "dataset_dict.json" in message
    with pytest.raises(FileNotFoundError):
        load_saved_dataset(tmp_path / "absent")
    with pytest.raises(TaskError, match=r"is a file, not a saved dataset directory"):
        load_saved_dataset(folder / "readme.txt")


def test_sha256_dir_is_stable_and_tracks_changes(saved, tmp_path):
    first = sha256_dir(saved)
    assert sha256_dir(saved) == first == sha256_dir(str(saved))
    assert len(first) == 64
    (saved / "extra.txt").write_text("x")
    assert sha256_dir(saved) != first
    (saved / "extra.txt").write_text("y")
    changed = sha256_dir(saved)
    assert changed != first
    (saved / "extra.txt").unlink()
    assert sha256_dir(saved) == first
    # Independent of where the directory lives.
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    shutil.copytree(saved, copy)
    assert sha256_dir(copy) == first
    # A file hashes as sha256_file; a missing path is an error.
    state = saved / "state.json"
    assert sha256_dir(state) == sha256_file(state)
    with pytest.raises(FileNotFoundError):
        sha256_dir(tmp_path / "absent")

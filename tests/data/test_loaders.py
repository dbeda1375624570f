"""Loaders: local files in three formats (with their errors) and hub datasets (offline)."""

from __future__ import annotations

import pytest

from cgar_interp.data import (
    DatasetUnavailable,
    TaskError,
    load_file,
    load_hub,
    load_task,
)

from .helpers import write_table

FORMATS = ("jsonl", "csv", "parquet")
GOOD = [
    {"sentence": "a warm and funny film", "label": "positive"},
    {"sentence": "dull and far too long", "label": "negative"},
    {"sentence": "a gripping , clever thriller", "label": "positive"},
    {"sentence": "the plot goes nowhere", "label": "negative"},
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_loads_with_named_columns_and_family(tmp_path, fmt):
    path = write_table(tmp_path, fmt, GOOD)
    task = load_file(path, text_column="sentence", like="sst2")
    assert task.classes == ("negative", "positive")
    assert [ex.label for ex in task.examples] == [1, 0, 1, 0]
    assert task.template.query == "Review: {text}\nSentiment:"
    assert task.name == "data" and task.text_field == "sentence"
    assert task.source.startswith("file:") and "sha256=" in task.source
    assert load_task(path, text_column="sentence", like="sst2") == task


@pytest.mark.parametrize("fmt", FORMATS)
def test_integer_labels_with_classes(tmp_path, fmt):
    rows = [{"text": r["sentence"], "label": int(r["label"] == "positive")} for r in GOOD]
    path = write_table(tmp_path, fmt, rows)
    task = load_file(path, classes=["bad", "good"], label_words=["terrible", "great"])
    assert [ex.label for ex in task.examples] == [1, 0, 1, 0]
    assert task.verbaliser == {"bad": "terrible", "good": "great"}
    with pytest.raises(TaskError, match=r"labels .* are integers .* pass classes="):
        load_file(path)


def test_string_labels_infer_sorted_classes(tmp_path):
    task = load_file(write_table(tmp_path, "jsonl", GOOD), text_column="sentence")
    assert task.classes == ("negative", "positive") and task.family is None


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_column_names_list_the_columns_present(tmp_path, fmt):
    path = write_table(tmp_path, fmt, GOOD)
    with pytest.raises(
        TaskError,
        match=r"text column 'text' not found .*columns present: sentence, label; pass text_column",
    ):
        load_file(path, like="sst2")
    with pytest.raises(TaskError, match=r"label column 'labl' not found .*did you mean 'label'"):
        load_file(path, text_column="sentence", label_column="labl", like="sst2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file_is_an_error(tmp_path, fmt):
    path = tmp_path / f"empty.{fmt}"
    if fmt == "parquet":
        import pandas as pd

        pd.DataFrame({"text": [], "label": []}).to_parquet(path)
    else:
        path.write_text("")
    with pytest.raises(TaskError, match=r"is empty: it has no rows"):
        load_file(path, like="sst2")


def test_header_only_csv_is_empty(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    with pytest.raises(TaskError, match=r"is empty: it has no rows"):
        load_file(path, like="sst2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_labels_name_the_label_and_the_valid_ones(tmp_path, fmt):
    rows = [*GOOD, {"sentence": "it was fine , i guess", "label": "neutral"}]
    path = write_table(tmp_path, fmt, rows)
    with pytest.raises(
        TaskError,
        match=r"unknown label 'neutral' in row 4 of file .*valid labels: negative, positive",
    ):
        load_file(path, text_column="sentence", like="sst2")
    rows = [{"text": r["sentence"], "label": i % 2} for i, r in enumerate(GOOD)]
    rows.append({"text": "one more", "label": 7})
    path = write_table(tmp_path, fmt, rows, name="ints")
    with pytest.raises(TaskError, match=r"unknown label 7 in row 4 .*indices 0\.\.1"):
        load_file(path, like="sst2")


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_rows_are_an_error_or_dropped_on_request(tmp_path, fmt):
    rows = [*GOOD, {"sentence": "dull and  far too long", "label": "negative"}]
    path = write_table(tmp_path, fmt, rows)
    with pytest.raises(TaskError, match=r"duplicate rows .*rows 1 and 4 .*duplicates='drop'"):
        load_file(path, text_column="sentence", like="sst2")
    task = load_file(path, text_column="sentence", like="sst2", duplicates="drop")
    assert len(task.examples) == 4 and task.n_dropped_duplicates == 1
    assert task.manifest()["n_dropped_duplicates"] == 1


def test_conflicting_duplicates_are_always_an_error(tmp_path):
    rows = [*GOOD, {"sentence": "dull and far too long", "label": "positive"}]
    path = write_table(tmp_path, "jsonl", rows)
    with pytest.raises(TaskError, match=r"row 1 \(label 'negative'\) and row 4 .*different labels"):
        load_file(path, text_column="sentence", like="sst2", duplicates="drop")


def test_empty_text_and_unsupported_files(tmp_path):
    rows = [*GOOD, {"sentence": "  ", "label": "positive"}]
    with pytest.raises(TaskError, match=r"empty text in row 4"):
        load_file(write_table(tmp_path, "jsonl", rows), text_column="sentence", like="sst2")
    other = tmp_path / "data.tsv"
    other.write_text("x\ty\n")
    with pytest.raises(
        TaskError, match=r"unsupported file type '\.tsv'.*\.jsonl, \.csv, \.parquet"
    ):
        load_file(other)
    with pytest.raises(FileNotFoundError, match=r"no such task file"):
        load_task(tmp_path / "missing.csv")


def test_id_column_and_label_words_as_labels(tmp_path):
    rows = [
        {"id": f"q{i}", "text": f"Question number {i} ?", "label": label}
        for i, label in enumerate(["HUM", "location", "NUM", "human"])
    ]
    task = load_file(write_table(tmp_path, "csv", rows), like="trec", id_column="id")
    assert [ex.id for ex in task.examples] == ["q0", "q1", "q2", "q3"]
    assert [task.classes[ex.label] for ex in task.examples] == ["HUM", "LOC", "NUM", "HUM"]


def test_offline_hub_request_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetUnavailable) as info:
        load_task("sst2")
    message = str(info.value)
    assert "'stanfordnlp/sst2' (split 'validation')" in message
    assert "HF_HUB_OFFLINE" in message and "No other dataset is used" in message
    assert "load_task('sst2-validation.parquet', like='sst2', text_column='sentence'" in message
    with pytest.raises(
        DatasetUnavailable, match=r"(?s)'CogComp/trec' \(split 'train'\).*coarse_label"
    ):
        load_hub("CogComp/trec", split="train")
    with pytest.raises(DatasetUnavailable, match=r"'fancyzhx/ag_news'"):
        load_task("agnews")


def test_unknown_task_lists_what_is_known():
    with pytest.raises(TaskError, match=r"unknown task 'sst3'.*sst2-mini, trec-mini, agnews-mini"):
        load_task("sst3")


def _fake_hub(monkeypatch, columns: dict, names: list[str], label_column: str):
    import datasets

    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in columns if c != label_column},
            label_column: datasets.ClassLabel(names=names),
        }
    )
    data = datasets.Dataset.from_dict(columns, features=features)
    calls = []

    def load_dataset(path, split=None, revision=None):
        calls.append((path, split, revision))
        return data

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_loader_reads_the_declared_columns(monkeypatch):
    columns = {
        "sentence": ["great fun", "a bore", "lovely", "awful", "so dull"],
        "label": [1, 0, 1, 0, 0],
        "idx": ["0", "1", "2", "3", "4"],
    }
    calls = _fake_hub(monkeypatch, columns, ["negative", "positive"], "label")
    task = load_task("sst2")
    assert calls == [("stanfordnlp/sst2", "validation", None)]
    assert task.name == "sst2" and task.text_field == "sentence"
    assert [ex.label for ex in task.examples] == [1, 0, 1, 0, 0]
    assert task.examples[0].id == "validation-0"
    assert task.source.startswith("hf:stanfordnlp/sst2 split=validation")
    sampled = load_hub("sst2", max_per_class=2, seed=1)
    assert sorted(sampled.class_counts().values()) == [2, 2]


def test_hub_loader_checks_class_names(monkeypatch):
    columns = {"text": ["Who ?", "Where ?"], "coarse_label": [0, 1]}
    _fake_hub(monkeypatch, columns, ["A", "B"], "coarse_label")
    with pytest.raises(TaskError, match=r"class names \['A', 'B'\], expected \['ABBR', 'ENTY'"):
        load_task("trec")

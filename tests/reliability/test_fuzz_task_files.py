"""Hypothesis: task-file loaders return a valid Task or raise TaskError, nothing else."""

import csv
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgar_interp.data.loaders import load_file
from cgar_interp.data.tasks import TaskError

CLASSES = ("negative", "positive")
LABELS = st.one_of(
    st.sampled_from(["negative", "positive", "Negative", "pos", "", " positive"]),
    st.integers(-2, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
)
TEXTS = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["same text", "same text", "<script>x</script>", "é ☃ \u0000", ""]),
    st.integers(),
    st.none(),
)
COLUMNS = st.sampled_from(["text", "label", "id", "sentence", "Label", ""])
ROW = st.dictionaries(COLUMNS, st.one_of(TEXTS, LABELS), max_size=4)
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "like": st.sampled_from(["sst2", "trec", "nope"]),
        "classes": st.sampled_from([CLASSES, ("a",), ("a", "a"), ()]),
        "duplicates": st.sampled_from(["error", "drop"]),
        "id_column": st.sampled_from(["id", "missing"]),
    },
)


def check(task) -> None:
    """What every returned task guarantees."""
    assert len(task.examples) > 0
    assert len({ex.id for ex in task.examples}) == len(task.examples)
    assert all(0 <= ex.label < task.n_classes for ex in task.examples)
    assert len(set(task.classes)) == len(task.classes) == len(task.label_words)


def load(path: Path, options: dict):
    try:
        task = load_file(path, **options)
    except TaskError as err:
        assert str(err)  # a message a user can act on, never empty
        return None
    check(task)
    return task


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(ROW, max_size=8), OPTIONS, st.booleans())
def test_jsonl_rows(rows, options, garbage_line):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        lines = [json.dumps(row) for row in rows]
        if garbage_line:
            lines.insert(len(lines) // 2, '{"text": "unterminated')
        path.write_text("\n".join(lines))
        load(path, options)


@SETTINGS
@given(
    st.lists(st.sampled_from(["text", "label", "id", "x"]), min_size=0, max_size=3, unique=True),
    st.lists(st.lists(st.one_of(st.text(max_size=10), st.integers(-1, 3)), max_size=4), max_size=8),
    OPTIONS,
)
def test_csv_rows(header, rows, options):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.csv"
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            if header:
                writer.writerow(header)
            writer.writerows(rows)
        load(path, options)


def test_a_clean_file_loads(tmp_path):
    """The property tests must be able to pass through the success branch."""
    path = tmp_path / "ok.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": f"t{i}", "label": CLASSES[i % 2]}) for i in range(4))
    )
    task = load(path, {"like": "sst2"})
    assert task is not None and [ex.label for ex in task.examples] == [0, 1, 0, 1]

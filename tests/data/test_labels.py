"""Label tokens against the embedded SmolLM2 tokenizer and a tiny word-level tokenizer."""

from __future__ import annotations

import pytest

from cgar_interp.data import (
    SHIPPED,
    LabelTokenError,
    PromptConfig,
    build_prompts,
    label_sequences,
    label_tokens,
    load_task,
)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_label_words_are_single_distinct_tokens(embedded_tokenizer, name):
    task = load_task(name)
    prompt = build_prompts(task, PromptConfig(n_fit=1, n_eval=1)).get("icl")[0].text
    labels = label_tokens(task, embedded_tokenizer, context=prompt)
    assert labels.words == tuple(" " + w for w in task.label_words)
    assert labels.multi_token == ()
    assert len(set(labels.first_ids)) == task.n_classes
    for word, first in zip(task.label_words, labels.first_ids, strict=True):
        assert embedded_tokenizer(" " + word, add_special_tokens=False)["input_ids"] == [first]


def test_shared_first_token_names_both_labels(embedded_tokenizer):
    sequences = label_sequences(["technologyx", "technologyy"], embedded_tokenizer)
    assert sequences[0][0] == sequences[1][0]
    with pytest.raises(
        LabelTokenError,
        match=r"labels 'technologyx' and 'technologyy' share their first token \d+ \(' technology'\)",
    ):
        label_tokens(["positive", "technologyx", "technologyy"], embedded_tokenizer)


def test_multi_token_labels_are_reported_with_full_sequences(embedded_tokenizer):
    labels = label_tokens(["positive", "technologyx"], embedded_tokenizer)
    assert labels.multi_token == ("technologyx",)
    assert len(labels.sequences[1]) > 1 and labels.sequences[1][0] == labels.first_ids[1]
    assert labels.manifest()["multi_token"] == ["technologyx"]


def test_word_level_tokenizer(word_tokenizer):
    vocab = word_tokenizer.get_vocab()
    labels = label_tokens(["negative", "positive"], word_tokenizer)
    assert labels.first_ids == (vocab["negative"], vocab["positive"])
    assert labels.sequences == ((vocab["negative"],), (vocab["positive"],))
    multi = label_tokens(["very good", "bad"], word_tokenizer)
    assert multi.multi_token == ("very good",)
    assert multi.sequences[0] == (vocab["very"], vocab["good"])
    with pytest.raises(LabelTokenError, match=r"labels 'very good' and 'very bad' share .*'very'"):
        label_tokens(["very good", "very bad"], word_tokenizer)
    with pytest.raises(
        LabelTokenError, match=r"label 'zebra' is not in the tokenizer's vocabulary"
    ):
        label_tokens(["good", "zebra"], word_tokenizer)


def test_label_boundary_merge_is_detected(embedded_tokenizer):
    # a prompt ending in "technology" would merge with a label "x" scored without a space
    with pytest.raises(LabelTokenError, match=r"tokenizes differently after the prompt"):
        label_tokens(["x", "y"], embedded_tokenizer, prefix="", context="Topic: technolog")

"""Helpers of the data tests: a tiny word-level tokenizer and small task files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

WORDS = [
    "Review:",
    "Sentiment:",
    "Input:",
    "Label:",
    "positive",
    "negative",
    "very",
    "good",
    "bad",
    "film",
    "plot",
    "a",
    "the",
    "fine",
    "dull",
    "great",
    "awful",
    "movie",
    "story",
]


def build_word_tokenizer():
    """A word-level tokenizer over :data:`WORDS` (whitespace split, no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def write_table(directory: Path, fmt: str, rows: list[dict], name: str = "data") -> Path:
    """Write ``rows`` as a ``.jsonl``, ``.csv`` or ``.parquet`` file; returns its path."""
    path = directory / f"{name}.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif fmt == "csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif fmt == "parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        raise ValueError(fmt)
    return path

"""Label tokens: which token ids stand for each class, checked against the tokenizer.

A class is scored by the **first token of its label word with the template's answer prefix**
(a leading space: ``" positive"``), as the paper's "accuracy (full vocab)" and "concentration
mass on label tokens" are. Two labels whose first tokens coincide could not be told apart, so
that is an error naming both labels and the token. A label word that takes several tokens is
still scored by its first token and is listed in :attr:`LabelTokens.multi_token` (record it in the
manifest); its full token sequence is in :attr:`LabelTokens.sequences` for probes that score the
full-sequence log-probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .tasks import Task, TaskError


class LabelTokenError(TaskError):
    """Label words that cannot be scored by first token with this tokenizer."""


@dataclass(frozen=True)
class LabelTokens:
    """The label words of a task as token ids of one tokenizer.

    Attributes:
        words: the scored strings, prefix included (``(" negative", " positive")``).
        first_ids: ``[K]`` first token id of each word (what metrics score).
        sequences: every token id of each word, for full-sequence log-probability scoring.
        multi_token: the words (without prefix) that take more than one token.
    """

    words: tuple[str, ...]
    first_ids: tuple[int, ...]
    sequences: tuple[tuple[int, ...], ...]
    multi_token: tuple[str, ...]

    def manifest(self) -> dict[str, Any]:
        return {
            "words": list(self.words),
            "first_ids": list(self.first_ids),
            "sequences": [list(s) for s in self.sequences],
            "multi_token": list(self.multi_token),
        }

    def to_dict(self) -> dict[str, Any]:
        return self.manifest()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _token_str(tokenizer, token_id: int) -> str:
    try:
        return repr(tokenizer.decode([token_id]))
    except Exception:  # a tokenizer without decode support still gets a useful message
        return f"id {token_id}"


def label_sequences(
    words: Sequence[str], tokenizer, *, prefix: str = " "
) -> tuple[tuple[int, ...], ...]:
    """Full token sequences of ``prefix + word`` for each word (no special tokens).

    These are the tokens whose summed log-probability scores a label as a whole sequence,
    continuing a prompt that ends where the label starts.
    """
    return tuple(tuple(_encode(tokenizer, prefix + word)) for word in words)


def label_tokens(
    task_or_words: Task | Sequence[str],
    tokenizer,
    *,
    prefix: str | None = None,
    context: str | None = None,
) -> LabelTokens:
    """Check and return the label tokens of a task (or of plain label words).

    Args:
        task_or_words: a :class:`Task` (its label words and its template's answer prefix) or a
            sequence of label words.
        tokenizer: a Hugging Face tokenizer (``tokenizer(text, add_special_tokens=False)``).
        prefix: what precedes each word (default: the task template's, or ``" "``).
        context: optionally a prompt the labels continue; then each label's tokens must be
            what the tokenizer produces for ``context + prefix + word`` after ``context``'s own
            tokens (no merge across the boundary).

    Raises:
        LabelTokenError: a word with no tokens, a word whose first token is the unknown token,
            two words sharing a first token (both named, and the token), or a boundary merge.
    """
    if isinstance(task_or_words, Task):
        words = task_or_words.label_words
        prefix = task_or_words.template.label_prefix if prefix is None else prefix
    else:
        words = tuple(task_or_words)
        prefix = " " if prefix is None else prefix
    if len(words) < 2:
        raise LabelTokenError(f"need at least 2 label words; got {list(words)}")
    sequences = label_sequences(words, tokenizer, prefix=prefix)
    unk = getattr(tokenizer, "unk_token_id", None)
    owner: dict[int, str] = {}
    for word, seq in zip(words, sequences, strict=True):
        if not seq:
            raise LabelTokenError(f"label {word!r} tokenizes to no tokens (as {prefix + word!r})")
        if unk is not None and seq[0] == unk:
            raise LabelTokenError(
                f"label {word!r} is not in the tokenizer's vocabulary: its first token is the "
                f"unknown token {_token_str(tokenizer, unk)}; choose another label word"
            )
        if seq[0] in owner:
            raise LabelTokenError(
                f"labels {owner[seq[0]]!r} and {word!r} share their first token {seq[0]} "
                f"({_token_str(tokenizer, seq[0])}), so first-token scoring cannot tell them "
                "apart; choose label words whose first tokens differ"
            )
        owner[seq[0]] = word
    if context is not None:
        head = _encode(tokenizer, context)
        for word, seq in zip(words, sequences, strict=True):
            joint = _encode(tokenizer, context + prefix + word)
            if joint[: len(head)] != head or tuple(joint[len(head) :]) != seq:
                raise LabelTokenError(
                    f"label {word!r} tokenizes differently after the prompt than alone "
                    f"({joint[len(head) :]} vs {list(seq)}); the prompt's last token merges with "
                    "the label, so end the template's query before the label's prefix"
                )
    return LabelTokens(
        words=tuple(prefix + w for w in words),
        first_ids=tuple(seq[0] for seq in sequences),
        sequences=sequences,
        multi_token=tuple(w for w, seq in zip(words, sequences, strict=True) if len(seq) > 1),
    )

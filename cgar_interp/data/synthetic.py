"""A synthetic task family with controllable difficulty, where zero-shot is at chance.

Every text is a short run of nonsense words; one of them is a *key* word that determines the
class, the others are fillers shared by all classes. Label words are ordinary English words with
no relation to the texts, so nothing but the demonstrations can tell the model which label goes
with which key: zero-shot accuracy is at chance (1 / n_classes up to the model's label prior),
and in-context learning has to retrieve the key -> label association from the context.

Difficulty knobs:

- ``n_classes``: more labels to choose from (chance = 1 / n_classes);
- ``keys_per_class``: distinct key words per class; with more keys than shots per class, a
  query's key is often absent from its demonstrations, so the mapping cannot be copied;
- ``n_fillers``: filler words per text around the key (more distraction).

>>> task = synthetic_task(n_classes=3, n_per_class=4, seed=1)
>>> task.n_classes, len(task.examples), task.family is None
(3, 12, True)
>>> synthetic_task(n_classes=3, n_per_class=4, seed=1) == task
True
"""

from __future__ import annotations

import random

from .tasks import Example, PromptTemplate, Task, TaskError

LABEL_WORDS = (
    "apple", "river", "cloud", "stone", "green", "table",
    "music", "horse", "paper", "light", "water", "chair",
)  # fmt: skip
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
TEMPLATE = PromptTemplate("Input: {text}\nLabel:")


def _nonsense_words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct two-syllable nonsense words (consonant-vowel syllables)."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        word = rng.choice(syllables) + rng.choice(syllables) + rng.choice(CONSONANTS)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def synthetic_task(
    n_classes: int = 2,
    n_per_class: int = 32,
    *,
    keys_per_class: int = 1,
    n_fillers: int = 2,
    seed: int = 0,
) -> Task:
    """A seeded key-word -> arbitrary-label task (see the module docs for the knobs).

    Args:
        n_classes: number of classes, 2..12.
        n_per_class: examples per class (balanced).
        keys_per_class: distinct key words per class (>= 1).
        n_fillers: filler words per text (>= 0).
        seed: everything (words, label words, texts) follows from it.
    """
    if not 2 <= n_classes <= len(LABEL_WORDS):
        raise TaskError(f"n_classes must be 2..{len(LABEL_WORDS)}; got {n_classes}")
    if n_per_class < 1 or keys_per_class < 1 or n_fillers < 0:
        raise TaskError(
            "need n_per_class >= 1, keys_per_class >= 1, n_fillers >= 0; got "
            f"{n_per_class}, {keys_per_class}, {n_fillers}"
        )
    rng = random.Random(f"cgar-synthetic|{seed}")
    n_filler_words = max(8, 3 * n_fillers)
    words = _nonsense_words(rng, n_classes * keys_per_class + n_filler_words)
    keys = [words[c * keys_per_class : (c + 1) * keys_per_class] for c in range(n_classes)]
    fillers = words[n_classes * keys_per_class :]
    label_words = tuple(rng.sample(LABEL_WORDS, n_classes))
    examples: list[Example] = []
    seen: set[str] = set()
    for c in range(n_classes):
        made = attempts = 0
        while made < n_per_class:
            attempts += 1
            if attempts > 1000 * n_per_class:
                raise TaskError(
                    f"cannot make {n_per_class} distinct texts per class with {n_fillers} "
                    f"fillers and {keys_per_class} key(s) per class; raise n_fillers or "
                    "keys_per_class"
                )
            text_words = rng.sample(fillers, n_fillers)
            text_words.insert(rng.randrange(n_fillers + 1), keys[c][made % keys_per_class])
            text = " ".join(text_words)
            if text in seen:
                continue
            seen.add(text)
            examples.append(Example(f"syn-{c}-{made:03d}", text, c))
            made += 1
    name = f"synthetic-c{n_classes}-k{keys_per_class}-f{n_fillers}-s{seed}"
    return Task(
        name=name,
        classes=tuple(f"class{c}" for c in range(n_classes)),
        label_words=label_words,
        template=TEMPLATE,
        examples=tuple(examples),
        source=(
            f"synthetic:n_classes={n_classes} n_per_class={n_per_class} "
            f"keys_per_class={keys_per_class} n_fillers={n_fillers} seed={seed}"
        ),
        text_field="nonsense words",
    )

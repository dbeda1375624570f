"""The prompt builder: determinism, disjoint splits and pools, pinning, context length."""

from __future__ import annotations

import pytest

from cgar_interp.config import ConfigError
from cgar_interp.data import (
    ContextLengthError,
    PromptConfig,
    TaskError,
    build_prompts,
    load_task,
    make_task,
    prompt_lengths,
)


@pytest.fixture(scope="module")
def sst2():
    return load_task("sst2-mini")


@pytest.fixture(scope="module")
def trec():
    return load_task("trec-mini")


def test_same_seed_same_prompts_different_seed_different_demos(sst2):
    config = PromptConfig(k=1, n_fit=8, n_eval=16, seed=3)
    first, again = build_prompts(sst2, config), build_prompts(sst2, config)
    assert first == again
    other = build_prompts(sst2, PromptConfig(k=1, n_fit=8, n_eval=16, seed=4))
    assert [p.demo_ids for p in first.get("icl")] != [p.demo_ids for p in other.get("icl")]
    assert first.query_ids != other.query_ids


def test_fit_eval_and_demo_pool_are_disjoint(trec):
    config = PromptConfig(k=2, n_fit=12, n_eval=30, demo_pool_per_class=5, seed=1)
    prompts = build_prompts(trec, config)
    fit, ev, pool = set(prompts.fit_ids), set(prompts.eval_ids), set(prompts.demo_pool_ids)
    assert len(fit) == 12 and len(ev) == 30 and len(pool) == 5 * 6
    assert not fit & ev and not pool & (fit | ev)
    for p in prompts.get("icl"):
        assert set(p.demo_ids) <= pool
        assert p.query_id not in p.demo_ids
        assert sorted(p.demo_labels) == sorted(list(range(6)) * 2)  # k=2 per class
    assert [p.split for p in prompts.get("zero")] == ["fit"] * 12 + ["eval"] * 30
    splits = prompts.split_indices()
    assert splits == {"fit": list(range(12)), "eval": list(range(12, 42))}
    # queries come in balanced rounds: the 12 fit queries hold 2 of each class
    assert sorted(prompts.gold("fit")) == sorted(list(range(6)) * 2)


def test_zero_and_icl_prompts_end_with_the_same_query(sst2):
    prompts = build_prompts(sst2, PromptConfig(k=1, n_fit=4, n_eval=12))
    for zero, icl in zip(prompts.get("zero"), prompts.get("icl"), strict=True):
        assert zero.query_id == icl.query_id and zero.gold == icl.gold
        assert zero.text == zero.query == f"Review: {zero.query_text}\nSentiment:"
        assert icl.text == icl.prefix + zero.text and icl.prefix.endswith("\n")
        assert icl.label == sst2.label_words[icl.gold]


def test_pinned_demos_give_one_common_prefix(sst2):
    prompts = build_prompts(sst2, PromptConfig(k=2, n_fit=4, n_eval=8, pinned=True))
    prefix = prompts.common_prefix
    assert prefix is not None and prefix.count("Sentiment:") == 4
    assert len({p.demo_ids for p in prompts.get("icl")}) == 1
    assert prompts.manifest()["pinned_demo_ids"] == list(prompts.get("icl")[0].demo_ids)
    per_query = build_prompts(sst2, PromptConfig(k=2, n_fit=4, n_eval=8))
    assert per_query.common_prefix is None


def test_explicit_pinned_ids_are_used_in_order_and_never_queried(sst2):
    ids = ("sst2m-005", "sst2m-000")
    prompts = build_prompts(sst2, PromptConfig(n_fit=4, n_eval=None, pinned_ids=ids))
    assert all(p.demo_ids == ids for p in prompts.get("icl"))
    assert not set(ids) & set(prompts.query_ids)
    assert len(prompts.query_ids) == len(sst2.examples) - 2
    with pytest.raises(TaskError, match=r"pinned_ids not in task 'sst2-mini': \['nope'\]"):
        build_prompts(sst2, PromptConfig(pinned_ids=("nope",)))


def test_fixed_class_order_and_flipped_labels(trec):
    prompts = build_prompts(
        trec,
        PromptConfig(k=2, n_fit=2, n_eval=6, shuffle_order=False, label_controls=("icl_flipped",)),
    )
    for icl, flipped in zip(prompts.get("icl"), prompts.get("icl_flipped"), strict=True):
        assert icl.demo_labels == (0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5)
        assert flipped.demo_ids == icl.demo_ids and flipped.query == icl.query
        assert all(a != b for a, b in zip(icl.demo_labels, flipped.demo_labels, strict=True))
        # a consistent relabelling: each class is shown under one other label
        assert len(set(zip(icl.demo_labels, flipped.demo_labels, strict=True))) == 6
    assert prompts.kinds == ("zero", "icl", "icl_flipped")


def test_frame_and_manifest(sst2):
    config = PromptConfig(k=1, n_fit=4, n_eval=6, seed=2)
    prompts = build_prompts(sst2, config)
    frame = prompts.to_frame()
    assert len(frame) == 20 and set(frame.kind) == {"zero", "icl"}
    assert list(frame.columns[:7]) == [
        "task", "query_id", "kind", "split", "gold", "label", "n_demos",
    ]  # fmt: skip
    assert frame.groupby("kind").n_demos.max().to_dict() == {"icl": 2, "zero": 0}
    manifest = prompts.manifest()
    assert manifest["config"] == config.to_dict() and manifest["config"]["seed"] == 2
    assert manifest["task"]["name"] == "sst2-mini"
    assert manifest["n_queries"] == {"fit": 4, "eval": 6}
    assert PromptConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown key 'shots'"):
        PromptConfig.from_dict({"shots": 1})


def test_sizes_that_do_not_fit_are_errors(sst2):
    with pytest.raises(TaskError, match=r"has 112 queries .*n_fit=100 \+ n_eval=48 does not fit"):
        build_prompts(sst2, PromptConfig(n_fit=100, n_eval=48))
    with pytest.raises(
        TaskError, match=r"demo_pool_per_class \(1\) must be >= the largest k \(2\)"
    ):
        PromptConfig(k=2, demo_pool_per_class=1)
    with pytest.raises(TaskError, match=r"k \(demonstrations per class\) must be >= 1"):
        PromptConfig(k=0)
    with pytest.raises(TaskError, match=r"class 'negative' .* has 64 examples; 64 are reserved"):
        build_prompts(sst2, PromptConfig(demo_pool_per_class=64))


def _toy_task(n: int = 12):
    words, labels = ["good", "bad"], ["positive", "negative"]
    rows = [(f"a {'very ' * (i % 3)}{words[i % 2]} film n{i}", labels[i % 2]) for i in range(n)]
    return make_task(rows, name="toy", family="sst2", source="test")


def test_context_overflow_is_an_error_naming_length_and_limit(word_tokenizer):
    task = _toy_task()
    config = PromptConfig(k=2, n_fit=2, n_eval=2, demo_pool_per_class=2)
    built = build_prompts(task, config)
    longest_zero = max(prompt_lengths(built.get("zero"), word_tokenizer))
    longest_icl = max(prompt_lengths(built.get("icl"), word_tokenizer))
    assert longest_zero < longest_icl
    ok = build_prompts(task, config, tokenizer=word_tokenizer, n_ctx=longest_icl)
    assert ok == built
    limit = longest_zero + 10
    with pytest.raises(
        ContextLengthError,
        match=rf"icl prompt of query .* is {longest_icl} tokens, longer than the model's context "
        rf"of {limit} tokens .*on_overflow='drop_demos'",
    ):
        build_prompts(task, config, tokenizer=word_tokenizer, n_ctx=limit)
    with pytest.raises(ContextLengthError, match=r"zero-shot prompt .* the query alone"):
        build_prompts(task, config, tokenizer=word_tokenizer, n_ctx=longest_zero - 1)


def test_context_overflow_can_drop_demos_with_a_warning(word_tokenizer):
    task = _toy_task()
    config = PromptConfig(k=2, n_fit=2, n_eval=2, demo_pool_per_class=2, on_overflow="drop_demos")
    built = build_prompts(task, config)
    limit = max(prompt_lengths(built.get("zero"), word_tokenizer)) + 10
    with pytest.warns(UserWarning, match=r"exceeded the context of .* dropped up to"):
        fitted = build_prompts(task, config, tokenizer=word_tokenizer, n_ctx=limit)
    assert max(prompt_lengths(fitted.prompts, word_tokenizer)) <= limit
    for before, after in zip(built.get("icl"), fitted.get("icl"), strict=True):
        assert 0 < len(after.demo_ids) < len(before.demo_ids)
        assert before.demo_ids[-len(after.demo_ids) :] == after.demo_ids  # earliest dropped
        assert after.text.endswith(before.query)
    assert fitted.notes and fitted.manifest()["notes"] == list(fitted.notes)
    pinned = build_prompts(
        task, PromptConfig(k=2, n_fit=2, n_eval=2, demo_pool_per_class=2, pinned=True,
                           on_overflow="drop_demos"),
    )  # fmt: skip
    with pytest.warns(UserWarning):
        pinned_fit = build_prompts(task, pinned.config, tokenizer=word_tokenizer, n_ctx=limit)
    assert pinned_fit.common_prefix is not None


@pytest.mark.parametrize("name", ["sst2-mini", "trec-mini", "agnews-mini"])
def test_demo_block_tokens_are_a_prefix_of_the_prompt_tokens(embedded_tokenizer, name):
    """Prefix reuse (KV cache of pinned demonstrations) needs ids(prefix) + ids(query)."""
    prompts = build_prompts(load_task(name), PromptConfig(n_fit=4, n_eval=4, pinned=True))

    def ids(text):
        return embedded_tokenizer(text, add_special_tokens=False)["input_ids"]

    for p in prompts.get("icl"):
        assert ids(p.text) == ids(p.prefix) + ids(p.query)

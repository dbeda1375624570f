"""Hypothesis: the suite parser and metrics never fail other than with their documented errors."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cgar_interp.config import ConfigError
from cgar_interp.metrics import query_metrics
from cgar_interp.suite import SuiteConfig, parse_suite

KEYS = [
    "name",
    "model",
    "tasks",
    "shots",
    "n_fit",
    "n_eval",
    "seed",
    "batch_size",
    "n_boot",
    "pinned_demos",
    "dtype",
    "bogus",
    "lambda",
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.integers(-3, 40), st.text(max_size=5), st.floats()), max_size=4),
)
PROBE = st.fixed_dictionaries(
    {"kind": st.sampled_from(["context_gate", "task_vectors", "nope", 3])},
    optional={
        "lambdas": st.lists(
            st.one_of(st.floats(allow_nan=True), st.integers(-2, 5), st.text(max_size=3)),
            max_size=4,
        ),
        "modes": st.lists(st.sampled_from(["decode", "patch", "x"]), max_size=3),
        "context_layers": st.one_of(
            st.sampled_from(["paper", "all", "mid"]), st.lists(st.integers(-40, 40), max_size=3)
        ),
        "layers": st.one_of(
            st.sampled_from(["all", "last", "x"]), st.lists(st.integers(-40, 40), max_size=3)
        ),
        "vectors": st.lists(
            st.sampled_from(["context", "random", "flipped", "random_labels", "shuffled", "y"]),
            max_size=3,
        ),
    },
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6), st.lists(PROBE, max_size=3))
def test_suite_parser_accepts_or_raises_config_error(top, probes):
    data = {**top, "probe": probes}
    try:
        suite = parse_suite(data)
    except ConfigError:
        return
    assert isinstance(suite, SuiteConfig) and suite.probes
    for probe in suite.probes:
        try:
            layers = probe.config.needed_layers(30)
        except ValueError:
            continue
        assert all(0 <= layer <= 30 for layer in layers)
    for probe in suite.probes:
        for lam in getattr(probe.config, "lambdas", ()):
            assert math.isfinite(lam) and lam >= 0


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(2, 6),
    st.integers(0, 2**31 - 1),
    st.floats(0.01, 100.0),
)
def test_metrics_stay_probabilities(n, k, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 40, generator=gen) * scale
    labels = torch.randperm(40, generator=gen)[:k]
    gold = torch.randint(0, k, (n,), generator=gen)
    out = query_metrics(logits, labels, gold)
    for name in ("vocab_correct", "label_correct", "label_mass", "gold_mass"):
        assert ((out[name] >= 0) & (out[name] <= 1 + 1e-12)).all(), name
    assert (out["gold_mass"] <= out["label_mass"] + 1e-12).all()
    assert (out["entropy"] >= -1e-9).all() and (out["entropy"] <= math.log(40) + 1e-9).all()
    assert (out["label_eff"] >= 1 - 1e-9).all() and (out["label_eff"] <= k + 1e-9).all()

"""Claim 4 against controls from the model: the per-query energies of the subspace probe
(recomputed from the tiny Llama's own hidden states), the frequency-matched non-label tokens,
and the ledger's verdicts on per-query tables built to give them."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from cgar_interp.claims.base import INCONCLUSIVE, NOT_SUPPORTED, PENDING, SUPPORTED
from cgar_interp.claims.ledger import build_ledger
from cgar_interp.claims.subspace import (
    NONLABEL_MARGIN,
    RANDOM_LABELS_MARGIN,
    SUBSPACE_CLAIM,
    claim_subspace,
)
from cgar_interp.probes import ProbeContext, get_probe
from cgar_interp.probes.protocol import RANDOM_LABELS
from cgar_interp.probes.subspace import (
    SubspaceConfig,
    frequency_matched_tokens,
    query_energies,
)

from .probe_helpers import synthetic_inputs

# --------------------------------------------------------------------------------------------
# the frequency-matched non-label tokens


class FakeTokenizer:
    """A byte-level-BPE-like vocabulary: ``Ġ`` marks a leading space."""

    def __init__(self, vocab, special=(0,)):
        self.vocab = list(vocab)
        self.all_special_ids = list(special)

    def convert_ids_to_tokens(self, i):
        return self.vocab[i] if 0 <= i < len(self.vocab) else None


VOCAB = [
    "<|begin|>",  # 0 special
    "Ġthe",  # 1
    "Ġand",  # 2
    "ing",  # 3: no leading space
    "Ġ12",  # 4: digits
    "ĠPositive",  # 5: a label's own word in another case
    "Ġpositive",  # 6: label
    "Ġnegative",  # 7: label
    "Ġ,",  # 8: punctuation
    "Ġhouse",  # 9
    "Ġcar",  # 10
    "Ġdog",  # 11
]


def test_frequency_matched_tokens_are_the_nearest_word_like_non_labels():
    ids, texts = frequency_matched_tokens([6, 7], FakeTokenizer(VOCAB), len(VOCAB))
    # label 6: 5 is " Positive" (its own word), 7 a label, 4 digits, 8 punctuation, 3 has no
    # leading space; 9 (" house") at distance 3. Label 7: then 10 (" car"), 9 being taken
    assert ids == (9, 10)
    assert texts == (" house", " car")
    assert len(ids) == 2 and not set(ids) & {6, 7}
    # the lower id wins at equal distance
    vocab = ["<s>", "Ġcat", "Ġyes", "Ġno", "Ġdog"]
    assert frequency_matched_tokens([2], FakeTokenizer(vocab), 5)[0] == (1,)
    # one token per label, distinct, even when the nearest is shared
    assert frequency_matched_tokens([2, 3], FakeTokenizer(vocab), 5)[0] == (1, 4)


def test_frequency_matched_tokens_on_the_tiny_tokenizer(tiny_handles):
    tok = tiny_handles["hf"].tokenizer
    ids, texts = frequency_matched_tokens([10, 11, 12], tok, 128)
    # ids 0-2 are special; labels 10-12 ("w7".."w9"): nearest non-labels, distinct
    assert ids == (9, 13, 14)
    assert texts == tuple(tok.convert_ids_to_tokens(i) for i in ids) == ("w6", "w10", "w11")
    # id-only model: nearest non-label ids, no text
    assert frequency_matched_tokens([10, 11], None, 128) == ((9, 12), ("", ""))


def test_frequency_matched_tokens_fail_loudly():
    with pytest.raises(ValueError, match="frequency-matched control"):
        frequency_matched_tokens([1, 2], FakeTokenizer(["<s>", "Ġyes", "Ġno"]), 3)


# --------------------------------------------------------------------------------------------
# the probe on the tiny Llama


@pytest.fixture(scope="module")
def energy_run(tiny_handles):
    inputs = synthetic_inputs(n=12)
    ctx = ProbeContext(tiny_handles["hf"], inputs, (0, 1, 2), n_boot=60)
    config = SubspaceConfig(cv_folds=2, n_random=20)
    table = get_probe("subspace").run(config, ctx)["subspace"]
    return inputs, table, ctx.take_query_table()


def _last_hidden(model, batch, i, layer):
    ids = batch.ids[i, : batch.lengths[i]][None]
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer][0, -1].double().numpy()


def _share(v, rows):
    """|P v|^2 / |v|^2 with P the least-squares projection on the span of ``rows`` [r, d]."""
    coef, *_ = np.linalg.lstsq(rows.T, v, rcond=None)
    return float(np.sum((rows.T @ coef) ** 2) / np.sum(v**2))


def test_label_and_nonlabel_energy_of_one_query_match_a_plain_forward(energy_run, tiny_handles):
    inputs, table, queries = energy_run
    model = tiny_handles["hf"].backend.hf_model
    w_u = model.lm_head.weight.detach().double().numpy()
    control = json.loads(table.nonlabel_ids.iloc[0])
    assert control == [9, 13, 14]
    assert json.loads(table.nonlabel_tokens.iloc[0]) == ["w6", "w10", "w11"]
    layer, query = 1, int(inputs.eval[2])
    shift = _last_hidden(model, inputs.icl, query, layer) - _last_hidden(
        model, inputs.zero, query, layer
    )
    got = queries[(queries.layer == layer) & (queries["query"] == query)].set_index("metric")
    assert (got.split == "eval").all() and (got.subject == "shift").all()
    label = _share(shift, w_u[inputs.label_ids.numpy()])
    nonlabel = _share(shift, w_u[control])
    assert got.value["label_energy"] == pytest.approx(label, rel=1e-5)
    assert got.value["nonlabel_energy"] == pytest.approx(nonlabel, rel=1e-5)
    assert 0 < label < 1 and 0 < nonlabel < 1


def test_energy_rows_cover_the_eval_queries_and_their_aggregate(energy_run):
    inputs, table, queries = energy_run
    ev = queries[queries.split == "eval"]
    assert set(ev["query"]) == set(inputs.eval.tolist())
    assert set(queries[queries.split == "fit"]["query"]) == set(inputs.fit.tolist())
    assert 0 not in set(queries.layer)  # zero shift at the embedding: undefined share
    for metric in ("label_energy", "nonlabel_energy"):
        per = ev[(ev.layer == 2) & (ev.metric == metric)].value
        row = table[(table.layer == 2) & (table.subject == "shift") & (table.metric == metric)]
        assert row.value.iloc[0] == pytest.approx(per.mean())
        assert int(row.n.iloc[0]) == len(inputs.eval)
    # the aggregate table's other rows (the Haar band) are still there for the figure
    assert {"angle_min_deg", "cbar_label_energy"} <= set(table[table.subject == "random"].metric)


def test_random_label_energy_of_one_query_matches_a_plain_forward(tiny_handles):
    inputs = synthetic_inputs(n=12)
    config = SubspaceConfig(cv_folds=2, n_random=20)
    ctx = ProbeContext.for_probes(tiny_handles["hf"], inputs, [config], n_boot=60)
    assert any(read.kind == RANDOM_LABELS for read in ctx.reads)  # read in the shared pass
    get_probe("subspace").run(config, ctx)
    queries = ctx.take_query_table()
    model = tiny_handles["hf"].backend.hf_model
    w_u = model.lm_head.weight.detach().double().numpy()
    layer, query = 1, int(inputs.eval[3])
    shift = _last_hidden(model, inputs.icl_random, query, layer) - _last_hidden(
        model, inputs.zero, query, layer
    )
    got = queries[
        (queries.layer == layer)
        & (queries["query"] == query)
        & (queries.metric == "random_label_energy")
    ]
    assert got.split.tolist() == ["eval"]
    expected = _share(shift, w_u[inputs.label_ids.numpy()])
    assert got.value.iloc[0] == pytest.approx(expected, rel=1e-5)
    rows = claim_subspace({"subspace_queries": queries}, {"architecture": {"n_layers": 2}})
    assert {r.claim_id: r.kind for r in rows} == {"4a": "difference", "4b": "difference"}


def test_query_energies_random_label_shift():
    rng = np.random.default_rng(0)
    h_zero, h_icl = rng.standard_normal((5, 8)), rng.standard_normal((5, 8))
    h_rand = rng.standard_normal((2, 8))
    label_q = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    control_q = np.linalg.qr(rng.standard_normal((8, 2)))[0]
    out = query_energies(h_zero, h_icl, h_rand, torch.tensor([3, 1]), label_q, control_q)
    r = h_rand[0] - h_zero[3]
    expected = float(np.sum((label_q.T @ r) ** 2) / (r @ r))
    assert out["random_label_energy"][0] == pytest.approx(expected)
    s = h_icl[1] - h_zero[1]
    assert out["nonlabel_energy"][1] == pytest.approx(
        float(np.sum((control_q.T @ s) ** 2) / (s @ s))
    )
    assert query_energies(h_zero, h_zero, None, torch.tensor([0]), label_q, control_q) is None


def test_config_asks_for_the_random_label_prompts():
    assert RANDOM_LABELS in SubspaceConfig().prompt_kinds()
    assert RANDOM_LABELS not in SubspaceConfig(random_labels=False).prompt_kinds()
    inputs = synthetic_inputs(n=6)
    (read,) = SubspaceConfig(layers=(0, 2)).shared_reads(inputs, 2)
    assert read.kind == RANDOM_LABELS and read.sites == ("resid.2",)  # no shift at layer 0
    assert read.rows == tuple(inputs.eval.tolist())
    assert SubspaceConfig(random_labels=False).shared_reads(inputs, 2) == ()
    # a run without those prompts reads none
    assert SubspaceConfig().shared_reads(synthetic_inputs(n=6, controls=False), 2) == ()
    with pytest.raises(ValueError, match="random_labels"):
        SubspaceConfig(random_labels="yes")


# --------------------------------------------------------------------------------------------
# the ledger on per-query tables built to give a verdict


def query_rows(task, layer, metric, values, split="eval", start=0):
    return pd.DataFrame(
        {
            "task": task,
            "probe": "subspace",
            "layer": layer,
            "subject": "shift",
            "metric": metric,
            "query": np.arange(start, start + len(values)),
            "split": split,
            "value": np.asarray(values, float),
        }
    )


def synthetic_queries(label, nonlabel, random=None, task="t", layers=(1, 2)):
    parts = []
    for layer in layers:
        parts.append(query_rows(task, layer, "label_energy", label))
        parts.append(query_rows(task, layer, "nonlabel_energy", nonlabel))
        if random is not None:
            parts.append(query_rows(task, layer, "random_label_energy", random))
        # fit queries (other ids) never enter the verdict
        parts.append(query_rows(task, layer, "label_energy", np.zeros(4), "fit", start=1000))
        parts.append(query_rows(task, layer, "nonlabel_energy", np.ones(4), "fit", start=1000))
    return pd.concat(parts, ignore_index=True)


MANIFEST = {"architecture": {"n_layers": 2}}


def ledger(queries, table=None):
    tables = {"subspace_queries": queries}
    if table is not None:
        tables["subspace"] = table
    led = build_ledger(tables, MANIFEST, claims=[SUBSPACE_CLAIM], n_boot=4000)
    return led.set_index("claim_id")


def test_label_energy_clearly_above_the_control_is_supported():
    rng = np.random.default_rng(1)
    label = 0.20 + 0.03 * rng.standard_normal(40)
    nonlabel = 0.05 + 0.01 * rng.standard_normal(40)
    random = 0.08 + 0.02 * rng.standard_normal(40)
    led = ledger(synthetic_queries(label, nonlabel, random))
    a, b = led.loc["4a"], led.loc["4b"]
    assert a.verdict == SUPPORTED and b.verdict == SUPPORTED
    # value / control / difference are the eval queries' own means (the fit rows left out)
    assert a.value == pytest.approx(label.mean()) and a.control_value == pytest.approx(
        nonlabel.mean()
    )
    assert a["diff"] == pytest.approx(np.mean(label - nonlabel))
    assert b.control_value == pytest.approx(random.mean())
    assert a["n"] == 40 and a.selected_on == "pre-specified" and a.key == "label_vs_nonlabel"
    assert b.key == "true_vs_random_labels" and "layer 2" in a.reads
    assert "paired bootstrap over the 40 queries" in a.method
    assert a.margin == NONLABEL_MARGIN and b.margin == RANDOM_LABELS_MARGIN
    assert a.diff_low > 0 and a.ci_low <= a.value <= a.ci_high
    assert "answer format" in b.note


def test_equal_energies_are_not_supported():
    rng = np.random.default_rng(2)
    base = 0.1 + 0.02 * rng.standard_normal(60)
    led = ledger(synthetic_queries(base, base + 1e-4 * rng.standard_normal(60), base))
    for cid in ("4a", "4b"):
        row = led.loc[cid]
        assert row.verdict == NOT_SUPPORTED, (cid, row.diff_low, row.diff_high)
        assert row.diff_high < row.margin


def test_a_small_noisy_advantage_is_inconclusive():
    rng = np.random.default_rng(3)
    label = 0.1 + 0.05 * rng.standard_normal(12)
    nonlabel = label - 0.01 + 0.05 * rng.standard_normal(12)
    row = ledger(synthetic_queries(label, nonlabel)).loc["4a"]
    assert row.verdict == INCONCLUSIVE
    assert row.diff_low < 0 < row.diff_high and row.diff_high > NONLABEL_MARGIN
    assert math.isfinite(row.n_needed)


def test_the_control_can_fail():
    # the shifts favour the non-label tokens: not supported, which a Haar control never is
    rng = np.random.default_rng(4)
    label = 0.05 + 0.01 * rng.standard_normal(30)
    row = ledger(synthetic_queries(label, label + 0.05)).loc["4a"]
    assert row.verdict == NOT_SUPPORTED and row.diff_high < 0


def test_without_random_label_prompts_4b_is_pending():
    rows = claim_subspace({"subspace_queries": synthetic_queries([0.2] * 5, [0.1] * 5)}, MANIFEST)
    (b,) = [r for r in rows if r.claim_id == "4b"]
    assert b.kind == "pending" and b.verdict == PENDING and "random_labels" in b.note
    led = ledger(synthetic_queries([0.2] * 5, [0.1] * 5))
    assert led.loc["4b"].verdict == PENDING


def test_reads_the_prespecified_layer_only():
    # layer 1 would support, layer 2 = L does not: the verdict reads L
    q = pd.concat(
        [
            synthetic_queries([0.3] * 20, [0.05] * 20, layers=(1,)),
            synthetic_queries(np.linspace(0.1, 0.11, 20), np.linspace(0.1, 0.11, 20), layers=(2,)),
        ],
        ignore_index=True,
    )
    row = ledger(q).loc["4a"]
    assert row.verdict == NOT_SUPPORTED and "layer 2" in row.reads and "L = 2" in row.test
    # a manifest of 4 layers: read at the last one the table has, and say so
    rows = claim_subspace({"subspace_queries": q}, {"architecture": {"n_layers": 4}})
    (a,) = [r for r in rows if r.claim_id == "4a"]
    assert "no rows at layer 4; read at layer 2" in a.note


def test_haar_numbers_and_control_tokens_go_in_the_note():
    table = pd.DataFrame(
        [
            {"task": "t", "layer": 2, "subject": s, "metric": m, "value": v, "readout": "unembed"}
            for s, m, v in (
                ("shift", "angle_min_deg", 60.0),
                ("random", "angle_min_deg", 85.0),
                ("shift", "cbar_label_energy", 0.3),
                ("random", "cbar_label_energy", 0.004),
            )
        ]
    )
    table["nonlabel_ids"] = json.dumps([9, 13])
    table["nonlabel_tokens"] = json.dumps([" house", " car"])
    rows = claim_subspace(
        {"subspace": table, "subspace_queries": synthetic_queries([0.2] * 5, [0.1] * 5)},
        MANIFEST,
    )
    (a,) = [r for r in rows if r.claim_id == "4a"]
    assert "descriptive only" in a.note and "60.0 deg" in a.note and "0.0040 = K/d" in a.note
    assert "9, 13" in a.control and "' house'" in a.control


def test_an_old_run_without_per_query_values_falls_back_to_the_haar_rows():
    table = pd.DataFrame(
        [
            {
                "task": "t",
                "probe": "subspace",
                "layer": 2,
                "subject": s,
                "metric": m,
                "value": v,
                "n": 64,
                "ci_low": v - 0.5 if m == "angle_min_deg" else v * 0.9,
                "ci_high": v + 0.5 if m == "angle_min_deg" else v * 1.1,
                "top_k": 2,
                "readout": "unembed",
            }
            for s, m, v in (
                ("shift", "angle_min_deg", 60.0),
                ("random", "angle_min_deg", 85.0),
                ("shift", "cbar_label_energy", 0.3),
                ("random", "cbar_label_energy", 0.004),
            )
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        led = build_ledger({"subspace": table}, MANIFEST, claims=[SUBSPACE_CLAIM])
    led = led.set_index("claim_id")
    assert led.loc["4a"].key == "haar_angle_min_deg"
    assert "normal approximation" in led.loc["4a"].method
    assert "Old run without per-query values" in led.loc["4a"].note
    assert led.loc["4a"].verdict == SUPPORTED  # the Haar control: easy to beat


def test_the_subspace_figure_draws_the_claim_4_shares(energy_run):
    from cgar_interp.figures import figures_for

    _, table, _ = energy_run
    fig = figures_for({"subspace": table})["subspace-synthetic-tiny"]
    traces = {t.name: t for t in fig.data}
    assert {"shift: label_energy", "shift: nonlabel_energy"} <= set(traces)
    per = table[(table.metric == "label_energy") & (table.subject == "shift")].sort_values("layer")
    np.testing.assert_allclose(traces["shift: label_energy"].y, per.value)


def test_a_sweep_is_noted_and_a_run_of_one_k_is_not():
    one = synthetic_queries([0.2] * 5, [0.1] * 5).assign(shots=4)
    (a,) = [r for r in claim_subspace({"subspace_queries": one}, MANIFEST) if r.claim_id == "4a"]
    assert "k-shot sweep" not in a.note
    small = synthetic_queries([0.1] * 5, [0.1] * 5).assign(shots=1)
    sweep = pd.concat([small, one], ignore_index=True)
    (a,) = [r for r in claim_subspace({"subspace_queries": sweep}, MANIFEST) if r.claim_id == "4a"]
    assert "read at the largest k = 4" in a.note and a.value == pytest.approx(0.2)

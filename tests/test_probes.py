"""Context-gate and task-vector probes on the tiny Llama, checked against independent code."""

import pytest
import torch

from cgar_interp.config import ConfigError, build
from cgar_interp.probes import ProbeContext, get_probe
from cgar_interp.probes.context_gate import ContextGateConfig
from cgar_interp.probes.task_vectors import TaskVectorConfig

from .probe_helpers import synthetic_inputs

LAMS = (0.0, 0.5, 3.0)


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs(n=12)


@pytest.fixture(scope="module")
def gate_tables(tiny_handles, inputs):
    config = ContextGateConfig(context_layers=(1, 2), lambdas=LAMS)
    ctx = ProbeContext(tiny_handles["transformer_lens"], inputs, config.needed_layers(2), n_boot=50)
    return get_probe("context_gate").run(config, ctx)


def values(table, **keys):
    sel = table
    for key, value in keys.items():
        sel = sel[sel[key] == value]
    return dict(zip(sel.metric, sel.value, strict=True))


def test_lambda_zero_equals_zero_shot_in_both_modes(gate_tables):
    table = gate_tables["context_gate"]
    zero = values(table, mode="baseline", vector="zero_shot")
    for mode in ("decode", "patch"):
        for vector in ("context", "random", "flipped", "random_labels"):
            for c in (1, 2):
                got = values(table, mode=mode, vector=vector, c_layer=c, lam=0.0)
                for metric, value in zero.items():
                    # decode factors the norm out of the unembedding, patch runs the KV-cache
                    # path: both agree with the model's own logits at float rounding
                    tol = {"rel": 1e-6, "abs": 1e-7}
                    assert got[metric] == pytest.approx(value, **tol), (mode, vector, c, metric)


def test_patch_at_the_last_layer_is_decode_at_the_last_layer(gate_tables):
    table = gate_tables["context_gate"]
    for lam in LAMS:
        dec = values(table, mode="decode", vector="context", q_layer=2, c_layer=2, lam=lam)
        pat = values(table, mode="patch", vector="context", c_layer=2, lam=lam)
        for metric in dec:
            assert pat[metric] == pytest.approx(dec[metric], rel=1e-6, abs=1e-6), (lam, metric)


def test_gate_changes_something(gate_tables):
    table = gate_tables["context_gate"]
    lo = values(table, mode="patch", vector="context", c_layer=1, lam=0.0)["entropy"]
    hi = values(table, mode="patch", vector="context", c_layer=1, lam=3.0)["entropy"]
    assert abs(hi - lo) > 1e-6


def raw_last_hidden(model, batch, rows, layer):
    """Residual after ``layer`` blocks at each row's last token, by a plain forward hook."""
    module = model.model.embed_tokens if layer == 0 else model.model.layers[layer - 1]
    out = []
    for r in rows.tolist():
        store = {}
        hook = module.register_forward_hook(lambda m, a, o, store=store: store.setdefault("h", o))
        try:
            with torch.no_grad():
                model(batch.ids[r, : batch.lengths[r]][None], use_cache=False)
        finally:
            hook.remove()
        out.append(store["h"][0, -1])
    return torch.stack(out)


def independent_label_mass(model, inputs, c, lam, mode, q=2):
    """Plain transformers, no toolkit code: cbar from hooked residuals, then decode or patch."""
    cbar = (
        raw_last_hidden(model, inputs.icl, inputs.fit, c)
        - raw_last_hidden(model, inputs.zero, inputs.fit, c)
    ).mean(0)
    masses = []
    for r in inputs.eval.tolist():
        if mode == "decode":
            h = raw_last_hidden(model, inputs.zero, torch.tensor([r]), q)[0] + lam * cbar
            with torch.no_grad():
                logits = model.lm_head(model.model.norm(h))
        else:
            module = model.model.embed_tokens if c == 0 else model.model.layers[c - 1]

            def add(m, a, o):
                o = o.clone()
                o[0, -1] += lam * cbar
                return o

            hook = module.register_forward_hook(add)
            try:
                with torch.no_grad():
                    ids = inputs.zero.ids[r, : inputs.zero.lengths[r]][None]
                    logits = model(ids, use_cache=False).logits[0, -1]
            finally:
                hook.remove()
        masses.append(logits.double().softmax(-1)[inputs.label_ids].sum())
    return torch.stack(masses).mean().item()


@pytest.mark.parametrize("mode,c", [("decode", 1), ("decode", 2), ("patch", 1)])
def test_label_mass_matches_an_independent_implementation(
    tiny_handles, inputs, gate_tables, mode, c
):
    model = tiny_handles["hf"].backend.hf_model
    table = gate_tables["context_gate"]
    got = values(table, mode=mode, vector="context", c_layer=c, lam=3.0)["label_mass"]
    expected = independent_label_mass(model, inputs, c, 3.0, mode)
    assert got == pytest.approx(expected, abs=1e-5)


def test_decode_mode_costs_two_forward_passes_per_query(tiny_handles):
    inputs = synthetic_inputs(n=9, controls=False)
    handle = tiny_handles["hf"]
    config = ContextGateConfig(
        context_layers="all",
        query_layers="all",
        lambdas=(0, 0.1, 1, 10, 100),
        modes=("decode",),
        vectors=("context", "random"),
    )
    handle.stats.reset()
    ctx = ProbeContext(handle, inputs, config.needed_layers(2), n_boot=10)
    get_probe("context_gate").run(config, ctx)
    assert handle.stats.forward_rows == 2 * 9
    assert handle.stats.resume_rows == 0


def test_kept_states_make_patch_probes_cost_two_forward_passes_per_query(tiny_handles):
    """Patch mode and task vectors resume the capture pass: no third forward pass."""
    inputs = synthetic_inputs(n=10, controls=False)
    assert len(set(inputs.zero.lengths.tolist())) > 1  # padded batches, per-row positions
    handle = tiny_handles["hf"]
    gate = ContextGateConfig(context_layers=(0, 1, 2), lambdas=LAMS, vectors=("context",))
    tvs = TaskVectorConfig(layers=(0, 1))
    tables = {}
    for keep in (False, True):
        handle.stats.reset()
        # the fit queries' zero-shot caches (where the probes select) are declared reads
        ctx = ProbeContext.for_probes(
            handle, inputs, [gate, tvs], layers=(0, 1, 2), n_boot=0, keep_states=keep
        )
        tables[keep] = (
            get_probe("context_gate").run(gate, ctx)["context_gate"],
            get_probe("task_vectors").run(tvs, ctx)["task_vectors"],
        )
        rows = handle.stats.forward_rows
        assert rows == 2 * 10 + (0 if keep else 2 * len(inputs.eval)), keep
    for before, after in zip(tables[False], tables[True], strict=True):
        assert len(before) == len(after) > 0
        assert before.value.to_numpy() == pytest.approx(after.value.to_numpy(), rel=1e-5, abs=1e-6)


def test_gate_terms_are_raw_label_scores(tiny_handles, inputs, gate_tables):
    """b = W_U h_zero^(q) and g = W_U cbar^(c) at the label tokens, without the final norm."""
    terms = gate_tables["gate_terms"]
    model = tiny_handles["hf"].backend.hf_model
    c, k = 1, 2
    query = int(inputs.eval[0])
    row = terms[(terms.c_layer == c) & (terms["class"] == k) & (terms["query"] == query)].iloc[0]
    cbar = (
        raw_last_hidden(model, inputs.icl, inputs.fit, c)
        - raw_last_hidden(model, inputs.zero, inputs.fit, c)
    ).mean(0)
    w = model.lm_head.weight[inputs.label_ids[k]].detach()
    h = raw_last_hidden(model, inputs.zero, torch.tensor([query]), 2)[0]
    assert row.g == pytest.approx(float(w @ cbar), abs=1e-5)
    assert row.b == pytest.approx(float(w @ h), abs=1e-5)
    assert row.cbar_norm == pytest.approx(float(cbar.norm()), abs=1e-6)
    assert row.gold == int(inputs.gold[query])


@pytest.mark.parametrize("keep_states", [False, True])
def test_task_vectors_match_an_independent_replacement(tiny_handles, inputs, keep_states):
    """With kept states the suffix passes resume the capture's padded-batch KV cache."""
    handle = tiny_handles["nnsight"]
    config = TaskVectorConfig(layers=(1,))
    ctx = ProbeContext(handle, inputs, config.needed_layers(2), n_boot=10, keep_states=keep_states)
    table = get_probe("task_vectors").run(config, ctx)["task_vectors"]
    got = values(table, layer=1)["label_mass"]
    model = tiny_handles["hf"].backend.hf_model
    # theta: mean ICL residual after block 0 at the last position, over fit queries
    thetas = []
    for r in inputs.fit.tolist():
        ids = inputs.icl.ids[r, : inputs.icl.lengths[r]][None]
        with torch.no_grad():
            thetas.append(model(ids, output_hidden_states=True).hidden_states[1][0, -1])
    theta = torch.stack(thetas).mean(0)
    masses = []
    hook = model.model.layers[0].register_forward_hook(
        lambda m, a, o: torch.cat([o[:, :-1], theta.expand(o.shape[0], 1, -1)], dim=1)
    )
    try:
        for r in inputs.eval.tolist():
            ids = inputs.zero.ids[r, : inputs.zero.lengths[r]][None]
            with torch.no_grad():
                logits = model(ids, use_cache=False).logits[0, -1]
            masses.append(logits.double().softmax(-1)[inputs.label_ids].sum())
    finally:
        hook.remove()
    assert got == pytest.approx(torch.stack(masses).mean().item(), abs=1e-5)


@pytest.mark.parametrize(
    "data,match",
    [
        ({"lambdas": [0, -1]}, r"lambda -1.0 is not valid: lambdas must be finite and >= 0"),
        ({"lambdas": [float("nan")]}, r"must be a finite number"),
        ({"lambdas": [float("inf")]}, r"must be a finite number"),
        ({"modes": ["decod"]}, r"unknown mode 'decod'; valid modes: decode, patch"),
        ({"lambda": [1]}, r"unknown key 'lambda' .*did you mean 'lambdas'"),
        ({"context_layers": "middle"}, None),
    ],
)
def test_bad_probe_configs(data, match):
    if match is None:  # a bad layer name is caught when layers are resolved against the model
        config = build(ContextGateConfig, data, "[[probe]] 1")
        with pytest.raises(ValueError, match=r"unknown context_layers spec 'middle'"):
            config.needed_layers(30)
        return
    with pytest.raises(ConfigError, match=match):
        build(ContextGateConfig, data, "[[probe]] 1")


def test_first_non_finite_names_the_first_bad_row():
    import numpy as np
    import pandas as pd

    from cgar_interp.probes.base import first_non_finite

    table = pd.DataFrame(
        {"metric": ["a", "b", "c", "d"], "value": [0.5, np.inf, np.nan, 1.0], "layer": [0, 1, 2, 3]}
    )
    bad = first_non_finite(table)
    assert bad.metric == "b" and bad.layer == 1
    assert first_non_finite(table.iloc[[0, 3]]) is None

"""Claim 6 is blind to the residual stream's scale, as the model's predictions are.

Scale the residual stream of the tiny Llama by ``a`` (the embedding and every block's output
projections ``o_proj``, ``down_proj``): every RMSNorm divides ``a`` out, so the logits are the
same (``a`` a power of two is exact in floating point; the norms' epsilon, the only term that
sees the scale, is set to 1e-12 in both models so that it does not). The raw scores
``b = W_U h_zero`` scale by ``a`` and the fitted ``beta_eff`` by ``1 / a``, so the raw-unit
bound ``beta_eff lambda*^2 / 2`` the old claim 6 decided on moves by ``1 / a``; the rows of
claims 5 and 6 must not move.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgar_interp.claims.base import UNTESTABLE
from cgar_interp.claims.gate_regime import gate_regime, select_lambda
from cgar_interp.claims.per_query import query_table
from cgar_interp.claims.theory_fit import theory_predicts
from cgar_interp.compare import compare_tables

from .probe_helpers import synthetic_inputs

A = 8.0
LAMS = (0.0, 0.01, 0.1, 1.0, 10.0)
N_LAYERS = 2
MANIFEST = {"architecture": {"n_layers": N_LAYERS}}


def _variant(src, dst, a: float):
    """A copy of the tiny Llama with its residual stream scaled by ``a`` and eps = 1e-12."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(a)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(a)
            layer.mlp.down_proj.weight.mul_(a)
    model.config.rms_norm_eps = 1e-12
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def _tables(directory, inputs):
    from cgar_interp import load_model
    from cgar_interp.probes import ProbeContext, get_probe
    from cgar_interp.probes.context_gate import ContextGateConfig

    config = ContextGateConfig(
        context_layers=(1, 2), lambdas=LAMS, modes=("decode", "patch"), vectors=("context",)
    )
    handle = load_model(directory, backend="hf")
    ctx = ProbeContext(handle, inputs, config.needed_layers(N_LAYERS), n_boot=20)
    tables = dict(get_probe("context_gate").run(config, ctx))
    tables["context_gate_queries"] = ctx.take_query_table()
    tables.update(compare_tables(tables["gate_terms"], tables["context_gate"], n_layers=N_LAYERS))
    return tables


@pytest.fixture(scope="module")
def scaled_pair(tiny_llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled")
    one = _variant(tiny_llama_dir, root / "a1", 1.0)
    big = _variant(tiny_llama_dir, root / "a8", A)
    inputs = synthetic_inputs(n=18, controls=False)
    return one, big, inputs, _tables(one, inputs), _tables(big, inputs)


def test_scaling_the_residual_stream_keeps_the_logits(scaled_pair):
    from transformers import LlamaForCausalLM

    one, big, inputs, _, _ = scaled_pair
    ids = inputs.icl.ids[:4]
    with torch.no_grad():
        logits = [LlamaForCausalLM.from_pretrained(d)(ids).logits for d in (one, big)]
        hidden = [
            LlamaForCausalLM.from_pretrained(d)(ids, output_hidden_states=True).hidden_states[1]
            for d in (one, big)
        ]
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[1], A * hidden[0], rtol=1e-5, atol=1e-6)


def test_claim6_rows_do_not_move_while_the_raw_unit_bound_does(scaled_pair):
    _, _, _, t1, t8 = scaled_pair
    # the raw scores scale by a, beta_eff by 1 / a
    for name in ("b", "g"):
        np.testing.assert_allclose(
            t8["gate_terms"][name], A * t1["gate_terms"][name], rtol=1e-4, atol=1e-5
        )
    beta1 = float(t1["theory_fit"].beta_eff.iloc[0])
    beta8 = float(t8["theory_fit"].beta_eff.iloc[0])
    assert beta1 > 0 and beta8 == pytest.approx(beta1 / A, rel=1e-4)
    # lambda* on the fit queries is the same point in both models
    task = t1["theory_fit"].task.iloc[0]
    pick1 = select_lambda(t1["context_gate"], query_table(t1, "context_gate"), task)
    pick8 = select_lambda(t8["context_gate"], query_table(t8, "context_gate"), task)
    assert pick1[3] == "fit" and pick1[:2] == pick8[:2]
    lam = pick1[0]
    # the old row's value, the raw-unit bound beta_eff lambda*^2 / 2, moves by 1 / a ...
    old1, old8 = beta1 * lam**2 / 2, beta8 * lam**2 / 2
    assert old8 == pytest.approx(old1 / A, rel=1e-4) and abs(old1 - old8) > 0.5 * old1
    # ... while claim 6's rows, their verdict and every number they report, do not
    (r1,) = gate_regime(t1, MANIFEST)
    (r8,) = gate_regime(t8, MANIFEST)
    assert r1.verdict == r8.verdict == UNTESTABLE and r1.kind == r8.kind == "untestable"
    assert r1.selected_on == r8.selected_on == "fit"
    assert r1.test == r8.test and r1.note == r8.note
    assert "fixed points of Phi per eval query in those units" in r1.note
    assert f"lambda*^2 / 2 = {lam**2 / 2:.3g}" in r1.note


def test_claim5_values_do_not_move_either(scaled_pair):
    _, _, _, t1, t8 = scaled_pair
    rows1 = {r.key: r for r in theory_predicts(t1, MANIFEST)}
    rows8 = {r.key: r for r in theory_predicts(t8, MANIFEST)}
    assert set(rows1) == set(rows8) and any(k.startswith("patch_r2/") for k in rows1)
    for key, r in rows1.items():
        assert rows8[key].kind == r.kind
        if np.isfinite(r.value):
            assert rows8[key].value == pytest.approx(r.value, rel=1e-3, abs=1e-4), key

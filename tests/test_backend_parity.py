"""The three backends agree on every site, and each site means what its name says.

Parity: TransformerLens and nnsight against plain transformers with forward hooks, within 1e-4
in fp32. Meaning: sites are checked against independent computations (HF's own hidden states,
attention recomputed from q and k, head outputs summed into attn_out).
"""

import pytest
import torch

from cgar_interp import all_sites
from tests.conftest import TINY_VOCAB

TOL = 1e-4
OTHERS = ("transformer_lens", "nnsight")


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(1)
    return torch.randint(3, 128, (3, 11))


@pytest.fixture(scope="module")
def full_captures(tiny_handles, ids):
    sites = [str(s) for s in all_sites(2)]
    return {
        name: handle.capture(ids, sites, positions=None, with_logits=True)
        for name, handle in tiny_handles.items()
    }


@pytest.mark.parametrize("backend", OTHERS)
def test_logits_and_every_site_match_plain_transformers(full_captures, backend):
    ref, got = full_captures["hf"], full_captures[backend]
    assert (got.logits - ref.logits).abs().max() < TOL
    assert set(got.captures) == set(ref.captures) == {str(s) for s in all_sites(2)}
    for name in ref.captures:
        assert got[name].shape == ref[name].shape, name
        assert (got[name] - ref[name]).abs().max() < TOL, name


def test_canonical_shapes_are_pinned(full_captures):
    cap = full_captures["hf"]
    b, p = 3, 11
    expected = {
        "resid.0": (b, p, 64),
        "resid.2": (b, p, 64),
        "resid_mid.1": (b, p, 64),
        "attn_out.1": (b, p, 64),
        "mlp_out.1": (b, p, 64),
        "attn_pattern.1": (b, p, 4, p),
        "q.1": (b, p, 4, 16),
        "k.1": (b, p, 1, 16),
        "v.1": (b, p, 1, 16),
        "k_rep.1": (b, p, 4, 16),
        "v_rep.1": (b, p, 4, 16),
        "z.1": (b, p, 4, 16),
        "head_out.1": (b, p, 4, 64),
    }
    for name, shape in expected.items():
        assert tuple(cap[name].shape) == shape, name


def test_resid_matches_hf_hidden_states_and_the_final_norm_trap(tiny_handles, full_captures, ids):
    """hidden_states[l] == resid.l for l < L, but hidden_states[L] is already normed."""
    model = tiny_handles["hf"].backend.hf_model
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    cap = full_captures["hf"]
    for layer in range(2):
        assert torch.allclose(out.hidden_states[layer], cap[f"resid.{layer}"], atol=1e-6)
    assert torch.allclose(model.model.norm(cap["resid.2"]), out.hidden_states[2], atol=1e-5)
    assert not torch.allclose(cap["resid.2"], out.hidden_states[2], atol=1e-3)


@pytest.mark.parametrize("backend", ("hf", *OTHERS))
def test_decode_residual_of_final_resid_is_the_logits(tiny_handles, full_captures, backend):
    cap = full_captures[backend]
    decoded = tiny_handles[backend].decode_residual(cap["resid.2"])
    assert (decoded - cap.logits).abs().max() < 1e-5


def test_attention_pattern_recomputed_from_rotated_q_and_k(full_captures):
    """softmax(q k^T / sqrt(d_head) + causal mask) from the q/k_rep sites equals attn_pattern."""
    cap = full_captures["nnsight"]
    for layer in range(2):
        q, k = cap[f"q.{layer}"], cap[f"k_rep.{layer}"]  # [b, pos, h, d]
        scores = torch.einsum("bqhd,bkhd->bqhk", q, k) / q.shape[-1] ** 0.5
        pos = q.shape[1]
        causal = torch.ones(pos, pos, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal[None, :, None, :], float("-inf"))
        expected = scores.softmax(-1)
        assert (expected - cap[f"attn_pattern.{layer}"]).abs().max() < 1e-5
        # z is the pattern applied to the (expanded) values
        z = torch.einsum("bqhk,bkhd->bqhd", cap[f"attn_pattern.{layer}"], cap[f"v_rep.{layer}"])
        assert (z - cap[f"z.{layer}"]).abs().max() < 1e-5


def test_head_outputs_sum_to_attn_out_and_resid_mid(full_captures):
    cap = full_captures["transformer_lens"]
    for layer in range(2):
        summed = cap[f"head_out.{layer}"].sum(dim=2)
        assert (summed - cap[f"attn_out.{layer}"]).abs().max() < 1e-5
        mid = cap[f"resid.{layer}"] + cap[f"attn_out.{layer}"]
        assert (mid - cap[f"resid_mid.{layer}"]).abs().max() < 1e-5
        post = cap[f"resid_mid.{layer}"] + cap[f"mlp_out.{layer}"]
        assert (post - cap[f"resid.{layer + 1}"]).abs().max() < 1e-5


def test_gqa_expansion_repeats_each_kv_head_for_its_query_group(full_captures):
    cap = full_captures["hf"]
    k, k_rep = cap["k.0"], cap["k_rep.0"]
    for head in range(4):
        assert torch.equal(k_rep[:, :, head], k[:, :, head // 4])


@pytest.mark.parametrize("backend", ("hf", *OTHERS))
def test_variable_length_batch_equals_unpadded_rows(tiny_handles, backend):
    """Right padding: every row's last-token residual equals that row run alone."""
    handle = tiny_handles[backend]
    rows = [[5, 9, 17, 33, 8], [40, 41], [7, 7, 7, 99]]
    together = handle.capture(rows, ["resid.2", "attn_pattern.1"], positions=-1)
    for i, row in enumerate(rows):
        alone = handle.capture([row], ["resid.2", "attn_pattern.1"], positions=-1)
        assert (together["resid.2"][i] - alone["resid.2"][0]).abs().max() < 1e-5
        n = len(row)
        assert (
            together["attn_pattern.1"][i, :, :n] - alone["attn_pattern.1"][0]
        ).abs().max() < 1e-5
        assert together["attn_pattern.1"][i, :, n:].abs().sum() == 0  # no mass on padding


def test_capture_returns_only_what_was_asked(tiny_handles, ids):
    out = tiny_handles["nnsight"].capture(ids, ["resid.1", "k.0"], positions=[0, -1])
    assert set(out) == {"resid.1", "k.0"}
    assert tuple(out["resid.1"].shape) == (3, 2, 64)
    assert tuple(out["k.0"].shape) == (3, 2, 1, 16)


@pytest.mark.parametrize("backend", ("hf", *OTHERS))
def test_unembedding_runs_only_at_the_requested_positions(tiny_handles, ids, backend):
    """Logits at chosen positions equal the full logits there, and lm_head saw only those rows."""
    handle = tiny_handles[backend]
    full = tiny_handles["hf"].logits(ids)  # [b, p, vocab], every position
    seen = []
    hook = handle.backend.hf_model.lm_head
    if backend == "transformer_lens":  # the bridge calls the HF module it wraps
        from cgar_interp.backends.transformer_lens import _unwrap

        hook = _unwrap(handle.backend.engine.original_model.lm_head)
    remove = hook.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    try:
        last = handle.logits(ids, positions=-1)
        two = handle.capture(ids, ["resid.1"], -1, with_logits=True, logits_positions=[0, -1])
        none = handle.capture(ids, ["resid.1"], -1)
    finally:
        remove.remove()
    assert (last - full[:, -1]).abs().max() < TOL
    assert (two.logits - full[:, [0, -1]]).abs().max() < TOL
    assert isinstance(none, dict) and set(none) == {"resid.1"}
    assert seen == [(3, 1, TINY_VOCAB), (3, 2, TINY_VOCAB), (3, 0, TINY_VOCAB)]

"""Interventions and prefix reuse, checked against plain PyTorch forward hooks written here."""

import pytest
import torch

BACKENDS = ("hf", "transformer_lens", "nnsight")


@pytest.fixture(scope="module")
def ids():
    torch.manual_seed(2)
    return torch.randint(3, 128, (2, 9))


def plain_forward_with_hook(model, ids, module, fn):
    handle = module.register_forward_hook(lambda m, a, out: fn(out))
    try:
        with torch.no_grad():
            return model(ids, use_cache=False).logits
    finally:
        handle.remove()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_adding_a_vector_at_resid_matches_a_plain_hook(tiny_handles, ids, backend, layer):
    torch.manual_seed(layer)
    vector = torch.randn(64)
    reference_model = tiny_handles["hf"].backend.hf_model
    module = (
        reference_model.model.embed_tokens
        if layer == 0
        else reference_model.model.layers[layer - 1]
    )

    def add_last(out):
        out = out.clone()
        out[:, -1] += vector
        return out

    expected = plain_forward_with_hook(reference_model, ids, module, add_last)
    clean = tiny_handles[backend].logits(ids)
    patched = tiny_handles[backend].run_with_patch(ids, f"resid.{layer}", -1, vector).logits
    assert (patched - expected).abs().max() < 1e-4
    assert (patched - clean).abs().max() > 1e-3  # the intervention did something


@pytest.mark.parametrize("backend", BACKENDS)
def test_function_patch_on_heads_matches_plain_hook(tiny_handles, ids, backend):
    """Zero-ablate head 2's result (z) at positions 1 and 3."""
    reference_model = tiny_handles["hf"].backend.hf_model
    o_proj = reference_model.model.layers[1].self_attn.o_proj

    def pre(module, args):
        x = args[0].clone().view(2, 9, 4, 16)
        x[:, [1, 3], 2] = 0
        return (x.view(2, 9, 64),)

    handle = o_proj.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            expected = reference_model(ids, use_cache=False).logits
    finally:
        handle.remove()

    def ablate(z):  # z: [batch, n_pos, n_heads, d_head]
        z = z.clone()
        z[:, :, 2] = 0
        return z

    got = tiny_handles[backend].run_with_patch(ids, "z.1", [1, 3], ablate).logits
    assert (got - expected).abs().max() < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_captures_after_a_patch_see_the_patched_stream(tiny_handles, ids, backend):
    handle = tiny_handles[backend]
    vector = torch.randn(64)
    clean = handle.capture(ids, ["resid.1"], positions=-1)["resid.1"]
    run = handle.run_with_patch(ids, "resid.1", -1, vector, capture=["resid.1", "resid.2"])
    assert (run["resid.1"] - (clean + vector)).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_prefix_reuse_from_layer_equals_full_forward(tiny_handles, ids, backend, layer):
    handle = tiny_handles[backend]
    run = handle.capture(ids, [f"resid.{layer}"], positions=None, with_logits=True)
    resumed = handle.resume(run[f"resid.{layer}"], layer)
    assert (resumed - run.logits).abs().max() < 1e-5
    last = handle.resume(run[f"resid.{layer}"], layer, positions=-1)
    assert (last - run.logits[:, -1]).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_with_a_shifted_residual_equals_patching_at_that_layer(tiny_handles, ids, backend):
    """The context-gate 'patch' mode done cheaply: cached resid.1 + v, then the suffix only."""
    handle = tiny_handles[backend]
    vector = torch.randn(64)
    resid = handle.capture(ids, ["resid.1"], positions=None)["resid.1"].clone()
    resid[:, -1] += vector
    patched = handle.run_with_patch(ids, "resid.1", -1, vector, logits_positions=-1).logits
    assert (handle.resume(resid, 1, positions=-1) - patched).abs().max() < 1e-5

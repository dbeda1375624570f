"""The engine seam: what code above the backends asks of the model, the same on every backend.

Resume, prefix passes, decode algebra and probes reach the HF module tree only through these
methods (:class:`cgar_interp.backends.base.Backend`); each backend answers from its own engine
(the HF model, the TransformerBridge's plain view, the nnsight model's module tree).
"""

import pytest
import torch

from cgar_interp.backends import BACKENDS, remote_backend, remote_backends, supports_remote

BACKEND_NAMES = ("hf", "transformer_lens", "nnsight")


def test_only_nnsight_runs_remotely_and_that_is_a_property_of_the_backend():
    assert set(BACKENDS) == set(BACKEND_NAMES)
    assert remote_backends() == ("nnsight",) and remote_backend() == "nnsight"
    assert [supports_remote(name) for name in BACKEND_NAMES] == [False, False, True]
    with pytest.raises(ValueError, match="unknown backend"):
        supports_remote("vllm")


@pytest.mark.parametrize("name", ["transformer_lens", "nnsight"])
def test_backend_methods_agree_with_the_reference(tiny_handles, name):
    ref, other = tiny_handles["hf"].backend, tiny_handles[name].backend
    assert not ref.remote and not other.remote
    assert other.config.num_hidden_layers == ref.config.num_hidden_layers == 2
    assert other.dims == ref.dims
    n_layers = ref.config.num_hidden_layers
    assert len(other.blocks()) == len(ref.blocks()) == n_layers
    for layer in range(n_layers):
        assert other.attention_scale(layer) == ref.attention_scale(layer)
        assert other.attention_scale(layer) == pytest.approx(ref.dims.d_head**-0.5)
        got = other.module(f"model.layers.{layer}.self_attn.o_proj").weight
        assert torch.equal(got, ref.module(f"model.layers.{layer}.self_attn.o_proj").weight)
        assert other.block(layer) is other.blocks()[layer]
    assert torch.equal(other.embedding().weight, ref.embedding().weight)
    assert torch.equal(other.final_norm().weight, ref.final_norm().weight)
    assert torch.equal(other.lm_head().weight, ref.lm_head().weight)
    assert other.input_device() == ref.input_device() == torch.device("cpu")
    position_ids = torch.arange(5)[None]
    h = torch.zeros(1, 5, ref.config.hidden_size)
    for a, b in zip(
        other.rotary_embedding()(h, position_ids=position_ids),
        ref.rotary_embedding()(h, position_ids=position_ids),
        strict=True,
    ):
        assert torch.equal(a, b)
    mine, theirs = other.readout(), ref.readout()
    assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.gamma, theirs.gamma)
    assert mine.eps == theirs.eps and (mine.bias is None) == (theirs.bias is None)
    h = torch.randn(3, ref.config.hidden_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mine.head(mine.norm(h)), theirs.head(theirs.norm(h)))


def test_the_handle_decodes_through_the_backend_readout(tiny_handles):
    handle = tiny_handles["hf"]
    h = torch.randn(2, handle.arch.d_model, generator=torch.Generator().manual_seed(1))
    readout = handle.backend.readout()
    torch.testing.assert_close(handle.decode_residual(h), readout.head(readout.norm(h)))
    assert handle.readout() is handle.readout()  # made once per handle


def test_knobs_are_set_when_the_handle_is_built(tiny_llama_dir, tiny_handles):
    from cgar_interp import load_model

    handle = tiny_handles["hf"]
    assert handle.remote_rows == 256 and handle.placeholder_decode is False
    with pytest.raises(AttributeError):
        handle.remote_rows = 3
    built = load_model(tiny_llama_dir, backend="hf", remote_rows=7, placeholder_decode=True)
    assert built.remote_rows == 7 and built.placeholder_decode is True
    h = torch.zeros(2, built.arch.d_model)
    assert torch.equal(built.decode_residual(h), torch.ones(2, built.arch.vocab_size))

    assert handle.with_options() is handle and handle.with_options(remote_rows=256) is handle
    other = handle.with_options(remote_rows=5)
    assert other.remote_rows == 5 and handle.remote_rows == 256
    assert other.backend is handle.backend and other.stats is handle.stats
    assert other.readout() is handle.readout()  # one model, one readout

"""Device maps: engine paths must follow where each module computes, not where its weights sit.

There is one device here (the CPU), so a split over several GPUs cannot be reproduced. What can
be: accelerate's *offload*, the part of ``device="auto"`` that breaks code reading
``module.weight.device``. Modules mapped to ``"disk"`` keep their parameters on the ``meta``
device and accelerate's hook loads them for each call, exactly as on a GPU machine whose GPUs
are too small. Every probe-level path must then give the numbers of the plain model, bit for
bit (the offloaded float32 weights are the same bytes).
"""

import warnings

import pytest
import torch

from cgar_interp.backends.hf import HFBackend
from cgar_interp.capture import capture_many, resume_variants
from cgar_interp.decoding import ShiftedDecoder
from cgar_interp.devices import module_device, resident_weight
from cgar_interp.models import load_model
from cgar_interp.prefix import last_token_state, resume_last_token, shared_prefix_cache
from cgar_interp.tokens import TokenBatch

# embedding, block 1 (so its o_proj), final norm and unembedding offloaded; block 0 resident
DEVICE_MAP = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}
SITES = ["resid.0", "resid.1", "resid.2", "q.1", "k.1", "z.1", "head_out.1", "attn_pattern.1"]


@pytest.fixture(scope="module")
def handles(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama plain, and the same checkpoint dispatched with ``DEVICE_MAP``."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = load_model(tiny_llama_dir, backend="hf")
        mapped = load_model(tiny_llama_dir, backend="hf")
        model = AutoModelForCausalLM.from_pretrained(
            tiny_llama_dir,
            device_map=DEVICE_MAP,
            offload_folder=str(tmp_path_factory.mktemp("offload")),
            dtype=torch.float32,
            attn_implementation="eager",
        )
    mapped.backend = HFBackend(model.eval(), mapped.arch.dims)
    return plain, mapped


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 128, (20,), generator=gen).tolist()
    rows = [prefix + torch.randint(3, 128, (3 + i % 3,), generator=gen).tolist() for i in range(5)]
    return TokenBatch.from_sequences(rows)


def test_the_map_really_offloads(handles):
    _, mapped = handles
    hf = mapped.backend.hf_model
    assert hf.lm_head.weight.is_meta and hf.model.embed_tokens.weight.is_meta
    assert hf.model.layers[1].self_attn.o_proj.weight.is_meta
    # where they compute: accelerate's execution device, not the weight's (meta) device
    assert module_device(hf.lm_head) == torch.device("cpu")
    assert mapped.input_device == torch.device("cpu")
    weight = resident_weight(hf.lm_head, "weight", "test")
    assert not weight.is_meta and weight.shape == (128, 64)


def test_capture_and_patch_match_the_plain_model(handles, batch):
    plain, mapped = handles
    want = plain.capture(batch, SITES, -1, with_logits=True)
    got = mapped.capture(batch, SITES, -1, with_logits=True)
    assert torch.equal(got.logits, want.logits)
    for site in SITES:
        assert torch.equal(got[site], want[site]), site
    vector = torch.randn(64, generator=torch.Generator().manual_seed(1))
    want = plain.run_with_patch(batch, "resid.1", -1, vector, capture=["head_out.1"])
    got = mapped.run_with_patch(batch, "resid.1", -1, vector, capture=["head_out.1"])
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got["head_out.1"], want["head_out.1"])


def test_decode_resume_and_shifted_decoder_match(handles, batch):
    plain, mapped = handles
    resid = plain.capture(batch, ["resid.1"], positions=None)["resid.1"]  # every position
    assert torch.equal(mapped.decode_residual(resid), plain.decode_residual(resid))
    assert torch.equal(mapped.resume(resid, 1), plain.resume(resid, 1))
    h, v = resid[:, -1], torch.randn(64, generator=torch.Generator().manual_seed(2))
    lambdas = torch.tensor([0.0, 1.0])
    assert torch.equal(ShiftedDecoder(mapped, h)(v, lambdas), ShiftedDecoder(plain, h)(v, lambdas))


def test_kv_cache_paths_match(handles, batch):
    plain, mapped = handles
    for shared in (False, True):
        want = capture_many(plain, batch, SITES, -1, batch_size=2, shared_prefix=shared)
        got = capture_many(mapped, batch, SITES, -1, batch_size=2, shared_prefix=shared)
        assert torch.equal(got.logits, want.logits)
        for site in SITES:
            assert torch.equal(got[site], want[site]), (shared, site)
    ids = batch.ids[:3, :20]
    states = [last_token_state(h, ids) for h in handles]
    shifts = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(3))
    for layer in range(3):
        want, got = (
            resume_last_token(h, s, layer, s.resid[layer][None] + shifts)
            for h, s in zip(handles, states, strict=True)
        )
        assert torch.equal(got, want), layer

    def variants(layer, h_last, indices):
        return h_last[None] + shifts[:, : len(indices)]

    def score(logits, indices):
        return {"max": logits.max(-1).values}

    want = resume_variants(plain, batch, [1, 2], variants, score, batch_size=2)
    got = resume_variants(mapped, batch, [1, 2], variants, score, batch_size=2)
    for layer in (1, 2):
        assert torch.equal(got[layer]["max"], want[layer]["max"])


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_prefill_block_by_block_equals_the_model_forward(tiny_handles, backend):
    """The prefix cache is filled block by block (device-map safe) with HF's exact numbers."""
    from transformers import DynamicCache

    handle = tiny_handles[backend]
    hf = handle.backend.hf_model
    ids = torch.randint(3, 128, (12,), generator=torch.Generator().manual_seed(4))
    reference = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf.model(input_ids=ids[None], past_key_values=reference, use_cache=True)
    cache = shared_prefix_cache(handle, ids)
    for mine, theirs in zip(cache.layers, reference.layers, strict=True):
        assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_device_auto_reaches_every_backend_loader(tiny_llama_dir, tiny_handles, backend):
    """``device="auto"`` goes through each loader's device-map argument (here: all on the CPU).

    With no GPU accelerate maps every module to the CPU, so the numbers must be the one-device
    ones bit for bit; ids go to the embedding's device.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = load_model(tiny_llama_dir, backend=backend, device="auto", dtype="float32")
    plain = tiny_handles[backend]
    assert auto.device == "auto" and auto.input_device == torch.device("cpu")
    embed = auto.backend.hf_model.get_input_embeddings()
    assert auto.input_device == module_device(embed)
    batch = plain.tokenize(["w1 w2 w3 w4", "w5 w6"])
    sites = ["resid.1", "q.1", "head_out.1"]
    got = auto.capture(batch, sites, -1, with_logits=True, logits_positions=-1)
    want = plain.capture(batch, sites, -1, with_logits=True, logits_positions=-1)
    assert torch.equal(got.logits, want.logits)
    for site in sites:
        assert torch.equal(got[site], want[site]), site
    resid = want["resid.1"]
    assert torch.equal(auto.decode_residual(resid), plain.decode_residual(resid))


def test_transformer_lens_refuses_an_offloading_map(tiny_llama_dir, tiny_handles, tmp_path):
    """The bridge's hook-free view has no offload hooks: refused by name, not meta tensors."""
    from transformer_lens.model_bridge import TransformerBridge

    from cgar_interp.backends.transformer_lens import TransformerLensBackend

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            str(tiny_llama_dir),
            dtype=torch.float32,
            tokenizer=tiny_handles["hf"].tokenizer,
            device_map=DEVICE_MAP,
            offload_folder=str(tmp_path),
        )
    with pytest.raises(ValueError, match="offloaded: lm_head, model.embed_tokens"):
        TransformerLensBackend(bridge, 2)

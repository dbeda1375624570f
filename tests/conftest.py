"""Shared fixtures: a tiny random-init Llama with Llama-3 features, and the embedded model.

``HF_HUB_OFFLINE=1`` is set before anything imports transformers: no test touches a hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_VOCAB = 128


@pytest.fixture(autouse=True)
def _linecache_restored():
    """Each test leaves ``linecache`` as it found it. Decoding an nnsight payload (the tests'
    payload comparisons, fake servers) registers the shipped functions' source under this
    process's file names; nnsight would then ship ``traced_pass`` of a later test by bytecode,
    and a backward inside it fails on a server (as it would on NDIF)."""
    import linecache

    lines = dict(linecache.cache)
    yield
    linecache.cache.clear()
    linecache.cache.update(lines)


@pytest.fixture(autouse=True)
def readout_cache(monkeypatch, tmp_path_factory) -> Path:
    """Each test's own cache of remote readouts (cgar_interp.remote_readout), never the user's:
    a readout one test fetched must not answer another's requests."""
    from cgar_interp import remote_readout

    root = tmp_path_factory.mktemp("readouts")
    monkeypatch.setattr(remote_readout, "readout_cache_dir", lambda: root)
    return root


def build_tiny_llama(directory: Path, *, n_kv_heads: int = 1, seed: int = 0) -> Path:
    """Save a seeded random-init Llama (GQA, rope_theta 500000, llama3 rope scaling) + tokenizer.

    Hidden 64, 2 layers, 4 query heads (4:1 GQA by default), vocab 128, eager attention. The
    tokenizer is a word-level one over ``w0 .. w124`` built in code (no download).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=256,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(TINY_VOCAB - 3):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
    )
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_handles(tiny_llama_dir):
    """The tiny Llama behind all three backends (built once, read-only)."""
    from cgar_interp import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            name: load_model(tiny_llama_dir, backend=name)
            for name in ("hf", "transformer_lens", "nnsight")
        }


@pytest.fixture(scope="session")
def embedded_handles():
    """The embedded SmolLM2-135M behind all three backends (integration tier)."""
    from cgar_interp import load_model
    from cgar_interp.embedded import EmbeddedModelMissing

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {
                name: load_model("embedded", backend=name)
                for name in ("hf", "transformer_lens", "nnsight")
            }
    except EmbeddedModelMissing as err:  # only where the wheel is absent (make test installs it)
        pytest.skip(str(err))

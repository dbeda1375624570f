"""Checkpoints: where a model's files are, and whether they may be loaded.

A model is named by ``"embedded"`` (SmolLM2-135M, converted once into the cache), a local
checkpoint directory, or a hub id. :func:`resolve_source` turns that name into a directory and
a SHA-256 of its weights (:func:`weights_hash`, cached per file version), after refusing what
should not be loaded: a ``config.json`` that is not a JSON object (:func:`check_config_json`)
and pickle-based weights unless opted in (:func:`check_weights_format`).
:func:`resolve_remote_source` does the same for a model a server runs: config and tokenizer
only, no weights read or hashed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .embedded import EMBEDDED_NAME, cache_dir, ensure_embedded, sha256_file


def weights_hash(directory: Path) -> str:
    """SHA-256 over a checkpoint's weight files, cached by (path, size, mtime) in the cache dir.

    Hashing 16 GB of Llama-3-8B takes a while, so it is done once per file version.
    """
    files = sorted(
        p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")
    )
    if not files:
        raise ValueError(f"no weight files (*.safetensors, *.bin) in {directory}")
    index_path = cache_dir() / "weight_hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError):
        index = {}
    import hashlib

    combined = hashlib.sha256()
    changed = False
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in index:
            index[key] = sha256_file(path)
            changed = True
        combined.update(f"{path.name}:{index[key]}\n".encode())
    if changed:
        # forget entries of files that no longer exist (temporary checkpoints of tests)
        index = {k: v for k, v in index.items() if Path(k.split("|")[0]).exists()}
        index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_path)
    return combined.hexdigest()


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_weights_format(directory: Path, allow_pickle: bool) -> None:
    """Refuse pickle-based checkpoints (they can run code when loaded) unless opted in."""
    safetensors = list(directory.glob("*.safetensors"))
    pickles = [p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not safetensors and pickles and not allow_pickle:
        raise ValueError(
            f"checkpoint {str(directory)!r} holds pickle-based weights ({', '.join(sorted(pickles))}); "
            "loading pickle can execute code. Convert it to safetensors, or pass "
            "allow_pickle=True (--allow-pickle) only for a checkpoint you trust"
        )
    if not safetensors and not pickles:
        raise ValueError(f"checkpoint {str(directory)!r} has no weight files (*.safetensors)")


def check_config_json(directory: Path) -> None:
    """Refuse a checkpoint whose ``config.json`` is not a JSON object, in one line naming it.

    (transformers would raise from deep inside ``AutoConfig`` with a full traceback.)
    """
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return  # a hub snapshot without one: AutoConfig says so
    try:
        config = json.loads(config_path.read_bytes())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{config_path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
            "repair or re-download the checkpoint's config.json"
        ) from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{config_path} is not valid JSON: not UTF-8 text ({err.reason} at byte {err.start}); "
            "repair or re-download the checkpoint's config.json"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_path} is not a model config: a JSON {type(config).__name__} where an "
            "object ({...}) belongs; repair or re-download the checkpoint's config.json"
        )


def resolve_source(
    name_or_path: str | os.PathLike, allow_pickle: bool = False
) -> tuple[str, str, str]:
    """``(name, path or hub id, hash)`` for ``"embedded"``, a local directory, or a hub id."""
    text = str(name_or_path)
    if text == EMBEDDED_NAME:
        checkpoint = ensure_embedded()
        return "SmolLM2-135M-Instruct (embedded)", str(checkpoint.path), checkpoint.weights_sha256
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model directory {str(path)!r} has no config.json; pass a Hugging Face "
                "checkpoint directory, a hub id, or 'embedded'"
            )
        check_config_json(path)
        check_weights_format(path, allow_pickle)
        return path.name, str(path.resolve()), weights_hash(path)
    local = hub_snapshot(text, ["*.json", "*.safetensors", "*.model"])
    check_config_json(Path(local))
    check_weights_format(Path(local), allow_pickle)
    return text, local, weights_hash(Path(local))


def hub_snapshot(text: str, patterns: list[str]) -> str:
    """Local directory of hub repo ``text``'s files matching ``patterns`` (downloaded once)."""
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise ValueError(
            f"unknown model {text!r}: not a local directory, not a hub id of the form "
            f"'org/name', and not {EMBEDDED_NAME!r}. Valid: 'embedded', a checkpoint directory "
            "holding config.json, or a hub id such as 'meta-llama/Meta-Llama-3-8B'"
        )
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(text, allow_patterns=patterns)
    except Exception as err:  # offline, unknown id, gated repo: say what to do instead
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ValueError(
            f"could not load model {text!r} from the Hugging Face hub"
            f"{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {type(err).__name__}: {err}. "
            "Download it where a hub is reachable and pass the local directory instead, "
            f"or use {EMBEDDED_NAME!r}."
        ) from err


def resolve_remote_source(name_or_path: str | os.PathLike) -> tuple[str, str, str]:
    """``(name, directory with config and tokenizer, model id)`` for ``remote=True``.

    No weight file is read or downloaded: the server holds the weights. The model id names
    the model in the request; NDIF knows models by hub id. A local directory (config and
    tokenizer only suffice) is named by its path, which only a server holding the same
    path can serve: it is for offline tests.
    """
    text = str(name_or_path)
    if text == EMBEDDED_NAME:
        raise ValueError(
            f"remote=True needs a model the NDIF server hosts, named by its hub id (such as "
            f"'meta-llama/Llama-3.1-70B'); {EMBEDDED_NAME!r} exists only on this machine"
        )
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model directory {str(path)!r} has no config.json; remote=True needs the "
                "model's config and tokenizer, or its hub id"
            )
        check_config_json(path)
        return path.name, str(path.resolve()), str(path.resolve())
    local = hub_snapshot(text, ["*.json", "*.model"])
    check_config_json(Path(local))
    return text, local, text


__all__ = [
    "PICKLE_SUFFIXES",
    "check_config_json",
    "check_weights_format",
    "hub_snapshot",
    "resolve_remote_source",
    "resolve_source",
    "weights_hash",
]

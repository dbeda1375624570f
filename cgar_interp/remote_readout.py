"""A remote model's final norm and unembedding, without reading a parameter inside a trace.

Decode algebra (context-gate theory rows, subspace directions, :class:`~cgar_interp.decoding.
ShiftedDecoder`) needs ``gamma`` (the final norm's weight) and ``W_U`` here. A request that reads
``lm.lm_head.weight`` inside a remote trace may fail on NDIF, whose sandbox does not hand a
request the modules' attributes, and it would be downloaded again on every resume. So the
weights come, in this order, from:

1. **the disk cache** (``<cache>/readouts``): content-hashed files (the name is the SHA-256 of
   the bytes, checked on every load) listed in ``index.json`` by model id and revision;
2. **the checkpoint on the hub** (only where the hub is reachable, ``HF_HUB_OFFLINE`` unset):
   the two tensors are read by byte range out of the safetensors shards
   (:func:`checkpoint_tensors`), nothing else of the checkpoint is downloaded;
3. **the server, through module calls** (:func:`server_readout`): ``norm(c * 1)`` with
   ``c = 256`` is ``gamma`` (the root mean square of ``c * 1`` is ``c``, whatever ``eps``),
   and ``lm_head(e_i) - lm_head(0)`` is column ``i`` of ``W_U``, exactly: a matmul with a one-hot
   row adds only zeros to the one product. The identity's rows go in chunks of at most
   :data:`READOUT_RESULT_BYTES` of result per request.

What was fetched is stored in the cache (not a dry run's placeholders), so a resumed or later
run of the same model sends no readout request at all.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

# most result bytes one readout request brings back (W_U's columns are chunked under it)
READOUT_RESULT_BYTES = 256 * 2**20
# the norm's probe vector is NORM_PROBE * ones: its mean square NORM_PROBE**2 = 65536 swallows
# any eps below 0.0039 in float32 and the root is the power of two NORM_PROBE (exact in any dtype)
NORM_PROBE = 256.0

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
}


@dataclass(frozen=True)
class ReadoutWeights:
    """The readout's tensors and where they came from.

    Attributes:
        gamma: ``[d_model]`` the final norm's weight.
        weight: ``[vocab, d_model]`` the unembedding's weight.
        bias: ``[vocab]`` or None.
        source: ``"cache"``, ``"hub"`` or ``"server"`` (how this process got them).
        sha256: the content hash of the cached file (``""`` before it is stored).
    """

    gamma: Tensor
    weight: Tensor
    bias: Tensor | None
    source: str
    sha256: str = ""


def readout_cache_dir() -> Path:
    """``<cache>/readouts`` (``$CGAR_CACHE``, else ``$XDG_CACHE_HOME/cgar_interp``, else
    ``~/.cache/cgar_interp``)."""
    from .embedded import cache_dir

    return cache_dir() / "readouts"


def cache_key(model_id: str, revision: str) -> str:
    return f"{model_id}@{revision}"


def _index(root: Path) -> dict:
    path = root / "index.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a torn index: the files are content-hashed, so nothing wrong is served


def load_cached(model_id: str, revision: str = "main") -> ReadoutWeights | None:
    """The cached readout of ``model_id`` at ``revision``, or None (absent, or its file's
    content no longer matches its hash: then it is ignored and fetched again)."""
    from safetensors.torch import load_file

    from .embedded import sha256_file

    root = readout_cache_dir()
    entry = _index(root).get(cache_key(model_id, revision))
    if entry is None:
        return None
    path = root / f"{entry['sha256']}.safetensors"
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        return None
    tensors = load_file(str(path))
    return ReadoutWeights(
        gamma=tensors["gamma"],
        weight=tensors["weight"],
        bias=tensors.get("bias"),
        source="cache",
        sha256=entry["sha256"],
    )


def store(model_id: str, revision: str, weights: ReadoutWeights) -> ReadoutWeights:
    """Write ``weights`` to the cache (file named by its SHA-256, written atomically, then the
    index entry); returns them with ``sha256`` set."""
    from safetensors.torch import save_file

    from .embedded import sha256_file

    root = readout_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tensors = {"gamma": weights.gamma.contiguous(), "weight": weights.weight.contiguous()}
    if weights.bias is not None:
        tensors["bias"] = weights.bias.contiguous()
    partial = root / f".partial-{os.getpid()}.safetensors"
    save_file(tensors, str(partial), metadata={"model": model_id, "revision": revision})
    digest = sha256_file(partial)
    os.replace(partial, root / f"{digest}.safetensors")
    index = _index(root)
    index[cache_key(model_id, revision)] = {
        "sha256": digest,
        "source": weights.source,
        "dtype": str(weights.weight.dtype).removeprefix("torch."),
        "shape": list(weights.weight.shape),
    }
    tmp_index = root / f".index-{os.getpid()}.json"
    tmp_index.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp_index, root / "index.json")
    return ReadoutWeights(weights.gamma, weights.weight, weights.bias, weights.source, digest)


# ------------------------------------------------------------------ the checkpoint's shards
def _read_header(fh) -> tuple[dict, int]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets) and the offset
    where its data starts."""
    (length,) = struct.unpack("<Q", fh.read(8))
    if not 0 < length < 100 * 2**20:
        raise ValueError(f"not a safetensors file: header length {length}")
    header = json.loads(fh.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def _read_tensor(fh, header: dict, start: int, name: str) -> Tensor:
    info = header[name]
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(
            f"tensor {name!r} has dtype {info['dtype']!r}; readable: {', '.join(_SAFETENSORS_DTYPES)}"
        )
    begin, end = info["data_offsets"]
    fh.seek(start + begin)
    data = bytearray(fh.read(end - begin))
    if len(data) != end - begin:
        raise ValueError(f"tensor {name!r}: read {len(data)} of {end - begin} bytes")
    return torch.frombuffer(data, dtype=dtype).reshape(info["shape"]).clone()


def checkpoint_tensors(fs, root: str, names: list[str]) -> dict[str, Tensor]:
    """Tensors ``names`` of the safetensors checkpoint at ``root`` on filesystem ``fs``
    (an fsspec filesystem: ``HfFileSystem`` for the hub, where ``root`` is ``"org/name@rev"``,
    or a local one), each read by byte range: only the header and the tensors' own bytes.

    The shard of each name comes from ``model.safetensors.index.json`` where the checkpoint
    is sharded, else every tensor is in ``model.safetensors``.

    Raises:
        KeyError: a name is in no shard, naming it and the file searched.
    """
    index_path = f"{root}/model.safetensors.index.json"
    if fs.exists(index_path):
        with fs.open(index_path, "rb") as fh:
            weight_map = json.loads(fh.read())["weight_map"]
        missing = [n for n in names if n not in weight_map]
        if missing:
            raise KeyError(f"tensors {missing} are in no shard of {index_path}")
        shards = {n: weight_map[n] for n in names}
    else:
        shards = dict.fromkeys(names, "model.safetensors")
    out = {}
    for shard in sorted(set(shards.values())):
        with fs.open(f"{root}/{shard}", "rb") as fh:
            header, start = _read_header(fh)
            for name in (n for n, s in shards.items() if s == shard):
                if name not in header:
                    raise KeyError(f"tensor {name!r} is not in {root}/{shard}")
                out[name] = _read_tensor(fh, header, start, name)
    return out


def checkpoint_readout(fs, root: str, tied: bool) -> ReadoutWeights:
    """The readout from a checkpoint's shards (:func:`checkpoint_tensors`): ``model.norm.weight``
    and ``lm_head.weight`` (``model.embed_tokens.weight`` for tied embeddings, where the
    checkpoint stores no separate head)."""
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    try:
        tensors = checkpoint_tensors(fs, root, ["model.norm.weight", head])
    except KeyError:
        if tied:
            raise
        tensors = checkpoint_tensors(fs, root, ["model.norm.weight", "model.embed_tokens.weight"])
        head = "model.embed_tokens.weight"
    return ReadoutWeights(tensors["model.norm.weight"], tensors[head], None, "hub")


def hub_readout(model_id: str, revision: str, tied: bool) -> ReadoutWeights | None:
    """The readout from the hub's checkpoint (:func:`checkpoint_readout` over ``HfFileSystem``),
    or None where the hub is not reachable (``HF_HUB_OFFLINE=1``, no network, a gated repo
    without a token, no safetensors)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or model_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import HfFileSystem

        return checkpoint_readout(HfFileSystem(), f"{model_id}@{revision}", tied)
    except Exception:  # unreachable, gated, no safetensors: the server's module calls instead
        return None


# ------------------------------------------------------------------ module calls on the server
def identity_chunks(
    d_model: int, vocab: int, itemsize: int, start: int = 0
) -> list[tuple[int, int]]:
    """``[(start, stop)]`` rows of the identity per request from row ``start`` on, each
    result (``rows x vocab`` elements of ``itemsize`` bytes) under :data:`READOUT_RESULT_BYTES`."""
    rows = max(1, READOUT_RESULT_BYTES // max(1, vocab * itemsize))
    return [(s, min(s + rows, d_model)) for s in range(start, d_model, rows)]


def server_readout(
    lm, d_model: int, vocab: int, remote, *, eps: float, itemsize: int = 2
) -> ReadoutWeights:
    """The readout from module calls in remote traces (no parameter is read): ``gamma`` from
    ``norm(NORM_PROBE * 1) / s`` (``s`` the norm's own scale of that vector: 1 up to eps),
    ``W_U`` column by column from ``lm_head(e_i) - lm_head(0)``, in the dtype the server's pass
    runs in (read off a one-token forward's ``lm_head`` input).

    Args:
        lm: the nnsight model (a remote one's requests go to the server).
        remote: what ``lm.trace`` takes (True, or ``"local"`` for nnsight's simulation).
        eps: the norm's epsilon (from the config).
        itemsize: bytes per element the server is expected to send (sizes the first chunk;
            the rest are sized by what it sent).
    """
    import nnsight

    def one_request(start: int, stop: int, with_norm: bool):
        with torch.no_grad(), lm.trace(torch.zeros(1, 1, dtype=torch.long), remote=remote):
            hidden = lm.lm_head.input  # [1, 1, d]: its dtype and device are the server's
            eye = torch.eye(d_model, dtype=hidden.dtype, device=hidden.device)[start:stop]
            base = lm.lm_head(torch.zeros_like(eye[:1]))  # [1, V]: the bias (zeros without)
            probe = torch.full((1, d_model), NORM_PROBE, dtype=hidden.dtype).to(hidden.device)
            # one saved name per result: a second name for the same object is sent twice
            fetched = nnsight.save(
                {
                    "columns": lm.lm_head(eye) - base,  # [rows, V] = W_U[:, start:stop].T
                    "bias": base[0],
                    **({"normed": lm.model.norm(probe)[0]} if with_norm else {}),
                }
            )
        return fetched

    columns, first, start = [], None, 0
    while start < d_model:  # the first chunk is sized by the expected dtype, the rest by the sent
        stop = identity_chunks(d_model, vocab, itemsize, start)[0][1]
        got = one_request(start, stop, with_norm=first is None)
        first = first if first is not None else got
        columns.append(got["columns"].cpu())
        itemsize, start = got["columns"].element_size(), stop
    normed = first["normed"].cpu()
    dtype = normed.dtype
    probe = torch.full((d_model,), NORM_PROBE, dtype=torch.float32)
    # the norm's arithmetic on the probe (float32, then the pass's dtype): 1.0 for eps < 0.0039
    scale = (probe * torch.rsqrt(probe.pow(2).mean() + eps)).to(dtype).float()
    gamma = (normed.float() / scale).to(dtype)
    weight = torch.cat(columns, dim=0).T.contiguous()  # [V, d]
    bias = first["bias"].cpu()
    return ReadoutWeights(gamma, weight, None if not bias.any() else bias, "server")


def fetch(
    lm,
    model_id: str,
    *,
    d_model: int,
    vocab: int,
    tied: bool,
    eps: float,
    remote,
    itemsize: int = 2,
    revision: str = "main",
    cache: bool = True,
) -> ReadoutWeights:
    """The readout of a remote model: the cache, else the hub's checkpoint, else the server's
    module calls (see the module docstring); what was fetched is stored in the cache.

    ``cache`` off asks the server every time and keeps nothing (a dry run, whose answers are
    placeholders and which counts every request a fresh run makes; nnsight's local
    simulation, whose model is a local directory)."""
    if cache:
        cached = load_cached(model_id, revision)
        if cached is not None:
            return cached
        weights = hub_readout(model_id, revision, tied)
        if weights is not None:
            return store(model_id, revision, weights)
    weights = server_readout(lm, d_model, vocab, remote, eps=eps, itemsize=itemsize)
    return store(model_id, revision, weights) if cache else weights


__all__ = [
    "NORM_PROBE",
    "READOUT_RESULT_BYTES",
    "ReadoutWeights",
    "checkpoint_readout",
    "checkpoint_tensors",
    "fetch",
    "hub_readout",
    "identity_chunks",
    "load_cached",
    "readout_cache_dir",
    "server_readout",
    "store",
]

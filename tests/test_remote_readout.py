"""A remote model's readout without a parameter read in a trace (cgar_interp.remote_readout).

- from the server through module calls: equal to the local model's weights, and it works where
  the request cannot read a module's weights (the sandboxed fake server), where a direct
  weight read fails;
- from the disk cache: a second handle sends no request; a file whose content no longer
  matches its hash is ignored and fetched again; a dry run neither reads nor fills it;
- from a checkpoint's safetensors shards by byte range (an fsspec filesystem: the hub's in
  use, a local one here), single-file, sharded and tied-embedding checkpoints.
"""

import json
import warnings

import fsspec
import pytest
import torch
from safetensors.torch import save_file

from cgar_interp import remote_readout
from cgar_interp.models import load_model
from tests.test_remote import (  # noqa: F401  (fixtures)
    FakeNDIF,
    ndif_env,
    no_network,
    weightless_dir,
)


@pytest.fixture
def sandbox(monkeypatch, tiny_handles):
    from nnsight.intervention.backends.remote import RemoteBackend

    fake = FakeNDIF(tiny_handles["nnsight"].backend.engine, sandbox=True)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, req, tr: fake(self, req, tr))
    return fake


def remote_handle(model_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(model_id, backend="nnsight", remote=True)


def test_the_server_readout_equals_the_local_weights_in_a_sandbox(ndif_env, sandbox, tiny_handles):
    local = tiny_handles["nnsight"].readout()
    handle = remote_handle(ndif_env)
    got = handle.readout()
    assert sandbox.sent, "the readout came from nowhere"
    assert handle.backend.readout_source == "server"
    assert torch.equal(got.weight, local.weight)
    torch.testing.assert_close(got.gamma, local.gamma, rtol=0, atol=1e-7)
    assert got.bias is None and got.eps == local.eps
    h = torch.randn(3, local.weight.shape[1])
    torch.testing.assert_close(
        handle.decode_residual(h), tiny_handles["nnsight"].decode_residual(h)
    )


def test_a_weight_read_inside_a_trace_fails_in_the_sandbox(ndif_env, sandbox):
    """The check the sandbox makes can fail: the old readout (``lm.lm_head.weight`` saved in a
    remote trace) is refused."""
    import nnsight

    lm = remote_handle(ndif_env).backend.engine
    ids = torch.zeros(1, 1, dtype=torch.long)
    with (
        pytest.raises(Exception, match="not available to a request"),
        torch.no_grad(),
        lm.trace(ids, remote=True),
    ):
        nnsight.save(lm.lm_head.weight)


def test_the_second_handle_reads_the_cache_and_a_damaged_file_is_fetched_again(
    ndif_env, sandbox, tiny_handles
):
    first = remote_handle(ndif_env).readout()
    sent = len(sandbox.sent)
    root = remote_readout.readout_cache_dir()
    index = json.loads((root / "index.json").read_text())
    (entry,) = index.values()
    assert entry["source"] == "server" and entry["shape"] == list(first.weight.shape)

    again = remote_handle(ndif_env)
    assert torch.equal(again.readout().weight, first.weight)
    assert again.backend.readout_source == "cache" and len(sandbox.sent) == sent

    path = root / f"{entry['sha256']}.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")  # the content no longer hashes
    third = remote_handle(ndif_env)
    assert torch.equal(third.readout().weight, first.weight)
    assert third.backend.readout_source == "server" and len(sandbox.sent) > sent


def test_a_dry_run_readout_is_neither_read_from_nor_written_to_the_cache(ndif_env, sandbox):
    handle = remote_handle(ndif_env).with_options(placeholder_decode=True)
    handle.readout()
    assert handle.backend.readout_source == "server"
    assert not (remote_readout.readout_cache_dir() / "index.json").exists()


def test_the_readout_requests_are_chunked_under_the_byte_cap(monkeypatch, ndif_env, sandbox):
    d_model, vocab = 64, 128  # the tiny Llama
    monkeypatch.setattr(remote_readout, "READOUT_RESULT_BYTES", 10 * vocab * 4)
    chunks = remote_readout.identity_chunks(d_model, vocab, 4)
    assert chunks[0] == (0, 10) and chunks[-1] == (60, 64) and len(chunks) == 7
    handle = remote_handle(ndif_env)  # expects bfloat16 (20 rows); the tiny server sends float32
    assert handle.dtype == torch.bfloat16
    handle.readout()
    assert len(sandbox.sent) == 1 + len(remote_readout.identity_chunks(d_model, vocab, 4, 20))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_tensors_read_only_the_named_tensors(tiny_llama_dir, tiny_handles):
    """The single-file checkpoint of the tiny Llama, read by byte range through fsspec."""
    fs = fsspec.filesystem("file")
    weights = remote_readout.checkpoint_readout(fs, str(tiny_llama_dir), tied=False)
    local = tiny_handles["hf"].readout()
    assert torch.equal(weights.weight, local.weight) and torch.equal(weights.gamma, local.gamma)
    assert weights.source == "hub"
    with pytest.raises(KeyError, match="no.such"):
        remote_readout.checkpoint_tensors(fs, str(tiny_llama_dir), ["no.such.tensor"])


def test_a_sharded_and_a_tied_checkpoint(tmp_path):
    torch.manual_seed(0)
    norm, head, embed = torch.randn(8), torch.randn(16, 8), torch.randn(16, 8)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"model.embed_tokens.weight": embed}, str(sharded / "a.safetensors"))
    save_file(
        {"model.norm.weight": norm, "lm_head.weight": head.to(torch.bfloat16)},
        str(sharded / "b.safetensors"),
    )
    weight_map = {
        "model.embed_tokens.weight": "a.safetensors",
        "model.norm.weight": "b.safetensors",
        "lm_head.weight": "b.safetensors",
    }
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fs = fsspec.filesystem("file")
    got = remote_readout.checkpoint_readout(fs, str(sharded), tied=False)
    assert got.weight.dtype == torch.bfloat16 and torch.equal(got.weight, head.to(torch.bfloat16))
    assert torch.equal(got.gamma, norm)

    tied = tmp_path / "tied"
    tied.mkdir()
    save_file(
        {"model.embed_tokens.weight": embed, "model.norm.weight": norm},
        str(tied / "model.safetensors"),
    )
    got = remote_readout.checkpoint_readout(fs, str(tied), tied=True)
    assert torch.equal(got.weight, embed)


def test_the_hub_is_not_asked_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert remote_readout.hub_readout("meta-llama/Llama-3.1-70B", "main", tied=False) is None

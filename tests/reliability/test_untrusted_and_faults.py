"""Untrusted checkpoints, numerical faults, stale temp files (tiny model; seconds)."""

import shutil

import pytest
import torch

from cgar_interp import load_model
from cgar_interp.probes import ProbeContext
from cgar_interp.probes.base import NonFiniteActivation
from cgar_interp.results import atomic_write_text
from cgar_interp.rundir import RunDir

from ..probe_helpers import synthetic_inputs


@pytest.fixture()
def checkpoint_copy(tiny_llama_dir, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_llama_dir, target)
    return target


def test_pickle_checkpoints_are_refused_unless_opted_in(checkpoint_copy):
    from safetensors.torch import load_file

    weights = checkpoint_copy / "model.safetensors"
    torch.save(load_file(weights), checkpoint_copy / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(
        ValueError, match=r"pickle-based weights \(pytorch_model.bin\).*allow_pickle=True"
    ):
        load_model(checkpoint_copy, backend="hf")
    handle = load_model(checkpoint_copy, backend="hf", allow_pickle=True)
    assert handle.arch.n_layers == 2


def test_truncated_weights_file_is_a_clear_error(checkpoint_copy):
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"could not be read .*truncated or corrupt"):
        load_model(checkpoint_copy, backend="hf")


def test_missing_tokenizer_is_a_clear_error(checkpoint_copy):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (checkpoint_copy / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"has no usable tokenizer"):
        load_model(checkpoint_copy, backend="hf")


def test_remote_code_is_never_trusted(tiny_handles):
    for handle in tiny_handles.values():
        config = handle.backend.hf_model.config
        assert not getattr(config, "trust_remote_code", False)
        assert type(handle.backend.hf_model).__module__.startswith("transformers.")


def test_nan_in_activations_is_reported_with_layer_and_prompt(tiny_handles):
    handle = tiny_handles["hf"]
    inputs = synthetic_inputs(n=6, controls=False)
    block = handle.backend.hf_model.model.layers[0]

    def poison(module, args, out):
        out = out.clone()
        out[2, :, 0] = float("nan")  # every position of the third row of the batch
        return out

    hook = block.register_forward_hook(poison)
    try:
        ctx = ProbeContext(handle, inputs, (1, 2), n_boot=0, batch_size=8)
        with pytest.raises(NonFiniteActivation, match=r"non-finite values at resid\.1 .*query row"):
            ctx.captures()
    finally:
        hook.remove()


def test_a_killed_writers_temp_files_are_cleared_on_resume(tmp_path):
    identity = {"config_hash": "x"}
    with RunDir.open(tmp_path, identity) as run:
        run.write_manifest({"identity": identity})
    stale = tmp_path / "tables" / ".context_gate.parquet.abc123.part"
    stale.parent.mkdir()
    stale.write_bytes(b"half a file")
    with RunDir.open(tmp_path, identity, resume=True):
        assert not stale.exists()
    atomic_write_text(tmp_path / "x.txt", "whole")
    assert [p.name for p in tmp_path.glob(".*.part")] == []

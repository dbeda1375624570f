"""Bad input gets a clear error naming the bad value and what would be valid."""

import pytest
import torch

from cgar_interp import load_model


def test_unknown_model_path():
    with pytest.raises(ValueError, match=r"unknown model '/no/such/dir'.*Valid: 'embedded'"):
        load_model("/no/such/dir")


def test_directory_without_config(tmp_path):
    with pytest.raises(ValueError, match=r"has no config.json"):
        load_model(tmp_path)


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(
        ValueError,
        match=r"could not load model 'nobody/no-such-model'.*HF_HUB_OFFLINE=1.*local directory",
    ):
        load_model("nobody/no-such-model")


def test_unknown_backend_and_dtype(tiny_llama_dir):
    with pytest.raises(
        ValueError, match=r"unknown backend 'tl'; valid backends: transformer_lens, nnsight, hf"
    ):
        load_model(tiny_llama_dir, backend="tl")
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; valid dtypes: float32"):
        load_model(tiny_llama_dir, backend="hf", dtype="fp8")
    with pytest.raises(ValueError, match=r"unknown device 'gpu'"):
        load_model(tiny_llama_dir, backend="hf", device="gpu")


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_bad_sites_layers_positions(tiny_handles, backend):
    handle = tiny_handles[backend]
    ids = torch.randint(3, 128, (2, 5))
    with pytest.raises(ValueError, match=r"unknown site kind 'rsid'; did you mean 'resid'"):
        handle.capture(ids, ["rsid.1"])
    with pytest.raises(ValueError, match=r"layer 3 is out of range .*valid layers are 0\.\.2"):
        handle.capture(ids, ["resid.3"])
    with pytest.raises(ValueError, match=r"layer 2 is out of range .*valid layers are 0\.\.1"):
        handle.capture(ids, ["attn_pattern.2"])
    with pytest.raises(
        ValueError,
        match=r"position 5 is beyond the sequence of row 0 \(length 5\); valid positions are -5\.\.4",
    ):
        handle.capture(ids, ["resid.1"], positions=5)
    with pytest.raises(ValueError, match=r"token id 500 is out of range: valid ids are 0\.\.127"):
        handle.logits(torch.tensor([[1, 500]]))


def test_bad_patches(tiny_handles):
    handle = tiny_handles["hf"]
    ids = torch.randint(3, 128, (2, 5))
    with pytest.raises(
        ValueError, match=r"site attn_pattern.0 cannot be patched; patchable kinds: resid"
    ):
        handle.run_with_patch(ids, "attn_pattern.0", -1, torch.zeros(4))
    with pytest.raises(ValueError, match=r"patch vector of shape \(7,\) does not fit site resid.1"):
        handle.run_with_patch(ids, "resid.1", -1, torch.zeros(7))
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(2, 1, 64\)"):
        handle.run_with_patch(ids, "resid.1", -1, lambda x: x[:, :, :3])


def test_resume_and_decode_shapes(tiny_handles):
    handle = tiny_handles["hf"]
    with pytest.raises(ValueError, match=r"residual has last dimension 5; .* d_model=64"):
        handle.decode_residual(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"layer 3 is out of range for site kind 'resid'"):
        handle.resume(torch.zeros(1, 4, 64), 3)
    with pytest.raises(ValueError, match=r"resume needs the residual at every position"):
        handle.resume(torch.zeros(1, 64), 1)


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"architecture 'gpt2'; cgar_interp supports Llama-family"):
        load_model(tmp_path, backend="hf")


# --- reliability items of issue 15: a broken config.json, and the mode of written files ----


def _broken_config_copy(tiny_llama_dir, tmp_path, text):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "config.json").write_text(text)
    return broken


@pytest.mark.parametrize("remote", [False, True])
def test_config_json_not_json_is_one_line_naming_the_file(tiny_llama_dir, tmp_path, remote):
    good = (tiny_llama_dir / "config.json").read_text()
    broken = _broken_config_copy(tiny_llama_dir, tmp_path, good.rstrip().rstrip("}") + ',\n  "x":')
    backend = "nnsight" if remote else "hf"
    with pytest.raises(
        ValueError, match=r"broken/config\.json is not valid JSON: .* at line \d+, column \d+"
    ) as err:
        load_model(broken, backend=backend, remote=remote)
    message = str(err.value)
    assert "\n" not in message
    assert str(broken / "config.json") in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def test_config_json_not_an_object(tiny_llama_dir, tmp_path):
    broken = _broken_config_copy(tiny_llama_dir, tmp_path, "[1, 2]\n")
    with pytest.raises(ValueError, match=r"config\.json is not a model config: a JSON list"):
        load_model(broken, backend="hf")


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_allows(tmp_path, umask, mode):
    import os
    import stat

    from cgar_interp.results import atomic_write_bytes, atomic_write_json, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        written = [
            atomic_write_json(tmp_path / "manifest.json", {"a": 1}),
            atomic_write_bytes(tmp_path / "tables" / "t.parquet", b"x", tmp_dir=tmp_path / ".tmp"),
        ]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path

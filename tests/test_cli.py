"""The ``cgar`` command line, run in-process through typer's runner."""

import json

from typer.testing import CliRunner

from cgar_interp.cli import app

runner = CliRunner()


def test_info_json_reports_architecture_hash_and_backend(tiny_llama_dir):
    result = runner.invoke(app, ["info", str(tiny_llama_dir), "--backend", "hf", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["architecture"]["n_layers"] == 2
    assert record["architecture"]["n_kv_heads"] == 1
    assert record["backend"] == "hf" and record["dtype"] == "float32" and record["device"] == "cpu"
    assert len(record["model_hash"]) == 64
    assert record["versions"]["torch"].startswith("2.")


def test_info_table(tiny_llama_dir):
    result = runner.invoke(app, ["info", str(tiny_llama_dir), "--backend", "nnsight"])
    assert result.exit_code == 0, result.output
    assert "n_layers" in result.stdout and "nnsight" in result.stdout


def test_info_bad_model_exits_2_with_the_reason():
    result = runner.invoke(app, ["info", "/no/such/model"])
    assert result.exit_code == 2
    assert "unknown model '/no/such/model'" in result.output


def test_sites_lists_every_kind():
    result = runner.invoke(app, ["sites", "--layers", "2"])
    assert result.exit_code == 0
    for kind in ("resid", "attn_pattern", "k_rep", "head_out"):
        assert kind in result.stdout
    assert "resid.2" in result.stdout and "resid.3" not in result.stdout

"""The ``cgar`` command line, run in-process through typer's runner."""

import json
import re

import pandas as pd
import pytest
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


@pytest.fixture
def toy_run(tmp_path):
    """A run directory holding the toy per-query table, with the toy claims registered (8 claim
    ids x 3 tasks and ``all``: tests/test_verdict_matrix.py), as a researcher would add them."""
    from cgar_interp.claims import EXTRA_CLAIMS
    from cgar_interp.rundir import RunDir
    from tests.test_verdict_matrix import TOY_CLAIMS, toy_table

    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest({"identity": {"config_hash": "x"}, "suite": {"name": "toy"}})
        run.write_table("toy", toy_table())
    for claim in TOY_CLAIMS:
        EXTRA_CLAIMS.add(claim)
    try:
        yield tmp_path / "run"
    finally:
        for claim in TOY_CLAIMS:
            EXTRA_CLAIMS.remove(claim.claim_id)


def test_verdict_prints_the_claim_task_matrix_in_100_columns(toy_run):
    result = runner.invoke(app, ["verdict", str(toy_run)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    header = next(line for line in lines if line.startswith("claim "))
    assert header.split() == ["claim", "agnews-mini", "sst2-mini", "trec-mini", "all"]
    for cid in ("11", "12", "13a", "13b", "14", "15", "16", "17"):
        label = [line for line in lines if line.startswith(f"{cid} ")]
        assert len(label) == 2, cid  # its matrix row, then its rule and correction once
        assert "rule: " in label[1]
    assert sum(line.startswith("Correction: Holm over the 31 rows") for line in lines) == 1
    assert "3S 1I 2N" in result.stdout  # claim 12's six rows on a task, counted
    assert "not supported" in result.stdout and "pending" in result.stdout


def test_verdict_rows_gives_every_row_with_its_split_interval_alpha_and_power(toy_run):
    from cgar_interp.claims import build_ledger
    from cgar_interp.runner import RunResults

    result = runner.invoke(app, ["verdict", str(toy_run), "--rows"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    loaded = RunResults.load(toy_run)
    ledger = build_ledger(loaded.tables, loaded.manifest)
    heads = [line for line in lines if re.match(r"^\w+ \| ", line)]
    # one entry per ledger row: by claim id, in ledger order within each
    grouped = pd.concat([ledger[ledger.claim_id == c] for c in dict.fromkeys(ledger.claim_id)])
    for head, row in zip(heads, grouped.itertuples(), strict=True):
        assert head.startswith(f"{row.claim_id} | {row.task} | {row.verdict} | ")
    for name in ("selected on fit", "selected on pre-specified", "(paired", "alpha_i ",
                 "detectable ", "n needed "):  # fmt: skip
        assert name in result.stdout, name
    # an inconclusive difference row: its interval, alpha_i and the queries that would decide it
    row = ledger[(ledger.verdict == "inconclusive") & (ledger.kind == "difference")].iloc[0]
    i = heads.index(next(h for h in heads if h.startswith(f"{row.claim_id} | {row.task} | inc")))
    entry = " ".join(lines[lines.index(heads[i]) + 1 : lines.index(heads[i + 1])])
    assert f"[{row.diff_low:.3g}, {row.diff_high:.3g}]" in entry
    assert f"alpha_i {row.alpha:.3g}" in entry and f"n needed {row.n_needed:.0f}" in entry
    assert sum(line.startswith("claim 12: ") for line in lines) == 1  # its rule once
    rules = [line for line in lines if line.startswith("  rule: supported if the corrected")]
    assert len(rules) == 5  # once per difference claim, not per row


def test_verdict_json_is_the_ledger(toy_run):
    from cgar_interp.claims.base import COLUMNS

    result = runner.invoke(app, ["verdict", str(toy_run), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 40 and list(records[0]) == COLUMNS

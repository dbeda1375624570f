"""Seed robustness: a suite with ``seeds`` runs once per seed into its own run directory, each
resumable, and the ledger decides every row per seed and overall."""

import pandas as pd
import pytest

from cgar_interp.claims.seeds import OVERALL, combine_seeds, overall_verdict
from cgar_interp.runner import run_suite
from cgar_interp.suite import parse_suite

SUITE = {
    "name": "mini-seeds",
    "model": "embedded",
    "backend": "hf",
    "tasks": ["sst2-mini"],
    "n_fit": 6,
    "n_eval": 10,
    "batch_size": 8,
    "n_boot": 100,
    "seeds": [0, 1],
    "probe": [
        {"kind": "context_gate", "context_layers": [28, 30], "lambdas": [0, 1, 10],
         "vectors": ["context", "random"]},
        {"kind": "task_vectors", "layers": [20, 30]},
    ],
}  # fmt: skip


def ledger(verdicts: list[str], seed_shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "claim_id": ["1", "2", "3a"][: len(verdicts)],
            "task": "t",
            "key": ["label_mass", "c=2/label_mass", "flipped/label_mass"][: len(verdicts)],
            "verdict": verdicts,
            "value": 0.5 + seed_shift,
            "control_value": 0.1,
            "diff": 0.4 + seed_shift,
            "diff_low": 0.3 + seed_shift,
            "diff_high": 0.5 + seed_shift,
            "selected_on": "fit",
            "n": 48,
            "p_value": 0.001,
        }
    )


def test_the_overall_verdict_needs_every_seed():
    combined = combine_seeds(
        {
            0: ledger(["supported", "supported", "not supported"]),
            1: ledger(["supported", "inconclusive", "not supported"], 0.1),
            2: ledger(["supported", "supported"], 0.2),  # lacks the third row
        }
    )
    overall = combined[combined.seed == OVERALL].set_index("claim_id")
    assert overall.loc["1", "verdict"] == "supported"
    assert overall.loc["2", "verdict"] == "inconclusive"  # one seed could not decide it
    assert overall.loc["3a", "verdict"] == "inconclusive"  # a seed does not have the row
    assert overall.loc["1", "diff"] == pytest.approx(0.5)  # mean over the seeds
    assert overall.loc["1", "diff_low"] == pytest.approx(0.3)  # envelope of the intervals
    assert overall.loc["1", "diff_high"] == pytest.approx(0.7)
    assert "seed 1: I" in overall.loc["2", "note"]
    assert set(combined.seed) == {"0", "1", "2", OVERALL}
    assert overall_verdict(["not supported"] * 2, 2) == "not supported"
    assert overall_verdict(["untestable"] * 2, 2) == "untestable"


def test_seeds_must_be_distinct_non_negative_ints():
    from cgar_interp.config import ConfigError

    for bad in ([0, 0], [-1], [True]):
        with pytest.raises(ConfigError, match="seeds"):
            parse_suite({**SUITE, "seeds": bad})
    one = parse_suite({k: v for k, v in SUITE.items() if k != "seeds"})
    assert "seeds" not in one.to_dict()  # the hash of one-seed suites does not move


@pytest.mark.integration
def test_each_seed_is_a_run_of_its_own_and_resumes(tmp_path, embedded_handles, monkeypatch):
    from cgar_interp.probes import base

    handle = embedded_handles["hf"]
    suite = parse_suite(SUITE)
    out = tmp_path / "seeds"
    spec = base.PROBES["task_vectors"]
    calls = {"n": 0}

    def boom_on_second_seed(config, ctx):
        calls["n"] += 1
        if calls["n"] == 2:  # seed 1's task vectors: the run is killed there
            raise KeyboardInterrupt
        return spec.run(config, ctx)

    monkeypatch.setitem(
        base.PROBES,
        "task_vectors",
        base.ProbeSpec(spec.kind, spec.config_cls, boom_on_second_seed, spec.doc),
    )
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, handle=handle, report=False)
    assert (out / "seed-0" / "tables" / "claims.parquet").is_file()
    first = (out / "seed-0" / "tables" / "claims.parquet").stat().st_mtime_ns
    monkeypatch.setitem(base.PROBES, "task_vectors", spec)
    result = run_suite(suite, out, handle=handle, report=False, resume=True)
    assert (out / "seed-0" / "tables" / "claims.parquet").stat().st_mtime_ns == first  # kept
    claims = pd.read_parquet(out / "tables" / "claims.parquet")
    assert set(claims.seed) == {"0", "1", OVERALL}
    assert result.tables["claims"].equals(claims)
    # cgar verdict decides the run anew from each seed's tables: the same ledger
    from cgar_interp.runner import run_ledger

    pd.testing.assert_frame_equal(run_ledger(out), claims)
    # the seeds redraw the demonstrations and the split
    p0 = pd.read_parquet(out / "seed-0" / "prompts.parquet")
    p1 = pd.read_parquet(out / "seed-1" / "prompts.parquet")
    assert not p0.text.equals(p1.text)
    # seed 1 of the multi-seed run is the one-seed run with seed = 1: same numbers
    single = parse_suite({**{k: v for k, v in SUITE.items() if k != "seeds"}, "seed": 1})
    alone = run_suite(single, tmp_path / "alone", handle=handle, report=False)
    mine = claims[claims.seed == "1"].drop(columns="seed").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, alone.tables["claims"].reset_index(drop=True))


def test_the_shipped_seed_suite_is_the_paper_suite_under_three_seeds():
    from dataclasses import replace

    from cgar_interp.suite import load_suite

    paper, seeds = load_suite("paper"), load_suite("paper_seeds")
    assert seeds.seeds == (0, 1, 2)
    assert replace(seeds, name="paper", seeds=()).to_dict() == paper.to_dict()

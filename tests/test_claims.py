"""The claims ledger: each rule on synthetic tables whose verdicts are known, and the ledger of
a real run recomputed from its raw tables."""

import math

import pandas as pd
import pytest

from cgar_interp.claims import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    PENDING,
    SUPPORTED,
    Claim,
    build_ledger,
)
from cgar_interp.claims.base import Z95, decide_difference, difference_interval

L = 4  # layers of the synthetic model


def gate_rows(task, mode, vector, c, lam, metric, value, half_width):
    return {
        "task": task,
        "probe": "context_gate",
        "mode": mode,
        "vector": vector,
        "q_layer": L,
        "c_layer": c,
        "lam": lam,
        "metric": metric,
        "value": value,
        "n": 48,
        "ci_low": value - half_width,
        "ci_high": value + half_width,
    }


def synthetic_gate(effect: dict[str, float], shuffled_gap: float, width: float = 0.02):
    """A context-gate table: ``effect[task]`` is the lift at lambda = 1 over lambda = 0."""
    rows = []
    for task, lift in effect.items():
        for metric in ("label_mass", "vocab_correct", "label_correct"):
            base = 0.1
            for mode, c in (("decode", L), ("patch", 2)):
                for lam in (0.0, 1.0):
                    value = base + (lift if lam else 0.0)
                    rows.append(gate_rows(task, mode, "context", c, lam, metric, value, width))
                    if mode == "decode":
                        rows.append(
                            gate_rows(
                                task, mode, "shuffled", c, lam, metric, value - shuffled_gap, width
                            )
                        )
                        rows.append(gate_rows(task, mode, "random", c, lam, metric, base, width))
    return pd.DataFrame(rows)


def test_difference_interval_is_the_stated_normal_approximation():
    row = Claim("1", "c", "t", "r", "x", 0.6, 0.5, 0.7, "ctl", 0.2, 0.15, 0.25)
    diff, low, high, z = difference_interval(row, m=10)
    se = math.hypot(0.2 / (2 * Z95), 0.1 / (2 * Z95))
    assert z == pytest.approx(2.8070, abs=1e-3)  # Phi^-1(1 - 0.05 / 20), closed form
    assert diff == pytest.approx(0.4)
    assert (low, high) == pytest.approx((0.4 - z * se, 0.4 + z * se))


@pytest.mark.parametrize(
    ("value", "control", "margin", "verdict"),
    [
        (0.6, 0.2, 0.02, SUPPORTED),  # the interval lies above 0
        (0.2, 0.2, 0.5, NOT_SUPPORTED),  # lies below the margin: no advantage worth the name
        (0.25, 0.2, 0.02, INCONCLUSIVE),  # straddles 0 and reaches past the margin
        (0.1, 0.3, 0.0, NOT_SUPPORTED),  # the control is better
    ],
)
def test_decide_difference(value, control, margin, verdict):
    row = Claim(
        "x", "c", "t", "r", "task", value, value - 0.05, value + 0.05, "ctl", control,
        control - 0.05, control + 0.05, margin=margin,
    )  # fmt: skip
    decided = decide_difference(row, m=1)
    assert decided.verdict == verdict
    assert "Holm over the 1 rows" in decided.correction and f"below {margin:g}" in decided.rule


def test_ledger_on_synthetic_gate_tables():
    gate = pd.concat(
        [
            synthetic_gate({"strong": 0.5}, shuffled_gap=0.3),
            # no lift, measured tightly: any advantage is excluded down to the 0.02 margin
            synthetic_gate({"none": 0.0}, shuffled_gap=0.3, width=0.002),
        ]
    )
    ledger = build_ledger({"context_gate": gate}, {"architecture": {"n_layers": L}})
    by = {(r.claim_id, r.task, r.test.split(":")[1][:18]): r.verdict for r in ledger.itertuples()}
    for claim in ("1", "2"):
        verdicts = {v for (c, t, _), v in by.items() if c == claim and t == "strong"}
        assert verdicts == {SUPPORTED}
        verdicts = {v for (c, t, _), v in by.items() if c == claim and t == "none"}
        assert verdicts == {NOT_SUPPORTED}  # lift 0: the interval lies below the 0.02 margin
    strong = ledger[(ledger.task == "strong") & ledger.claim_id.isin(["3a", "3b"])]
    assert set(strong.verdict) == {SUPPORTED}  # beats shuffled by 0.3 and random by 0.5
    assert len(strong) == 3  # shuffled: accuracy among labels and label mass; random: mass
    # every difference row carries the same correction, counted over all of them
    m = int((ledger.kind == "difference").sum())
    assert all(f"Bonferroni over {m} comparisons" in c for c in ledger.correction if c)


def test_claims_wait_for_probes_the_run_does_not_have():
    gate = synthetic_gate({"t": 0.5}, shuffled_gap=0.0)
    ledger = build_ledger({"context_gate": gate}, {"architecture": {"n_layers": L}})
    assert "8" not in set(ledger.claim_id)  # no Hopfield probe: no head claims at all
    from cgar_interp.claims.head_necessity import heads_are_necessary

    (row,) = heads_are_necessary({"context_gate": gate, "hopfield_heads": pd.DataFrame()}, {})
    assert row.verdict == PENDING and "head_mediation" in row.note
    assert math.isnan(row.value)  # no number is made up for it


def test_report_opens_with_the_ledger_and_its_rows_link_to_figures(tmp_path):
    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    gate = synthetic_gate({"t": 0.5}, shuffled_gap=0.3)
    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest(
            {"identity": {"config_hash": "x"}, "suite": {"name": "s", "tasks": ["t"]},
             "architecture": {"n_layers": L}}
        )  # fmt: skip
        run.write_table("context_gate", gate)
    page = build_report(tmp_path / "run").read_text()
    body = page[page.index("<body>") :]
    assert body.index('id="verdict"') < body.index('class="prov"')  # the first section
    assert body.index('id="verdict"') < body.index("<h2>context gate</h2>")
    assert '<a href="#fig-context_gate-t">context_gate-t</a>' in body  # a row cites its figure
    assert 'id="fig-context_gate-t"' in body  # ... which is on the page


def check_ledger_against_raw_tables(run_dir):
    """Every gate row of a run's ledger, recomputed from the raw context-gate table."""
    ledger = pd.read_parquet(run_dir / "tables" / "claims.parquet")
    gate = pd.read_parquet(run_dir / "tables" / "context_gate.parquet")
    assert set(ledger.claim_id) >= {"1", "2", "3a", "3b"}
    m = int((ledger.kind == "difference").sum())
    z = float(__import__("scipy.stats").stats.norm.ppf(1 - 0.05 / (2 * m)))
    for r in ledger[ledger.kind == "difference"].itertuples():
        if r.claim_id in ("1", "2", "3a", "3b"):  # the gate claims' numbers, from the raw rows
            mode = "decode" if r.claim_id in ("1", "3a", "3b") else "patch"
            c = 30 if mode == "decode" else int(r.reads.split("c_layer=")[1].split(",")[0])
            metric = r.reads.split("metric=")[1].split(",")[0]
            sel = gate[
                (gate.task == r.task)
                & (gate["mode"] == mode)
                & (gate.c_layer == c)
                & (gate.metric == metric)
            ]
            mine = sel[sel.vector == "context"]
            if r.claim_id in ("1", "2"):
                best = mine[mine.lam > 0].value.max()
                base = mine[mine.lam == 0].iloc[0]
                assert r.value == pytest.approx(best)
                assert r.control_value == pytest.approx(base.value)
            else:
                lam = float(r.reads.split("lam=")[1].split(",")[0])
                vector = "shuffled" if r.claim_id == "3a" else "random"
                other = sel[(sel.vector == vector) & (sel.lam == lam)].iloc[0]
                assert r.control_value == pytest.approx(other.value)
        # every difference row: its interval and verdict, recomputed from its own numbers
        se_a = (r.ci_high - r.ci_low) / (2 * 1.959963984540054)
        se_b = (r.control_ci_high - r.control_ci_low) / (2 * 1.959963984540054)
        low = r.value - r.control_value - z * math.hypot(se_a, se_b)
        assert r.diff_low == pytest.approx(low)
        high = r.value - r.control_value + z * math.hypot(se_a, se_b)
        assert r.diff_high == pytest.approx(high)
        expected = SUPPORTED if low > 0 else NOT_SUPPORTED if high < r.margin else INCONCLUSIVE
        assert r.verdict == expected
    return ledger


@pytest.mark.integration
def test_ledger_of_a_real_run_matches_its_raw_tables(tmp_path, embedded_handles):
    """Each gate row's numbers are the raw table's rows, recomputed independently here."""
    from cgar_interp.runner import run_suite
    from cgar_interp.suite import parse_suite

    suite = parse_suite(
        {
            "model": "embedded",
            "backend": "hf",
            "tasks": ["sst2-mini"],
            "n_fit": 6,
            "n_eval": 12,
            "n_boot": 100,
            "probe": [{"kind": "context_gate", "context_layers": [24, 30], "lambdas": [0, 1, 10]}],
        }
    )
    run = run_suite(suite, tmp_path / "run", handle=embedded_handles["hf"], report=False)
    ledger = check_ledger_against_raw_tables(tmp_path / "run")
    assert run.tables["claims"].equals(ledger)


@pytest.mark.slow
def test_ledger_of_the_paper_suite(tmp_path):
    """The paper suite on the embedded model: every claim it can test has rows, the gate rows
    equal a recomputation from the raw tables, and the whole ledger equals one rebuilt from
    the tables on disk."""
    from cgar_interp.claims import build_ledger
    from cgar_interp.runner import RunResults, run_suite
    from cgar_interp.suite import load_suite

    run_suite(load_suite("paper", backend="hf"), tmp_path / "run", report=False)
    ledger = check_ledger_against_raw_tables(tmp_path / "run")
    assert set(ledger.claim_id) == {"1", "2", "3a", "3b", "4a", "4b", "5", "6", "7a", "7b", "8"}
    assert set(ledger.task) == {"sst2-mini", "trec-mini", "agnews-mini", "all"}
    consistency = ledger[ledger.kind == "consistency"]
    assert len(consistency) == 3 and set(consistency.verdict) == {"consistency check"}
    loaded = RunResults.load(tmp_path / "run")
    tables = {k: v for k, v in loaded.tables.items() if k != "claims"}
    rebuilt = build_ledger(tables, loaded.manifest)
    pd.testing.assert_frame_equal(rebuilt, ledger)


def test_claim_8_reads_the_ablation_once_head_mediation_has_run():
    """An older run's tidy ablation rows (eval-chosen heads, unmatched random sets, no
    per-query values) give no verdict; tests/test_head_necessity.py decides the paired rows."""
    from cgar_interp.claims.base import UNTESTABLE
    from cgar_interp.claims.head_necessity import heads_are_necessary

    def ablation(task, set_name, metric, change, half=0.02):
        return {"task": task, "part": "ablation", "set": set_name, "metric": metric,
                "value": change, "ci_low": change - half, "ci_high": change + half, "n": 24}  # fmt: skip

    table = pd.DataFrame(
        [
            ablation("necessary", "top_label", "label_mass_drop", -0.6),
            ablation("necessary", "random", "label_mass_drop", -0.03),
        ]
    )
    (row,) = heads_are_necessary({"head_mediation": table}, {})
    assert row.task == "necessary" and row.verdict == UNTESTABLE and "re-run" in row.note

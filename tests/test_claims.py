"""The claims ledger: each rule on synthetic tables whose verdicts are known, and the ledger of
a real run recomputed from its raw tables."""

import math
import zlib

import numpy as np
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


def synthetic_gate(effect: dict[str, float], flipped_gap: float, width: float = 0.02):
    """A tidy context-gate table (no per-query values, an old run): ``effect[task]`` is the
    lift at lambda = 1 over lambda = 0."""
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
                                task, mode, "flipped", c, lam, metric, value - flipped_gap, width
                            )
                        )
                        rows.append(gate_rows(task, mode, "random", c, lam, metric, base, width))
    return pd.DataFrame(rows)


def synthetic_gate_queries(
    effect: dict[str, float],
    flipped_gap: float,
    noise: float = 0.02,
    lams=(0.0, 1.0, 10.0),
    n_fit: int = 16,
    n_eval: int = 48,
    seed: int = 0,
    baseline_noise: float | None = None,
    metrics=("label_mass", "vocab_correct", "label_correct"),
    modes=(("decode", L), ("patch", 2)),
    vectors=("context", "flipped", "random", "random_labels"),
):
    """Per-query context-gate values and their tidy eval means: per query a shared level
    ``u_q`` (what the queries' difficulty adds to every grid point alike) plus the lift
    ``effect[task]`` at lambda = 1 (half of it at lambda = 10) and independent noise."""
    rng = np.random.default_rng(seed)
    qrows = []
    for task, lift in effect.items():
        n = n_fit + n_eval
        level = rng.normal(0.3, 0.15, n)  # shared by every grid point of the query
        split = np.array(["fit"] * n_fit + ["eval"] * n_eval)
        for metric in metrics:
            for mode, c in modes:
                for vector in vectors:
                    if mode == "patch" and vector != "context":
                        continue
                    for lam in lams:
                        gain = {0.0: 0.0, 1.0: lift, 10.0: lift / 2}.get(lam, 0.0)
                        if vector in ("flipped", "random_labels"):
                            gain = gain - flipped_gap if lam else 0.0
                        elif vector == "random":
                            gain = 0.0
                        sd = noise if lam or baseline_noise is None else baseline_noise
                        value = level + gain + rng.normal(0, sd, n)
                        qrows.append(
                            pd.DataFrame(
                                {"task": task, "probe": "context_gate", "mode": mode,
                                 "vector": vector, "q_layer": L, "c_layer": c, "lam": lam,
                                 "metric": metric, "query": np.arange(n), "split": split,
                                 "value": value}
                            )
                        )  # fmt: skip
    queries = pd.concat(qrows, ignore_index=True)
    keys = ["task", "probe", "mode", "vector", "q_layer", "c_layer", "lam", "metric"]
    ev = queries[queries.split == "eval"]
    tidy = ev.groupby(keys, as_index=False).value.agg(["mean", "std", "count"])
    tidy = tidy.rename(columns={"mean": "value", "count": "n"})
    half = 1.96 * tidy.pop("std") / np.sqrt(tidy.n)
    tidy["ci_low"], tidy["ci_high"] = tidy.value - half, tidy.value + half
    return tidy, queries


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
    strong = synthetic_gate_queries({"strong": 0.5}, flipped_gap=0.3, seed=1)
    # no lift, measured tightly: any advantage is excluded down to the 0.02 margin
    none = synthetic_gate_queries({"none": 0.0}, flipped_gap=0.3, noise=0.002, seed=2)
    tables = {
        "context_gate": pd.concat([strong[0], none[0]]),
        "context_gate_queries": pd.concat([strong[1], none[1]]),
    }
    ledger = build_ledger(tables, {"architecture": {"n_layers": L}}, n_boot=2000)
    for claim in ("1", "2"):
        rows = ledger[ledger.claim_id == claim]
        assert set(rows[rows.task == "strong"].verdict) == {SUPPORTED}
        assert set(rows[rows.task == "none"].verdict) == {NOT_SUPPORTED}  # below the margin
        assert set(rows.selected_on) == {"fit"}  # lambda* chosen on the fit queries
        assert (rows[rows.task == "strong"].test.str.contains("lambda\\* = 1 ")).all()
    strong_rows = ledger[(ledger.task == "strong") & ledger.claim_id.isin(["3a", "3b", "3c"])]
    assert set(strong_rows.verdict) == {SUPPORTED}  # beats flipped/random labels by 0.3, random
    assert len(strong_rows) == 5  # labels: accuracy among labels and mass each; random: mass
    assert (ledger.method[ledger.kind == "difference"].str.startswith("paired bootstrap")).all()
    m = int((ledger.kind == "difference").sum())
    assert all(f"Holm over the {m} rows" in c for c in ledger.correction if c)


def test_an_old_run_without_per_query_values_is_decided_and_says_how():
    gate = synthetic_gate({"strong": 0.5}, flipped_gap=0.3)
    gate = gate.replace({"vector": {"flipped": "shuffled"}})  # as runs named it then
    ledger = build_ledger({"context_gate": gate}, {"architecture": {"n_layers": L}})
    rows = ledger[ledger.kind == "difference"]
    assert set(rows.claim_id) == {"1", "2", "3a", "3b"}
    assert set(rows.verdict) == {SUPPORTED}
    assert rows.method.str.startswith("normal approximation").all()
    assert rows.selected_on.str.startswith("eval (in-sample").all()


def test_claims_wait_for_probes_the_run_does_not_have():
    gate = synthetic_gate({"t": 0.5}, flipped_gap=0.0)
    ledger = build_ledger({"context_gate": gate}, {"architecture": {"n_layers": L}})
    assert "8" not in set(ledger.claim_id)  # no Hopfield probe: no head claims at all
    from cgar_interp.claims.head_necessity import heads_are_necessary

    (row,) = heads_are_necessary({"context_gate": gate, "hopfield_heads": pd.DataFrame()}, {})
    assert row.verdict == PENDING and "head_mediation" in row.note
    assert math.isnan(row.value)  # no number is made up for it


def test_report_opens_with_the_ledger_and_its_rows_link_to_figures(tmp_path):
    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    gate = synthetic_gate({"t": 0.5}, flipped_gap=0.3)
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


def numpy_holm(p: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down written out: levels alpha / (m - rank) and the rejections."""
    m = len(p)
    levels, rejected = np.empty(m), np.zeros(m, dtype=bool)
    still = True
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        levels[i] = alpha / (m - rank)
        still = still and p[i] <= levels[i]
        rejected[i] = still
    return levels, rejected


def numpy_gate_row(queries, r, n_layers):
    """A gate claim's row recomputed from the per-query table with numpy alone: lambda*
    from the fit means, the eval queries paired, a plain bootstrap of the mean difference."""
    keys = {"task": r.task}
    if r.claim_id == "1":
        keys.update(mode="decode", vector="context", c_layer=n_layers, q_layer=n_layers)
        keys["metric"] = r.key
        control_vector, choose_metric = "context", r.key
    elif r.claim_id == "2":
        c, metric = r.key.split("/")
        keys.update(mode="patch", vector="context", c_layer=int(c[2:]), metric=metric)
        control_vector, choose_metric = "context", metric
    else:
        control_vector, metric = r.key.split("/")
        keys.update(mode="decode", vector="context", c_layer=n_layers, q_layer=n_layers)
        keys["metric"] = metric
        choose_metric = "label_mass"
    sel = queries
    for name, want in {**keys, "metric": choose_metric}.items():
        sel = sel[sel[name] == want]
    fit = sel[(sel.split == "fit") & (sel.lam > 0)].groupby("lam").value.mean().sort_index()
    lam = float(fit.idxmax())
    assert f"lambda* = {lam:g} " in r.test
    base = queries
    for name, want in keys.items():
        if name != "vector":
            base = base[base[name] == want]
    base = base[base.split == "eval"]
    a = base[(base.vector == "context") & (base.lam == lam)].set_index("query").value
    b = base[(base.vector == control_vector) & (base.lam == (0.0 if r.claim_id in "12" else lam))]
    return numpy_paired(a, b.set_index("query").value, r)


def numpy_paired(a: pd.Series, b: pd.Series, r):
    """``(diff, draws, p, p_above, p_below)`` of a row's paired values (indexed by query),
    with numpy alone: the row's seed and B, resamples drawn in blocks as the ledger does."""
    both = a.index.intersection(b.index).sort_values()
    a, b = a.loc[both].to_numpy(), b.loc[both].to_numpy()
    rng = np.random.default_rng(zlib.crc32(f"{r.claim_id}|{r.task}|{r.key}".encode()))
    n_boot = int(r.n_boot)  # the ledger's B (at least 20 m / alpha)
    block = max(1, 2_000_000 // len(a))  # drawn in blocks of that many resamples
    idx = np.concatenate(
        [
            rng.integers(0, len(a), size=(min(block, n_boot - start), len(a)))
            for start in range(0, n_boot, block)
        ]
    )
    draws = a[idx].mean(1) - b[idx].mean(1)
    p_above = (1 + (draws <= r.threshold).sum()) / (1 + n_boot)
    p_below = (1 + (draws >= r.margin).sum()) / (1 + n_boot)
    return a.mean() - b.mean(), draws, min(1.0, 2 * min(p_above, p_below)), p_above, p_below


def check_ledger_against_raw_tables(run_dir, n_layers=30):
    """Every gate row of a run's ledger recomputed from its per-query table with numpy, and
    the Holm levels and verdicts of every row recomputed from the rows' p-values."""
    ledger = pd.read_parquet(run_dir / "tables" / "claims.parquet")
    queries = pd.read_parquet(run_dir / "tables" / "context_gate_queries.parquet")
    queries = queries.replace({"vector": {"shuffled": "flipped"}})  # runs before the rename
    assert set(ledger.claim_id) >= {"1", "2", "3a", "3b"}
    family = ledger[(ledger.kind == "difference") | ledger.p_value.notna()]
    levels, rejected = numpy_holm(family.p_value.to_numpy())
    assert family.alpha.to_numpy() == pytest.approx(levels, rel=1e-12)
    for r, ok in zip(family.itertuples(), rejected, strict=True):
        if r.claim_id in ("1", "2", "3a", "3b", "3c"):
            diff, draws, p, p_above, p_below = numpy_gate_row(queries, r, n_layers)
            assert r.diff == pytest.approx(diff, abs=1e-12)
            assert r.p_value == pytest.approx(p, abs=1e-12)
            low, high = np.quantile(draws, [r.alpha / 2, 1 - r.alpha / 2])
            assert (r.diff_low, r.diff_high) == pytest.approx((low, high), abs=1e-12)
            below = 2 * p_below <= r.alpha  # wholly below the margin: not supported
            expected = (NOT_SUPPORTED if below else SUPPORTED) if ok else INCONCLUSIVE
            assert r.verdict == expected
            assert r.selected_on == "fit"
        elif r.claim_id in ("4a", "4b", "8") and run_dir is not None:
            got = numpy_other_row(run_dir, r, n_layers)
            if got is None:
                continue
            diff, draws, p, p_above, p_below = got
            assert r.diff == pytest.approx(diff, abs=1e-12)
            assert r.p_value == pytest.approx(p, abs=1e-12)
            low, high = np.quantile(draws, [r.alpha / 2, 1 - r.alpha / 2])
            assert (r.diff_low, r.diff_high) == pytest.approx((low, high), abs=1e-12)
        if r.kind == "difference":
            assert (r.verdict != INCONCLUSIVE) == ok
    return ledger


def numpy_other_row(run_dir, r, n_layers):
    """Claims 4 and 8's rows from their per-query tables, as :func:`numpy_paired` reads them:
    4a the shift's label vs non-label energy share at L, 4b the true vs the random-label
    shift's label share, 8 a tested head set's drop vs its layer-matched draws' mean drop."""
    if r.claim_id in ("4a", "4b"):
        q = pd.read_parquet(run_dir / "tables" / "subspace_queries.parquet")
        q = q[(q.task == r.task) & (q.split == "eval") & (q.layer == n_layers)]
        other = "nonlabel_energy" if r.claim_id == "4a" else "random_label_energy"
        a = q[q.metric == "label_energy"].set_index("query").value
        return numpy_paired(a, q[q.metric == other].set_index("query").value, r)
    q = pd.read_parquet(run_dir / "tables" / "head_mediation_queries.parquet")
    parts = r.key.split("/")
    tested = "top_aie" if parts[0] == "top_aie" else "top_label"
    ablation, metric = parts[-2], parts[-1]
    metric = {"label_mass": "label_mass_drop", "accuracy": "vocab_correct_drop"}[metric]
    q = q[(q.task == r.task) & (q.split == "eval") & (q.ablation == ablation)]
    q = q[(q.metric == metric) & (q.part == "ablation")]
    a = q[q.set == tested].set_index("query").value
    b = q[(q.set == f"random_{tested}") & (q.draw == -1)].set_index("query").value
    if a.empty or b.empty:
        return None
    return numpy_paired(-a, -b, r)  # a drop is minus the change (ablated - clean)


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
    ids = {"1", "2", "3a", "3b", "3c", "4a", "4b", "5", "6", "7a", "7b", "8"}  # 3c: random labels
    assert set(ledger.claim_id) == ids
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

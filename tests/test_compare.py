"""Theory vs measurement (cgar_interp.compare) against closed forms and independent numpy code.

Two synthetic worlds are written as run directories by the tests themselves:

- a *section-2 world*: label scores ``b``, ``g`` and measurements generated from
  ``softmax(beta (b + lambda g))`` with a known ``beta`` (the model holds exactly);
- an *RMSNorm world*: a small unembedding ``W``, norm weight ``gamma`` and residuals, with the
  decode ``W (gamma * x / rms(x))`` computed over the whole vocabulary here, independently.

Plus the real probe on the tiny Llama (the new gate_terms columns reconstruct its decode) and
the CLI commands.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cgar_interp.cli import app
from cgar_interp.compare import (
    INF_COLUMNS,
    CompareConfig,
    compare_run,
    compare_tables,
    fit_beta,
    label_margin,
    r_squared,
)

LAMS = (0.0, 0.01, 0.1, 1.0, 10.0)
TASK = "synthetic"
runner = CliRunner()


# --------------------------------------------------------------------------------------------
# independent helpers (numpy, written for the tests)


def np_label_metrics(logits: np.ndarray, label_ids: list[int], gold: np.ndarray) -> dict:
    """Per-query metrics of full-vocabulary ``logits [n, V]`` (as cgar_interp.metrics defines)."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    p = np.exp(logp)
    lab = logp[:, label_ids]
    norm_lab = lab - np.log(np.exp(lab).sum(-1, keepdims=True))
    ent = -(np.exp(norm_lab) * norm_lab).sum(-1)
    rows = np.arange(len(gold))
    return {
        "vocab_correct": (p.argmax(-1) == np.asarray(label_ids)[gold]).astype(float),
        "label_correct": (lab.argmax(-1) == gold).astype(float),
        "label_mass": np.exp(lab).sum(-1),
        "gold_mass": np.exp(lab[rows, gold]),
        "label_entropy": ent,
        "label_eff": np.exp(ent),
    }


def label_only_metrics(label_logits: np.ndarray, gold: np.ndarray) -> dict:
    """Label-restricted metrics of ``[n, K]`` label logits."""
    z = label_logits - label_logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ent = -(np.exp(logp) * logp).sum(-1)
    return {
        "label_correct": (label_logits.argmax(-1) == gold).astype(float),
        "label_entropy": ent,
        "label_eff": np.exp(ent),
    }


def measured_rows(per_query: dict, q: int, c: int, lam: float, half: float = 0.05) -> list:
    return [
        {
            "task": TASK,
            "probe": "context_gate",
            "mode": "decode",
            "vector": "context",
            "q_layer": q,
            "c_layer": c,
            "lam": lam,
            "metric": name,
            "value": float(v.mean()),
            "n": int(v.size),
            "ci_low": float(v.mean()) - half,
            "ci_high": float(v.mean()) + half,
        }
        for name, v in per_query.items()
    ]


def write_run(path, gate_terms: pd.DataFrame, context_gate: pd.DataFrame, n_layers: int):
    (path / "tables").mkdir(parents=True)
    gate_terms.to_parquet(path / "tables" / "gate_terms.parquet", index=False)
    context_gate.to_parquet(path / "tables" / "context_gate.parquet", index=False)
    manifest = {
        "architecture": {"n_layers": n_layers},
        "suite": {"name": "synthetic", "tasks": [TASK]},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


# --------------------------------------------------------------------------------------------
# the two worlds

BETA_TRUE = 0.37


def section2_world(seed: int = 0, n: int = 60, k: int = 3, q: int = 4, cs=(2, 4)):
    """Raw scores and measurements where ``softmax(beta (b + lambda g))`` holds exactly."""
    rng = np.random.default_rng(seed)
    gold = np.arange(n) % k
    b = rng.normal(0.0, 4.0, (n, k)) + 5.0 * np.eye(k)[gold]
    offsets = rng.normal(0.0, 10.0, n)  # per-query shifts: softmax ignores them
    rows, meas = [], []
    for c in cs:
        g = rng.normal(0.0, 6.0, k)
        for i in range(n):
            for cls in range(k):
                rows.append(
                    {
                        "task": TASK,
                        "query": 100 + i,
                        "gold": int(gold[i]),
                        "q_layer": q,
                        "c_layer": c,
                        "class": cls,
                        "class_name": f"c{cls}",
                        "b": b[i, cls],
                        "g": g[cls],
                        "normed_logit": BETA_TRUE * b[i, cls] + offsets[i],
                        "cbar_norm": 1.0,
                    }
                )
        for lam in LAMS:
            logits = BETA_TRUE * (b + lam * g)
            meas += measured_rows(label_only_metrics(logits, gold), q, c, lam)
    return pd.DataFrame(rows), pd.DataFrame(meas)


def rms_world(
    seed: int = 1,
    n: int = 48,
    k: int = 3,
    d: int = 16,
    vocab: int = 40,
    q: int = 6,
    lams: tuple[float, ...] = LAMS,
):
    """A tiny unembedding with an RMSNorm; gate terms and decode measured independently."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 1.0, (vocab, d))
    gamma = rng.uniform(0.3, 2.0, d)
    eps = 1e-5
    label_ids = [3, 17, 29][:k]
    rest = np.setdiff1d(np.arange(vocab), label_ids)
    gold = np.arange(n) % k
    h = rng.normal(0.0, 3.0, (n, d)) + 1.5 * w[label_ids][gold]
    cbars = {
        2: rng.normal(0.0, 0.5, d) + 0.8 * w[label_ids].mean(0),
        q: rng.normal(0.0, 1.0, d) + 2.0 * w[label_ids[0]],
    }

    def decode(x: np.ndarray) -> np.ndarray:
        return (gamma * x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)) @ w.T

    full0 = decode(h)
    rows, meas = [], []
    for c, cbar in cbars.items():
        inf = decode(cbar[None])[0, rest]  # the decode of cbar alone
        p_inf = np.exp(inf - inf.max())
        p_inf /= p_inf.sum()
        for i in range(n):
            p_rest = np.exp(full0[i, rest] - full0[i, rest].max())
            p_rest /= p_rest.sum()
            for cls, tok in enumerate(label_ids):
                rows.append(
                    {
                        "task": TASK,
                        "query": i,
                        "gold": int(gold[i]),
                        "q_layer": q,
                        "c_layer": c,
                        "class": cls,
                        "class_name": f"c{cls}",
                        "b": w[tok] @ h[i],
                        "g": w[tok] @ cbar,
                        "normed_logit": full0[i, tok],
                        "cbar_norm": float(np.linalg.norm(cbar)),
                        "b_gamma": w[tok] @ (gamma * h[i]),
                        "g_gamma": w[tok] @ (gamma * cbar),
                        "h_ms": float((h[i] ** 2).mean()),
                        "hc_ms": float((h[i] * cbar).mean()),
                        "c_ms": float((cbar**2).mean()),
                        "norm_eps": eps,
                        "lse_rest": float(np.log(np.exp(full0[i, rest]).sum())),
                        "b_gamma_rest_pmean": float(p_rest @ (w[rest] @ (gamma * h[i]))),
                        "g_gamma_rest_pmean": float(p_rest @ (w[rest] @ (gamma * cbar))),
                        "g_rest_mean": float((w[rest] @ cbar).mean()),
                        "g_gamma_rest_mean": float((w[rest] @ (gamma * cbar)).mean()),
                        "lse_rest_inf": float(np.log(np.exp(inf).sum())),
                        "b_gamma_rest_pmean_inf": float(p_inf @ (w[rest] @ (gamma * h[i]))),
                        "g_gamma_rest_pmean_inf": float(p_inf @ (w[rest] @ (gamma * cbar))),
                    }
                )
        for lam in lams:
            logits = decode(h + lam * cbar)
            meas += measured_rows(np_label_metrics(logits, label_ids, gold), q, c, lam)
    return pd.DataFrame(rows), pd.DataFrame(meas), q


@pytest.fixture(scope="module")
def section2_tables():
    terms, meas = section2_world()
    return compare_tables(terms, meas, n_layers=4)


@pytest.fixture(scope="module")
def rms_tables():
    terms, meas, q = rms_world()
    return compare_tables(terms, meas, n_layers=q)


# --------------------------------------------------------------------------------------------
# margins and the beta fit


def test_label_margins_on_a_hand_written_frame():
    b = np.array([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]])
    g = np.array([0.5, -1.0, 2.0])
    gold = np.array([1, 2])
    assert label_margin(b, gold).tolist() == [1.0, -4.0]
    assert label_margin(np.tile(g, (2, 1)), gold).tolist() == [-3.0, 1.5]
    rows = [
        {
            "task": TASK,
            "query": qi,
            "gold": int(gold[qi]),
            "q_layer": 2,
            "c_layer": 2,
            "class": k,
            "class_name": str(k),
            "b": b[qi, k],
            "g": g[k],
            "normed_logit": b[qi, k],
            "cbar_norm": 1.0,
        }
        for qi in range(2)
        for k in range(3)
    ]
    out = compare_tables(pd.DataFrame(rows), pd.DataFrame(), n_layers=2)
    terms = out["theory_terms"].sort_values("query")
    assert terms.delta_raw.tolist() == [1.0, -4.0]
    assert terms.delta_gate.tolist() == [-3.0, 1.5]
    assert terms.gate_favours_gold.tolist() == [False, True]


def test_label_margin_matches_a_loop_on_random_scores():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 5))
    gold = rng.integers(0, 5, 50)
    expected = [
        s[t] - max(s[j] for j in range(5) if j != t) for s, t in zip(scores, gold, strict=True)
    ]
    np.testing.assert_allclose(label_margin(scores, gold), expected, rtol=0, atol=1e-12)


def test_fit_beta_recovers_a_known_temperature_despite_per_query_offsets():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(30, 4))
    fit = fit_beta(b, 2.5 * b + rng.normal(size=(30, 1)) * 7)
    assert fit.converged and fit.beta == pytest.approx(2.5, rel=1e-8)
    assert fit.kl == pytest.approx(0.0, abs=1e-12) and fit.kl_uniform > 0.1
    # targets that do not favour high b give beta = 0 (the uniform model)
    assert fit_beta(b, -b).beta == 0.0


def test_r_squared_closed_forms():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    assert r_squared(y, y) == 1.0
    assert r_squared(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert math.isnan(r_squared(np.ones(4), np.zeros(4)))


# --------------------------------------------------------------------------------------------
# the section-2 world: the first-order model is exact


def test_section2_world_recovers_beta_and_fits_exactly(section2_tables):
    fit = section2_tables["theory_fit"]
    assert fit.beta_eff.iloc[0] == pytest.approx(BETA_TRUE, rel=1e-8)
    assert fit.models.iloc[0] == "first_order"  # no RMSNorm columns: only the raw model
    summ = section2_tables["theory_summary"]
    fo = summ[(summ.model == "first_order") & (summ["mode"] == "decode")]
    assert set(fo.metric) == {"label_correct", "label_entropy", "label_eff"}
    for metric in ("label_correct", "label_entropy", "label_eff"):
        sel = fo[fo.metric == metric]
        assert (sel.max_abs_residual < 1e-9).all(), metric
        assert (sel.r2.dropna() > 1 - 1e-12).all() and sel.r2.notna().any(), metric
        assert (sel.frac_within_ci == 1.0).all()


def test_theory_queries_are_the_per_query_predictions_behind_theory_compare(section2_tables):
    # per query: recomputed here from the world's own b, g and beta (not from compare/)
    terms, _ = section2_world()
    tq = section2_tables["theory_queries"]
    assert set(tq.split) == {"eval"} and set(tq.model) == {"first_order"}
    assert set(tq.lam) == set(LAMS)
    for c, frame in terms.groupby("c_layer"):
        frame = frame.sort_values(["query", "class"])
        k = frame["class"].nunique()
        b = frame.b.to_numpy().reshape(-1, k)
        g = frame.g.to_numpy().reshape(-1, k)
        gold = frame.gold.to_numpy()[::k]
        for lam in LAMS:
            want = label_only_metrics(BETA_TRUE * (b + lam * g), gold)
            for metric, values in want.items():
                got = tq[(tq.c_layer == c) & (tq.lam == lam) & (tq.metric == metric)]
                got = got.sort_values("query")
                assert got["query"].tolist() == sorted(frame["query"].unique().tolist())
                np.testing.assert_allclose(got.value, values, rtol=1e-7, atol=1e-9)
    # and their means are theory_compare's predictions
    cmp_ = section2_tables["theory_compare"]
    pred = cmp_[
        (cmp_.point == "measured") & (cmp_.kind == "prediction") & (cmp_["mode"] == "decode")
    ]
    means = tq.groupby(["c_layer", "lam", "metric"]).value.mean()
    for row in pred.itertuples():
        assert means[(row.c_layer, row.lam, row.metric)] == pytest.approx(row.predicted, rel=1e-12)


def test_section2_world_theorem_bound_holds_and_lower_bounds_accuracy(section2_tables):
    bound = section2_tables["theory_bound"]
    assert bound.bound_holds.all()
    assert bound.accuracy_bound_holds.all()
    # the bound becomes vacuous for some query as lambda grows (g favours one class only)
    assert bound.bound_nonvacuous.min() < 1.0


# --------------------------------------------------------------------------------------------
# the RMSNorm world: the normed model is exact on labels, the others drift with lambda


def test_normed_model_reproduces_label_metrics_of_the_decode(rms_tables):
    fit = rms_tables["theory_fit"].iloc[0]
    assert fit.recon_max_abs_err < 1e-10
    summ = rms_tables["theory_summary"]
    normed = summ[(summ.model == "normed") & summ.metric.isin(["label_correct", "label_entropy"])]
    assert len(normed) and (normed.max_abs_residual < 1e-9).all()


def test_label_mass_is_exact_at_zero_and_an_upper_bound_after(rms_tables):
    cmp_ = rms_tables["theory_compare"]
    mass = cmp_[(cmp_.metric == "label_mass") & (cmp_["mode"] == "decode")]
    at0 = mass[mass.lam == 0]
    np.testing.assert_allclose(at0.predicted, at0.measured, atol=1e-12)
    normed = mass[mass.model == "normed"]
    assert (normed.predicted >= normed.measured - 1e-12).all()  # Jensen


def test_the_infinity_anchor_tightens_the_label_mass_bound(rms_tables):
    terms, meas, q = rms_world()
    one_plane = compare_tables(terms.drop(columns=list(INF_COLUMNS)), meas, n_layers=q)

    def normed_mass(tables):
        c = tables["theory_compare"]
        sel = c[(c.model == "normed") & (c.metric == "label_mass") & (c["mode"] == "decode")]
        return sel.set_index(["c_layer", "lam"]).sort_index()

    two, one = normed_mass(rms_tables), normed_mass(one_plane)
    assert (two.predicted <= one.predicted + 1e-12).all()
    assert (two.predicted >= two.measured - 1e-12).all()
    assert (two.predicted < one.predicted - 1e-6).any()
    # the lambda -> infinity anchor is exact in the limit
    far_terms, far_meas, _ = rms_world(lams=(0.0, 1e7))
    lim = compare_tables(far_terms, far_meas, n_layers=q)["theory_compare"]
    big = lim[(lim.model == "normed") & (lim.metric == "label_mass") & (lim.lam == 1e7)]
    big = big[big["mode"] == "decode"]
    assert len(big) == 2
    np.testing.assert_allclose(big.predicted, big.measured, atol=1e-5)


def test_frozen_norm_equals_normed_at_lambda_zero_and_diverges_with_saturation(rms_tables):
    cmp_ = rms_tables["theory_compare"]
    ent = cmp_[(cmp_.metric == "label_entropy") & (cmp_.point == "measured")]
    ent = ent[ent["mode"] == "decode"]
    piv = ent.pivot_table(index=["c_layer", "lam"], columns="model", values="predicted")
    np.testing.assert_allclose(
        piv.loc[(slice(None), 0.0), "frozen_norm"],
        piv.loc[(slice(None), 0.0), "normed"],
        atol=1e-12,
    )
    big = piv.xs(10.0, level="lam")
    assert (np.abs(big.frozen_norm - big.normed) > 1e-3).any()
    summ = rms_tables["theory_summary"]
    frozen = summ[(summ.model == "frozen_norm") & (summ.metric == "label_entropy") & ~summ.pooled]
    assert frozen.diagnosis.str.contains("norm saturation").any()


def test_normed_theorem_bound_holds_on_every_query(rms_tables):
    bound = rms_tables["theory_bound"]
    normed = bound[bound.model == "normed"]
    assert normed.bound_holds.all() and normed.accuracy_bound_holds.all()
    np.testing.assert_allclose(normed.error_model_mean, normed.decode_error_mean, atol=1e-12)


def test_compare_run_writes_tables_and_the_report_shows_the_figure(tmp_path):
    from cgar_interp.report import build_report

    terms, meas, q = rms_world()
    run = write_run(tmp_path / "run", terms, meas, q)
    out = compare_run(run)
    for name, frame in out.items():
        on_disk = pd.read_parquet(run / "tables" / f"{name}.parquet")
        assert len(on_disk) == len(frame), name
    assert not [p for p in (run / "tables").iterdir() if p.name.startswith(".")]
    page = build_report(run).read_text()
    assert f"fig-theory_compare-{TASK}" in page
    assert (run / "figures" / f"theory_compare-{TASK}.html").is_file()


def test_compare_config_refuses_bad_values():
    with pytest.raises(ValueError, match="grid_points"):
        CompareConfig(grid_points=1)
    with pytest.raises(ValueError, match="unknown mode"):
        CompareConfig(modes=("decode", "forward"))


def test_compare_run_without_context_gate_tables_says_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no context-gate tables"):
        compare_run(tmp_path)


# --------------------------------------------------------------------------------------------
# the real probe on the tiny Llama: gate_terms' norm columns reconstruct its decode


def test_gate_terms_reconstruct_the_tiny_llama_decode(tiny_llama_dir):
    from cgar_interp import load_model
    from cgar_interp.probes import ProbeContext, get_probe
    from cgar_interp.probes.context_gate import ContextGateConfig

    from .probe_helpers import synthetic_inputs

    inputs = synthetic_inputs(n=12, controls=False)
    config = ContextGateConfig(
        context_layers=(1, 2), lambdas=LAMS, modes=("decode",), vectors=("context",)
    )
    handle = load_model(tiny_llama_dir, backend="hf")
    ctx = ProbeContext(handle, inputs, config.needed_layers(2), n_boot=20)
    tables = get_probe("context_gate").run(config, ctx)
    out = compare_tables(tables["gate_terms"], tables["context_gate"], n_layers=2)
    assert out["theory_fit"].recon_max_abs_err.max() < 1e-4
    summ = out["theory_summary"]
    exact = summ[(summ.model == "normed") & summ.metric.isin(["label_entropy", "label_eff"])]
    assert len(exact) and (exact.max_abs_residual < 1e-4).all()
    cmp_ = out["theory_compare"]
    mass0 = cmp_[(cmp_.metric == "label_mass") & (cmp_.lam == 0) & (cmp_["mode"] == "decode")]
    np.testing.assert_allclose(mass0.predicted, mass0.measured, atol=1e-5)


# --------------------------------------------------------------------------------------------
# CLI


def test_cli_theory_simulate_writes_tables_and_figures(tmp_path):
    out = tmp_path / "sim"
    result = runner.invoke(app, ["theory", "simulate", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    for name in ("retrieval_vs_lambda", "fixed_point_counts", "alpha_phase", "summary"):
        assert (out / f"{name}.parquet").is_file(), name
    for name in ("retrieval_vs_lambda", "fixed_point_counts", "alpha_phase"):
        assert (out / f"{name}.html").is_file(), name
    assert (out / "plotly.min.js").is_file()
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    summary = pd.read_parquet(out / "summary.parquet")
    # the paper's beta = 3.5 with alpha = 0 (eta_min = 1): unique only for lambda < sqrt(2/3.5)
    unique = summary.set_index("lam").frac_uniqueness
    assert unique[unique.index < math.sqrt(2 / 3.5)].eq(1.0).all()
    assert unique[unique.index > math.sqrt(2 / 3.5)].eq(0.0).all()


def test_cli_theory_compare_on_a_synthetic_run(tmp_path):
    terms, meas, q = rms_world()
    run = write_run(tmp_path / "run", terms, meas, q)
    result = runner.invoke(app, ["theory", "compare", str(run), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["fit"][0]["task"] == TASK
    assert (run / "tables" / "theory_compare.parquet").is_file()
    table = runner.invoke(app, ["theory", "compare", str(run)])
    assert table.exit_code == 0, table.output
    assert "normed" in table.stdout
    missing = runner.invoke(app, ["theory", "compare", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no context-gate tables" in missing.output

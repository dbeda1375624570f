"""Simulations: determinism, speed, and the theory's statements checked on every instance."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pandas as pd
import pytest

from cgar_interp.figures.simulations import simulation_figures
from cgar_interp.theory.simulate import TABLES, SimulationConfig, run_simulations

SMALL = SimulationConfig(
    n_memories=12,
    n_trials=20,
    lambdas=(0.0, 0.5, 2.0),
    noise_levels=(0.0, 1.0),
    count_betas=(1.0, 4.0),
    count_lambdas=(0.5, 2.5),
    count_instances=1,
    count_starts=8,
    phase_kappas=(0.5, 2.0),
    phase_alphas=(0.0, 0.4, 0.8),
    phase_steps=200,
)


@pytest.fixture(scope="module")
def paper_run():
    """The default run: the paper's N = 50, d = 10, beta = 3.5 setting."""
    start = time.perf_counter()
    tables = run_simulations(SimulationConfig())
    return tables, time.perf_counter() - start


def test_default_run_is_fast_and_complete(paper_run):
    tables, seconds = paper_run
    assert seconds < 15.0  # a few seconds on 2 cores; generous for loaded CI machines
    assert set(tables) == set(TABLES)
    for df in tables.values():
        assert isinstance(df, pd.DataFrame) and len(df) > 0
        assert df.attrs["config"]["n_memories"] == 50
        assert df.attrs["config"]["beta"] == 3.5


def test_same_seed_same_numbers_other_seed_other_numbers():
    a, b = run_simulations(SMALL), run_simulations(SMALL)
    for name in TABLES:
        pd.testing.assert_frame_equal(a[name], b[name])
    c = run_simulations(dataclasses.replace(SMALL, seed=1))
    assert not a["retrieval_vs_lambda"].equals(c["retrieval_vs_lambda"])


def test_theorem_3_1_bound_holds_on_every_simulated_instance(paper_run):
    df = paper_run[0]["retrieval_vs_lambda"]
    n, beta = 50, 3.5
    bound = np.minimum(1.0, (n - 1) * np.exp(-beta * (df.delta_raw + df.lam * df.delta_gate)))
    assert (df.error_first_order <= bound + 1e-12).all()
    assert (df.margin <= df.margin_exact + 1e-12).all()
    # with alpha = 0 the fixed point reached from the two-stage start keeps every ratio
    # p_t / p_j at least its first-order value, so the bound carries over to it
    assert (df.error_fixed_point <= bound + 1e-12).all()
    assert df.bound_holds_first_order.all() and df.bound_holds_fixed_point.all()
    assert df.converged.all()
    # the uniqueness condition beta lam^2 / 2 < 1 (eta_min = 1 at alpha = 0)
    np.testing.assert_array_equal(df.uniqueness_condition, beta * df.lam**2 / 2 < 1)


def test_fixed_point_counts_respect_the_uniqueness_condition(paper_run):
    df = paper_run[0]["fixed_point_counts"]
    assert (df.max_residual <= 1e-10).all()
    unique = df[df.uniqueness_condition]
    assert len(unique) > 0 and (unique.n_fixed_points == 1).all()
    assert (df.n_stable >= 1).all()
    np.testing.assert_allclose(df.contraction_bound, df.beta * df.lam**2 / (2 * df.eta_min))


def test_alpha_phase_matches_alpha_crit(paper_run):
    df = paper_run[0]["alpha_phase"]
    # G_kappa = I + kappa (C^T C - I) with rank(C^T C) <= 10 < N = 50: mu_min = 1 - kappa, so
    # alpha_crit = 1 / (1 - mu_min) = 1 / kappa
    np.testing.assert_allclose(df.alpha_crit, 1.0 / df.kappa, rtol=1e-9)
    # Cholesky (no eigenvalues) agrees with alpha < alpha_crit away from the boundary itself
    off = (df.alpha - df.alpha_crit).abs() > 1e-9
    np.testing.assert_array_equal(df.cholesky_pd[off], df.below_alpha_crit[off])
    # the gate runs away only past alpha_crit, and does wherever eta_min is clearly negative
    assert not df.runaway[df.below_alpha_crit].any()
    assert df.runaway[df.eta_min < -0.04].all()
    assert df.p_target_fixed_point[df.below_alpha_crit].notna().all()


def test_context_sharpens_noisy_retrieval(paper_run):
    df = paper_run[0]["noisy_queries"]
    agg = df.groupby(["sigma", "condition"]).agg(acc=("correct", "mean"), h=("entropy", "mean"))
    for sigma in df.sigma.unique():
        assert agg.loc[(sigma, "context"), "h"] < agg.loc[(sigma, "no_context"), "h"]
        assert agg.loc[(sigma, "context"), "acc"] >= agg.loc[(sigma, "no_context"), "acc"]
    assert (df.keys_90 >= 1).all() and (df.keys_90 <= 50).all()


def test_mhn_separation_table(paper_run):
    df = paper_run[0]["mhn_separation"]
    expected = 2 / (3.5 * 50) + math.log(2 * 49 * 50 * 3.5) / 3.5
    np.testing.assert_allclose(df.threshold, expected)
    # unit vectors have Delta <= 2 < threshold: none is well separated in the paper's setting
    assert (df.delta <= 2.0).all() and not df.well_separated.any()


def test_figures_for_every_table():
    figs = simulation_figures(run_simulations(SMALL))
    assert set(figs) == set(TABLES)
    for fig in figs.values():
        assert type(fig).__name__ == "Figure" and len(fig.data) >= 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta"),
        ({"alpha": 2.0}, "alpha"),
        ({"lambdas": ()}, "lambdas"),
        ({"lambdas": (-1.0,)}, "lambdas"),
        ({"n_memories": 1}, "n_memories"),
        ({"phase_alphas": (1.5,)}, "phase_alphas"),
    ],
)
def test_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**kwargs)


def test_singular_gate_matrix_is_refused_with_advice():
    with pytest.raises(ValueError, match="alpha=1.0"):
        run_simulations(dataclasses.replace(SMALL, alpha=1.0))

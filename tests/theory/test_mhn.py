"""Modern Hopfield network: closed forms, hand-built patterns and independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from cgar_interp.theory.mhn import (
    capacity_constant,
    classify_softmax,
    entropy,
    global_fixed_point_unique,
    iterate_to_fixed_point,
    keys_for_mass,
    mhn_energy,
    mhn_update,
    n_eff,
    retrieval_error_bound,
    score_margin,
    separation,
    storage_capacity,
    well_separated,
    well_separated_threshold,
)


def _energy_by_hand(X, xi, beta):  # noqa: N803
    """E = -lse + xi.xi/2 + ln N / beta + M^2/2 with plain Python sums."""
    n = X.shape[1]
    scores = [float(sum(X[k, i] * xi[k] for k in range(X.shape[0]))) for i in range(n)]
    top = max(scores)
    lse = top + math.log(math.fsum(math.exp(beta * (s - top)) for s in scores)) / beta
    m = max(math.sqrt(math.fsum(X[k, i] ** 2 for k in range(X.shape[0]))) for i in range(n))
    return -lse + 0.5 * math.fsum(v * v for v in xi) + math.log(n) / beta + 0.5 * m * m


def test_energy_matches_hand_formula_and_batches():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(4, 6))  # noqa: N806
    xis = rng.normal(size=(3, 4))
    got = mhn_energy(X, xis, 2.5)
    assert got.shape == (3,)
    for k in range(3):
        assert got[k] == pytest.approx(_energy_by_hand(X, xis[k], 2.5), rel=1e-12, abs=1e-12)
    assert isinstance(mhn_energy(X, xis[0], 2.5), float)


def test_update_is_attention_written_out():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(5, 7))  # noqa: N806
    xi = rng.normal(size=5)
    beta = 1.7
    w = np.array([math.exp(beta * float(X[:, i] @ xi)) for i in range(7)])
    w /= w.sum()
    expected = sum(w[i] * X[:, i] for i in range(7))
    np.testing.assert_allclose(mhn_update(X, xi, beta), expected, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.5, 20.0])
def test_energy_never_increases_under_the_update(beta):
    rng = np.random.default_rng(3)
    for _ in range(10):
        X = rng.normal(size=(10, 50))  # noqa: N806
        X /= np.linalg.norm(X, axis=0)  # noqa: N806
        it = iterate_to_fixed_point(X, 2.0 * rng.normal(size=10), beta, max_iter=200)
        assert np.all(np.diff(it.energies) <= 1e-12 * (1 + np.abs(it.energies[:-1])))
        assert np.all(it.energies >= -1e-12)  # the constants make E >= 0


def test_iteration_ends_at_a_fixed_point_where_the_gradient_vanishes():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(6, 12))  # noqa: N806
    it = iterate_to_fixed_point(X, rng.normal(size=6), 2.0, max_iter=5000, tol=1e-13)
    assert it.converged
    xi = it.fixed_point
    # grad E = xi - X softmax(beta X^T xi)
    w = np.exp(2.0 * (X.T @ xi) - np.max(2.0 * (X.T @ xi)))
    np.testing.assert_allclose(xi - X @ (w / w.sum()), 0.0, atol=1e-11)
    assert it.states.shape == (it.n_iter + 1, 6)


def test_separation_on_hand_built_patterns():
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    # orthogonal unit patterns plus their normalised sum
    X = np.stack([e1, e2, (e1 + e2) / math.sqrt(2)], axis=1)  # noqa: N806
    np.testing.assert_allclose(separation(X), [1 - 1 / math.sqrt(2)] * 3, rtol=1e-12)
    # unequal norms: Delta_1 = 4 - 0, Delta_2 = 1 - 0
    np.testing.assert_allclose(separation(np.stack([2 * e1, e2], axis=1)), [4.0, 1.0])
    # a shorter pattern on the same ray is not separated from a longer one
    np.testing.assert_allclose(separation(np.stack([e1, 2 * e1], axis=1)), [-1.0, 2.0])


def test_well_separated_threshold_and_condition_by_hand():
    assert well_separated_threshold(2, 1.0, 2.0) == pytest.approx(1.0 + math.log(16.0))
    # 5 * I_3: Delta = 25 >= 2/3 + ln(2*2*3*25) = 6.37
    assert well_separated(5.0 * np.eye(3), 1.0).all()
    # I_3: Delta = 1 < 2/3 + ln 12
    assert not well_separated(np.eye(3), 1.0).any()


def test_score_margin():
    assert score_margin(np.array([0.1, 2.0, 1.5])) == pytest.approx(0.5)
    np.testing.assert_allclose(score_margin(np.array([[3.0, 1.0], [0.0, 0.0]])), [2.0, 0.0])


def test_thm5_bounds_hold_for_well_separated_patterns():
    rng = np.random.default_rng(5)
    n, scale, beta = 6, 3.0, 2.0
    X = scale * np.eye(n)  # noqa: N806
    assert well_separated(X, beta).all()
    big_m = scale
    for i in range(n):
        for r in (0.05, 0.3, 1.0):
            v = rng.normal(size=n)
            xi = X[:, i] + r * v / np.linalg.norm(v)
            w = np.exp(beta * (X.T @ xi) - np.max(beta * (X.T @ xi)))
            f = X @ (w / w.sum())
            err = np.linalg.norm(f - X[:, i])
            assert err <= retrieval_error_bound(X, beta, radius=r)[i] * (1 + 1e-12)
        # the fixed point near x_i, from a query within 1/(2 beta M)
        v = rng.normal(size=n)
        xi = X[:, i] + 0.9 / (2 * beta * big_m) * v / np.linalg.norm(v)
        x_star = iterate_to_fixed_point(X, xi, beta, tol=1e-14).fixed_point
        assert np.linalg.norm(x_star - X[:, i]) <= retrieval_error_bound(X, beta)[i]


def test_small_beta_gives_one_global_fixed_point():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5, 20))  # noqa: N806
    big_m = np.linalg.norm(X, axis=0).max()
    beta = 0.9 / big_m**2
    assert global_fixed_point_unique(X, beta)
    assert not global_fixed_point_unique(X, 1.1 / big_m**2)
    ends = [
        iterate_to_fixed_point(X, 5 * rng.normal(size=5), beta, tol=1e-14).fixed_point
        for _ in range(8)
    ]
    assert np.max(np.abs(np.array(ends) - ends[0])) < 1e-10


def test_capacity_constant_reproduces_ramsauer_examples():
    # Ramsauer et al. (2020), Thm 3 discussion: c = 3.1546 for beta=1, K=3, d=20, p=0.001 and
    # c = 1.3718 for beta=1, K=1, d=75, p=0.001.
    assert capacity_constant(20, 1.0, 3.0, 0.001) == pytest.approx(3.1546, abs=1e-4)
    assert capacity_constant(75, 1.0, 1.0, 0.001) == pytest.approx(1.3718, abs=1e-4)


@pytest.mark.parametrize(
    ("d", "beta", "k", "p"),
    [(10, 3.5, 1.0, 0.01), (20, 1.0, 3.0, 0.001), (64, 0.125, 4.0, 0.1), (3, 10.0, 2.0, 1.0)],
)
def test_capacity_constant_against_a_direct_solve(d, beta, k, p):
    # c = b / W0(e^{a + ln b})  <=>  w e^w = b e^a with w = b/c  <=>  b/c - ln c = a
    a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * k**2 * p * (d - 1)))
    b = 2.0 * k**2 * beta / 5.0
    c_direct = brentq(lambda c: b / c - math.log(c) - a, 1e-12, 1e12, xtol=1e-14, rtol=1e-14)
    assert capacity_constant(d, beta, k, p) == pytest.approx(c_direct, rel=1e-10)
    cap = storage_capacity(d, beta, k, p)
    assert cap.n_patterns == pytest.approx(math.sqrt(p) * c_direct ** ((d - 1) / 4), rel=1e-9)
    assert cap.condition_holds == (c_direct >= (2 / math.sqrt(p)) ** (4 / (d - 1)))
    assert cap.radius == pytest.approx(k * math.sqrt(d - 1))


def test_capacity_constant_large_argument_does_not_overflow():
    # a + ln b > 700: exp overflows, the Wright omega branch takes over
    c = capacity_constant(2, 1e3, 30.0, 1.0)
    a = 2.0 * (1.0 + math.log(2.0 * 1e3 * 900.0))
    b = 2.0 * 900.0 * 1e3 / 5.0
    assert b / c - math.log(c) == pytest.approx(a, rel=1e-10)


# ---- softmax diagnostics ----------------------------------------------------------------------


def test_entropy_neff_keys_on_hand_built_distributions():
    p = np.array(
        [
            [0.25, 0.25, 0.25, 0.25],
            [1.0, 0.0, 0.0, 0.0],
            [0.5, 0.3, 0.2, 0.0],
            [0.3, 0.3, 0.3, 0.1],
        ]
    )
    h3 = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    h4 = -(3 * 0.3 * math.log(0.3) + 0.1 * math.log(0.1))
    np.testing.assert_allclose(entropy(p), [math.log(4), 0.0, h3, h4], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(n_eff(p), [4.0, 1.0, math.exp(h3), math.exp(h4)], rtol=1e-12)
    np.testing.assert_array_equal(keys_for_mass(p, 0.9), [4, 1, 3, 3])  # 0.3*3 rounds below 0.9
    np.testing.assert_array_equal(keys_for_mass(p, 0.8), [4, 1, 2, 3])  # 0.5 + 0.3 reaches 0.8
    np.testing.assert_array_equal(keys_for_mass(p, 0.5), [2, 1, 1, 2])
    np.testing.assert_array_equal(keys_for_mass(p, 1.0), [4, 1, 3, 4])


def test_helpers_batch_over_leading_axes_and_accept_unnormalised_rows():
    rng = np.random.default_rng(7)
    p = rng.dirichlet(np.ones(5), size=(2, 3))
    assert entropy(p).shape == (2, 3)
    assert keys_for_mass(p).shape == (2, 3)
    np.testing.assert_array_equal(keys_for_mass(3.0 * p), keys_for_mass(p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_helpers_take_torch_tensors(dtype):
    p_np = np.array([[0.25, 0.25, 0.25, 0.25], [0.5, 0.3, 0.2, 0.0], [0.3, 0.3, 0.3, 0.1]])
    p = torch.tensor(p_np, dtype=dtype)
    h = entropy(p)
    assert isinstance(h, torch.Tensor) and h.dtype == dtype
    np.testing.assert_allclose(h.numpy(), entropy(p_np), rtol=1e-6)
    np.testing.assert_allclose(n_eff(p).numpy(), n_eff(p_np), rtol=1e-6)
    k = keys_for_mass(p, 0.9)
    assert isinstance(k, torch.Tensor)
    assert k.tolist() == [4, 3, 3]
    assert classify_softmax(p).tolist() == ["global", "global", "global"]


def test_classify_softmax_regimes_and_thresholds():
    n = 10
    one_hot = np.eye(n)[0]
    uniform = np.full(n, 1.0 / n)
    subset = np.r_[np.full(3, 1 / 3), np.zeros(n - 3)]
    assert classify_softmax(one_hot) == "single"
    assert classify_softmax(uniform) == "global"
    assert classify_softmax(subset) == "metastable"
    batch = classify_softmax(np.stack([one_hot, subset, uniform]))
    assert batch.tolist() == ["single", "metastable", "global"]
    assert classify_softmax(subset, single_max_keys=3) == "single"
    assert classify_softmax(subset, global_min_fraction=0.3) == "global"


def test_helpers_refuse_bad_arguments():
    with pytest.raises(ValueError, match="mass"):
        keys_for_mass(np.ones(3) / 3, 0.0)
    with pytest.raises(ValueError, match="global_min_fraction"):
        classify_softmax(np.ones(3) / 3, global_min_fraction=1.5)
    with pytest.raises(ValueError, match="beta"):
        mhn_update(np.eye(2), np.ones(2), 0.0)
    with pytest.raises(ValueError, match=r"\[d, N\]"):
        mhn_energy(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="d=2"):
        mhn_update(np.eye(2), np.ones(3), 1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        separation(np.ones((3, 1)))
    with pytest.raises(ValueError, match="failure probability"):
        capacity_constant(10, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="non-finite"):
        mhn_update(np.array([[np.nan, 0.0], [0.0, 1.0]]), np.ones(2), 1.0)

"""Context-gated memory: closed forms, bifurcations and independent numerics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.optimize import brentq, fsolve
from scipy.special import expit
from scipy.special import softmax as sp_softmax

from cgar_interp.theory.gate import GatedMemory, required_margin

from ._reference import a_matrix, phi_ref, random_config


def _mem(b, u, G, alpha=0.0, lam=1.0, beta=1.0):  # noqa: N803
    return GatedMemory(b=b, u=u, G=G, alpha=alpha, lam=lam, beta=beta)


def _cholesky_ok(a):
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


# ---- A(alpha), eta_min, alpha_crit -------------------------------------------------------------


def test_a_and_eta_min_by_hand():
    G = np.array([[1.0, 0.5], [0.5, 1.0]])  # noqa: N806  eigenvalues 0.5, 1.5
    mem = _mem(np.zeros(2), np.zeros(2), G, alpha=0.4)
    np.testing.assert_allclose(mem.A, [[1.0, 0.2], [0.2, 1.0]])
    assert mem.eta_min == pytest.approx(0.8)
    assert mem.mu_min == pytest.approx(0.5)
    assert mem.alpha_crit == pytest.approx(2.0)  # above 1: never reached
    assert mem.positive_definite


@pytest.mark.parametrize(
    ("G", "expected"),
    [
        (np.array([[1.0, 2.0], [2.0, 1.0]]), 0.5),  # mu_min = -1 -> 1/2
        (np.array([[1.0, 1.0], [1.0, 1.0]]), 1.0),  # mu_min = 0 (singular) -> 1
        (np.eye(2), math.inf),  # mu_min = 1: eta_min = 1 for every alpha
        (2.0 * np.eye(2), math.inf),  # mu_min > 1: eta_min grows with alpha
        (np.array([[1.0, 0.8], [0.8, 1.0]]), 5.0),  # mu_min = 0.2 -> 1.25 ... 1/(1-0.2)
    ],
)
def test_alpha_crit_sign_cases(G, expected):  # noqa: N803
    mu_min = np.linalg.eigvalsh(G)[0]
    mem = _mem(np.zeros(2), np.zeros(2), G)
    if math.isinf(expected):
        assert math.isinf(mem.alpha_crit)
    else:
        assert mem.alpha_crit == pytest.approx(1.0 / (1.0 - mu_min))


def test_alpha_crit_matches_where_cholesky_starts_failing():
    rng = np.random.default_rng(11)
    for _ in range(5):
        m = rng.normal(size=(6, 6))
        G = 0.5 * (m + m.T)  # noqa: N806  indefinite: mu_min < 0, so alpha_crit in (0, 1)
        crit = _mem(np.zeros(6), np.zeros(6), G).alpha_crit
        assert 0 < crit < 1
        # bisection on "A(alpha) admits a Cholesky factorisation" (no eigenvalues involved)
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if _cholesky_ok(a_matrix(G, mid)) else (lo, mid)
        assert crit == pytest.approx(lo, abs=1e-9)
        below = _mem(np.zeros(6), np.zeros(6), G, alpha=crit - 1e-3)
        above = _mem(np.zeros(6), np.zeros(6), G, alpha=min(1.0, crit + 1e-3))
        assert below.regime().below_alpha_crit and below.positive_definite
        assert not above.positive_definite and not above.regime().below_alpha_crit
        assert math.isinf(above.contraction_bound())
        with pytest.raises(ValueError, match="alpha_crit"):
            above.phi(np.full(6, 1 / 6))


# ---- energy and the map Phi ----------------------------------------------------------------


def test_energy_by_hand():
    b, u = np.array([0.3, -0.2]), np.array([1.0, 0.5])
    G = np.array([[1.0, 0.4], [0.4, 1.0]])  # noqa: N806
    alpha, lam, beta = 0.5, 0.7, 2.0
    mem = _mem(b, u, G, alpha, lam, beta)
    s, p = np.array([0.2, -0.1]), np.array([0.25, 0.75])
    a = [[1.0, 0.2], [0.2, 1.0]]
    quad = 0.5 * sum(s[i] * a[i][j] * s[j] for i in range(2) for j in range(2))
    expected = (
        quad
        - (s[0] * u[0] + s[1] * u[1])
        - lam * (s[0] * p[0] + s[1] * p[1])
        - (b[0] * p[0] + b[1] * p[1])
        + (p[0] * math.log(p[0]) + p[1] * math.log(p[1])) / beta
    )
    assert mem.energy(s, p) == pytest.approx(expected, rel=1e-13)
    # 0 ln 0 = 0 on the simplex's boundary
    assert np.isfinite(mem.energy(s, np.array([1.0, 0.0])))


def test_s_star_minimises_the_energy_and_phi_is_the_stationarity_map():
    rng = np.random.default_rng(12)
    b, u, G = random_config(rng, 5)  # noqa: N806
    mem = _mem(b, u, G, alpha=0.6, lam=1.3, beta=2.0)
    p = rng.dirichlet(np.ones(5))
    s = mem.s_star(p)
    np.testing.assert_allclose(a_matrix(G, 0.6) @ s - u - 1.3 * p, 0.0, atol=1e-12)
    for _ in range(5):
        assert mem.energy(s + 1e-3 * rng.normal(size=5), p) > mem.energy(s, p)
    np.testing.assert_allclose(mem.phi(p), phi_ref(p, b, u, G, 0.6, 1.3, 2.0), rtol=1e-12)
    np.testing.assert_allclose(mem.phi(np.stack([p, p])), np.stack([mem.phi(p)] * 2))


def test_jacobian_against_finite_differences():
    rng = np.random.default_rng(13)
    b, u, G = random_config(rng, 4)  # noqa: N806
    mem = _mem(b, u, G, alpha=0.3, lam=1.5, beta=1.5)
    p_star = mem.iterate().p  # the closed form holds where softmax(...) = p
    h = 1e-6
    fd = np.stack(
        [(mem.phi(p_star + h * e) - mem.phi(p_star - h * e)) / (2 * h) for e in np.eye(4)],
        axis=1,
    )
    np.testing.assert_allclose(mem.phi_jacobian(p_star), fd, atol=1e-8)
    rho = max(abs(np.linalg.eigvals(fd)))
    assert mem.spectral_radius(p_star) == pytest.approx(rho, abs=1e-7)


def test_contraction_bound_closed_form_and_regime():
    G = np.array([[1.0, 0.5], [0.5, 1.0]])  # noqa: N806
    mem = _mem(np.zeros(2), np.zeros(2), G, alpha=0.4, lam=0.5, beta=2.0)
    assert mem.contraction_bound() == pytest.approx(2.0 * 0.25 / (2 * 0.8))
    reg = mem.regime()
    assert reg.uniqueness_condition and reg.below_alpha_crit
    assert reg.lam_unique_max == pytest.approx(math.sqrt(2 * 0.8 / 2.0))
    strong = dataclasses.replace(mem, lam=2.0)
    assert not strong.regime().uniqueness_condition
    assert "outside the uniqueness condition" in strong.regime().summary


def test_reduced_energy_never_increases_along_the_iteration():
    rng = np.random.default_rng(14)
    for _ in range(5):
        b, u, G = random_config(rng, 8)  # noqa: N806
        mem = _mem(0.3 * b, 0.3 * u, G, alpha=0.5, lam=2.5, beta=3.0)  # far outside uniqueness
        p = rng.dirichlet(np.ones(8))
        energies = []
        for _ in range(60):
            energies.append(mem.reduced_energy(p))
            p = mem.phi(p)
        assert np.all(np.diff(energies) <= 1e-12)


# ---- fixed points ---------------------------------------------------------------------------


def test_fixed_points_satisfy_p_equals_phi_p():
    rng = np.random.default_rng(15)
    for n, lam, beta in [(3, 2.0, 3.0), (6, 1.5, 4.0), (12, 2.5, 3.5)]:
        b, u, G = random_config(rng, n)  # noqa: N806
        mem = _mem(0.3 * b, 0.3 * u, G, alpha=0.3, lam=lam, beta=beta)
        fps = mem.fixed_points(n_starts=32)
        assert fps
        for fp in fps:
            ref = phi_ref(fp.p, mem.b, mem.u, G, 0.3, lam, beta)
            assert np.max(np.abs(fp.p - ref)) <= 1e-10
            assert fp.p.min() >= 0 and fp.p.sum() == pytest.approx(1.0, abs=1e-12)
            np.testing.assert_allclose(
                fp.s, np.linalg.solve(a_matrix(G, 0.3), mem.u + lam * fp.p), atol=1e-10
            )


def test_exactly_one_fixed_point_under_the_uniqueness_condition():
    rng = np.random.default_rng(16)
    for _ in range(6):
        b, u, G = random_config(rng, 10)  # noqa: N806
        mem = _mem(b, u, G, alpha=0.5, lam=1.0, beta=1.0)
        beta = 0.8 * 2 * mem.eta_min / mem.lam**2  # contraction bound 0.8
        mem = dataclasses.replace(mem, beta=beta)
        assert mem.contraction_bound() == pytest.approx(0.8)
        fps = mem.fixed_points(n_starts=48)
        assert len(fps) == 1 and fps[0].stable
        # the iteration from anywhere lands there
        for _ in range(5):
            end = mem.iterate(rng.dirichlet(np.ones(10))).p
            np.testing.assert_allclose(end, fps[0].p, atol=1e-10)


@pytest.mark.parametrize("r", [0.5, 0.9, 0.97, 1.03, 1.1, 1.5, 3.0])
def test_two_memories_pitchfork_where_theory_puts_it(r):
    # A = I, N = 2, b = u = 0, p = (x, 1 - x): Phi is x -> sigmoid(beta lam^2 (2x - 1)).
    # With y = 2x - 1 the fixed points solve y = tanh(r y), r = beta lam^2 / 2: only y = 0 for
    # r <= 1 (stable, slope r); for r > 1 also y = +-y*, stable, and y = 0 turns unstable.
    beta = 2.0
    lam = math.sqrt(2 * r / beta)
    mem = _mem(np.zeros(2), np.zeros(2), np.eye(2), alpha=0.0, lam=lam, beta=beta)
    fps = mem.fixed_points()
    xs = sorted(fp.p[0] for fp in fps)
    slopes = {round(fp.p[0], 6): fp.spectral_radius for fp in fps}
    for x in xs:  # each one is a fixed point of the logistic map
        assert expit(beta * lam**2 * (2 * x - 1)) == pytest.approx(x, abs=1e-12)
    if r < 1:
        assert xs == pytest.approx([0.5])
        assert [fp.stable for fp in fps] == [True]
    else:
        y = brentq(lambda y: y - math.tanh(r * y), 1e-9, 1.0)
        assert xs == pytest.approx([(1 - y) / 2, 0.5, (1 + y) / 2], abs=1e-10)
        assert sum(fp.stable for fp in fps) == 2
        assert not next(fp for fp in fps if abs(fp.p[0] - 0.5) < 1e-9).stable
        for x in xs:  # spectral radius = derivative of the logistic map, 2 beta lam^2 x (1-x)
            assert slopes[round(x, 6)] == pytest.approx(2 * beta * lam**2 * x * (1 - x), rel=1e-8)
    assert slopes[0.5] == pytest.approx(r, rel=1e-10)


def test_two_memories_count_against_a_scalar_root_count():
    # N = 2 with random b, u, G: p = (x, 1-x) reduces Phi to a scalar map; count the sign
    # changes of x - Phi(x) on a fine grid (independent of the multi-start search)
    rng = np.random.default_rng(17)
    counts = set()
    for _ in range(12):
        b, u = 0.3 * rng.normal(size=2), 0.3 * rng.normal(size=2)
        G = np.array([[1.0, rng.uniform(-0.5, 0.9)], [0.0, 1.0]])  # noqa: N806
        G[1, 0] = G[0, 1]
        alpha, lam, beta = rng.uniform(0, 0.5), rng.uniform(0.5, 2.5), rng.uniform(1, 6)
        mem = _mem(b, u, G, alpha, lam, beta)
        xs = np.linspace(0, 1, 20001)
        grid = np.stack([xs, 1 - xs], axis=1)
        s = np.linalg.solve(a_matrix(G, alpha), (u + lam * grid).T).T
        h = xs - sp_softmax(beta * (b + lam * s), axis=1)[:, 0]
        assert np.all(h != 0)  # no root sits exactly on a grid point
        n_roots = int(np.sum(np.sign(h[1:]) != np.sign(h[:-1])))
        assert len(mem.fixed_points()) == n_roots
        counts.add(n_roots)
    assert counts == {1, 3}  # both regimes were exercised


def test_three_memories_against_a_dense_independent_search():
    rng = np.random.default_rng(18)
    b, u, G = random_config(rng, 3)  # noqa: N806
    b, u, alpha, lam, beta = 0.2 * b, 0.2 * u, 0.2, 2.0, 3.0
    mem = _mem(b, u, G, alpha, lam, beta)
    found = mem.fixed_points()
    # fsolve from a grid over the simplex, on the map written from the formula
    sols = []
    for i in range(21):
        for j in range(21 - i):
            x0 = np.array([i, j, 20 - i - j]) / 20.0
            x, _, ok, _ = fsolve(
                lambda p: p - phi_ref(p, b, u, G, alpha, lam, beta), x0, full_output=True
            )
            solved = ok == 1 and np.max(np.abs(x - phi_ref(x, b, u, G, alpha, lam, beta))) < 1e-10
            if solved and all(np.max(np.abs(x - s)) > 1e-6 for s in sols):
                sols.append(x)
    assert len(sols) >= 3  # the configuration is multistable: a real test of the search
    assert len(found) == len(sols)
    for s in sols:
        assert min(np.max(np.abs(s - fp.p)) for fp in found) < 1e-8


def test_fixed_point_search_is_deterministic():
    rng = np.random.default_rng(19)
    b, u, G = random_config(rng, 8)  # noqa: N806
    mem = _mem(0.3 * b, 0.3 * u, G, 0.3, 2.0, 3.0)
    a, c = mem.fixed_points(seed=3), mem.fixed_points(seed=3)
    assert len(a) == len(c)
    for x, y in zip(a, c, strict=True):
        np.testing.assert_array_equal(x.p, y.p)


# ---- Theorem 3.1 and the read-out -----------------------------------------------------------


def test_first_order_margin_and_bound_by_hand():
    b = np.array([1.0, 0.4, 0.2])
    u = np.array([0.5, 0.6, -0.1])
    mem = _mem(b, u, np.eye(3), alpha=0.0, lam=2.0, beta=3.0)
    m = mem.first_order_margin(0)
    assert m.delta_raw == pytest.approx(0.6)
    assert m.delta_gate == pytest.approx(-0.1)
    assert m.margin == pytest.approx(0.6 - 0.2)
    z = b + 2.0 * u  # [2.0, 1.6, 0.0]
    assert m.margin_exact == pytest.approx(0.4)
    p = sp_softmax(3.0 * z)
    assert m.p_target == pytest.approx(p[0])
    assert m.error_bound == pytest.approx(min(1.0, 2 * math.exp(-3.0 * 0.4)))
    assert m.p_lower == pytest.approx(1 / (1 + 2 * math.exp(-1.2)))
    assert required_margin(0.1, 3, 3.0) == pytest.approx(math.log(0.9 * 2 / 0.1) / 3.0)


def test_theorem_3_1_bound_holds_on_random_instances():
    rng = np.random.default_rng(20)
    for _ in range(300):
        n = int(rng.integers(2, 30))
        b, u, G = random_config(rng, n)  # noqa: N806
        mem = _mem(b, u, G, rng.uniform(0, 0.9), rng.uniform(0, 3), rng.uniform(0.2, 8))
        t = int(rng.integers(n))
        m = mem.first_order_margin(t)
        z = b + mem.lam * np.linalg.solve(a_matrix(G, mem.alpha), u)
        p_t = sp_softmax(mem.beta * z)[t]
        assert m.margin <= m.margin_exact + 1e-12
        assert 1 - p_t <= m.error_bound + 1e-12
        assert p_t >= m.p_lower - 1e-12
        for eps in (0.5, 0.1, 1e-3):
            if m.condition(eps):
                assert p_t >= 1 - eps - 1e-12


def test_label_logodds_slope_is_the_first_order_derivative():
    rng = np.random.default_rng(21)
    _, u, G = random_config(rng, 7)  # noqa: N806
    labels = [1, 4]
    # b constant: the paper's unweighted slope is the derivative at lam = 0
    mem0 = _mem(np.zeros(7), u, G, alpha=0.4, lam=0.0, beta=2.5)
    h = 1e-6
    fd = (
        dataclasses.replace(mem0, lam=h).label_logodds(labels)
        - dataclasses.replace(mem0, lam=0.0).label_logodds(labels)
    ) / h
    assert mem0.label_logodds_slope(labels) == pytest.approx(fd, rel=1e-4)
    g = np.linalg.solve(a_matrix(G, 0.4), u)
    mask = np.isin(np.arange(7), labels)
    assert mem0.label_logodds_slope(labels) == pytest.approx(
        2.5 * (g[mask].mean() - g[~mask].mean())
    )
    # general b: the probability-weighted derivative matches a central difference at lam
    b = rng.normal(size=7)
    mem = _mem(b, u, G, alpha=0.4, lam=0.8, beta=2.5)
    fd = (
        dataclasses.replace(mem, lam=0.8 + h).label_logodds(labels)
        - dataclasses.replace(mem, lam=0.8 - h).label_logodds(labels)
    ) / (2 * h)
    assert mem.label_logodds_derivative(labels) == pytest.approx(fd, rel=1e-5)


# ---- construction ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, r"alpha=1.5 .*\[0, 1\]"),
        ({"alpha": -0.1}, r"alpha=-0.1"),
        ({"beta": 0.0}, r"beta=0.0 .*> 0"),
        ({"beta": math.inf}, r"beta=inf"),
        ({"lam": -1.0}, r"lam=-1.0 .*>= 0"),
        ({"G": np.array([[1.0, 0.3], [0.0, 1.0]])}, "symmetric"),
        ({"G": np.eye(3)}, r"G must have shape \(2, 2\)"),
        ({"u": np.zeros(3)}, r"u must have shape \(2,\)"),
        ({"b": np.zeros(1), "u": np.zeros(1), "G": np.eye(1)}, "N >= 2"),
        ({"b": np.array([np.nan, 0.0])}, "non-finite"),
    ],
)
def test_construction_refuses_bad_values(kwargs, match):
    args = {"b": np.zeros(2), "u": np.zeros(2), "G": np.eye(2), "alpha": 0.0, "lam": 1.0}
    args["beta"] = 1.0
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        GatedMemory(**args)


def test_method_arguments_are_checked_and_instances_are_frozen():
    mem = _mem(np.zeros(3), np.ones(3), np.eye(3))
    with pytest.raises(ValueError, match=r"target=3 .*\[0, 3\)"):
        mem.first_order_margin(3)
    with pytest.raises(ValueError, match="empty"):
        mem.label_logodds_slope([])
    with pytest.raises(ValueError, match="every memory"):
        mem.label_logodds_slope([0, 1, 2])
    with pytest.raises(ValueError, match="simplex"):
        mem.energy(np.zeros(3), np.array([0.5, 0.6, 0.0]))
    with pytest.raises(ValueError, match="N=3"):
        mem.phi(np.ones(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        mem.lam = 2.0
    with pytest.raises(ValueError, match="read-only"):
        mem.b[0] = 1.0


def test_accepts_torch_tensors():
    import torch

    mem = GatedMemory(torch.zeros(2), torch.ones(2), torch.eye(2), 0.0, 1.0, 1.0)
    assert mem.b.dtype == np.float64
    np.testing.assert_allclose(mem.phi(np.array([0.5, 0.5])), [0.5, 0.5])

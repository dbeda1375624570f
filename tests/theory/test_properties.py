"""Property tests over random configurations (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# keep hypothesis' caches (.hypothesis/) out of the checkout
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "cgar-interp-hypothesis")
from hypothesis import strategies as st  # noqa: E402
from scipy.special import softmax as sp_softmax  # noqa: E402

from cgar_interp.theory.gate import GatedMemory, required_margin  # noqa: E402
from cgar_interp.theory.mhn import iterate_to_fixed_point, keys_for_mass  # noqa: E402

from ._reference import a_matrix, phi_ref, random_config  # noqa: E402

# database=None: no .hypothesis/ example store is written into the checkout
FAST = settings(max_examples=40, deadline=None, database=None)

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(2, 12)
alphas = st.floats(0.0, 0.95)
lams = st.floats(0.0, 4.0)
betas = st.floats(0.05, 10.0)


def _memory(seed, n, alpha, lam, beta, psd=True):
    rng = np.random.default_rng(seed)
    b, u, G = random_config(rng, n, psd=psd)  # noqa: N806
    return rng, GatedMemory(b, u, G, alpha, lam, beta)


@FAST
@given(seed=seeds, n=sizes, alpha=alphas, lam=lams, beta=betas)
def test_phi_maps_into_the_simplex(seed, n, alpha, lam, beta):
    rng, mem = _memory(seed, n, alpha, lam, beta)
    p = rng.dirichlet(np.ones(n), size=4)
    out = mem.phi(p)
    assert np.all(out >= 0)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out[0], phi_ref(p[0], mem.b, mem.u, mem.G, alpha, lam, beta))


@FAST
@given(
    seed=seeds,
    n=sizes,
    alpha=alphas,
    lam=lams,
    beta=betas,
    eps=st.floats(1e-6, 0.9),
    scale=st.floats(0.1, 5.0),
)
def test_bound_never_violated_when_its_condition_holds(seed, n, alpha, lam, beta, eps, scale):
    rng, mem = _memory(seed, n, alpha, lam, beta)
    mem = GatedMemory(scale * mem.b, scale * mem.u, mem.G, alpha, lam, beta)
    t = int(rng.integers(n))
    m = mem.first_order_margin(t)
    z = mem.b + lam * np.linalg.solve(a_matrix(mem.G, alpha), mem.u)
    p_t = sp_softmax(beta * z)[t]
    assert 1 - p_t <= m.error_bound + 1e-12
    if m.margin >= required_margin(eps, n, beta):
        assert p_t >= 1 - eps - 1e-12


@settings(max_examples=15, deadline=None, database=None)
@given(seed=seeds, n=st.integers(2, 6), alpha=alphas, lam=lams, beta=betas)
def test_every_fixed_point_found_solves_the_equation(seed, n, alpha, lam, beta):
    _, mem = _memory(seed, n, alpha, lam, beta)
    fps = mem.fixed_points(n_starts=16)
    assert len(fps) >= 1
    for fp in fps:
        assert fp.p.min() >= 0 and abs(fp.p.sum() - 1) < 1e-12
        ref = phi_ref(fp.p, mem.b, mem.u, mem.G, alpha, lam, beta)
        assert np.max(np.abs(fp.p - ref)) <= 1e-10
    if mem.contraction_bound() < 1:
        assert len(fps) == 1


@FAST
@given(seed=seeds, n=st.integers(2, 40), d=st.integers(1, 12), beta=st.floats(0.01, 30.0))
def test_mhn_energy_is_non_increasing(seed, n, d, beta):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(d, n)) * rng.uniform(0.1, 3.0)  # noqa: N806
    it = iterate_to_fixed_point(X, rng.normal(size=d) * 3, beta, max_iter=30)
    assert np.all(np.diff(it.energies) <= 1e-10 * (1 + np.abs(it.energies[:-1])))


@FAST
@given(seed=seeds, n=st.integers(1, 30), mass=st.floats(0.01, 1.0))
def test_keys_for_mass_is_the_smallest_covering_count(seed, n, mass):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(n, rng.uniform(0.05, 3.0)))
    k = int(keys_for_mass(p, mass))
    top = np.sort(p)[::-1]
    assert 1 <= k <= n
    assert top[:k].sum() >= mass - 1e-12
    if k > 1:
        assert top[: k - 1].sum() < mass

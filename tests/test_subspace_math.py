"""Closed forms for the subspace measures (no model): spectra, angles, energies, alignments."""

import math

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from cgar_interp import subspace_math as sm


def orthonormal(rng, rows, cols):
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def with_spectrum(sigma, n=20, d=30, seed=0):
    """An ``[n, d]`` matrix with singular values ``sigma`` (then zeros)."""
    rng = np.random.default_rng(seed)
    r = len(sigma)
    return orthonormal(rng, n, r) @ np.diag(sigma) @ orthonormal(rng, d, r).T


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_rank_r_with_equal_singular_values_has_pr_and_erank_r(rank):
    m = with_spectrum([2.5] * rank)
    assert sm.participation_ratio(m) == pytest.approx(rank, rel=1e-10)
    assert sm.effective_rank(m) == pytest.approx(rank, rel=1e-10)
    assert sm.variance_explained(m, rank) == pytest.approx(1.0)
    assert sm.variance_explained(m, 1) == pytest.approx(1.0 / rank)


def test_unequal_spectrum_matches_the_definitions():
    m = with_spectrum([3.0, 1.0])
    # PR = (9 + 1)^2 / (81 + 1); erank = exp(H(0.75, 0.25)) from sigma / sum(sigma)
    assert sm.participation_ratio(m) == pytest.approx(100 / 82, rel=1e-10)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert sm.effective_rank(m) == pytest.approx(math.exp(h), rel=1e-10)
    assert sm.variance_explained(m, 1) == pytest.approx(0.9, rel=1e-10)
    assert sm.variance_explained(m, 5) == pytest.approx(1.0)


def test_centering_removes_a_common_offset():
    offset = np.tile(np.arange(1.0, 6.0), (10, 1))  # every row the same: rank 1, zero covariance
    varied = offset.copy()
    varied[:, 0] += np.linspace(-1, 1, 10)  # variation along one axis only
    assert sm.participation_ratio(offset) == pytest.approx(1.0)
    assert sm.participation_ratio(varied, center=True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero after centring"):
        sm.participation_ratio(offset, center=True)


def test_top_subspace_spans_the_leading_directions():
    d = 6
    e = np.eye(d)
    m = np.stack([3 * e[0], -3 * e[0], e[1], 0.1 * e[2]])
    basis = sm.top_subspace(m, 2)
    assert basis.shape == (d, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-12)
    assert np.degrees(sm.principal_angles(basis, e[:, :2])).max() == pytest.approx(0, abs=1e-6)


def test_principal_angles_of_known_subspaces():
    e = np.eye(4)
    for t in (1e-7, 0.3, 1.2, math.pi / 2):
        b = np.stack([e[0], math.cos(t) * e[1] + math.sin(t) * e[2]], axis=1)
        got = sm.principal_angles(e[:, :2], b)
        np.testing.assert_allclose(got, [0.0, t], atol=1e-12, rtol=1e-9)
    # a non-orthonormal spanning set gives the same angles; the ranks set their number
    skew = np.stack([e[0] + e[1], 2 * e[1]], axis=1)
    np.testing.assert_allclose(sm.principal_angles(skew, e[:, :2]), [0, 0], atol=1e-7)
    assert sm.principal_angles(e[:, :1], e[:, 1:3]).tolist() == pytest.approx([math.pi / 2])


def test_principal_angles_agree_with_scipy_on_random_subspaces():
    rng = np.random.default_rng(1)
    for p, q in ((2, 3), (4, 4), (5, 1)):
        a, b = rng.standard_normal((12, p)), rng.standard_normal((12, q))
        np.testing.assert_allclose(
            sm.principal_angles(a, b), np.sort(subspace_angles(a, b)), atol=1e-10
        )


def test_projection_energy():
    e = np.eye(5)
    assert sm.projection_energy([1.0, 1.0, 0, 0, 0], e[:, :1]) == pytest.approx(0.5)
    assert sm.projection_energy([0, 0, 3.0, 0, 0], e[:, :2]) == pytest.approx(0.0)
    assert sm.projection_energy([1.0, -2.0, 0.5, 0, 0], e[:, :3]) == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    basis = rng.standard_normal((40, 4))
    energies = [sm.projection_energy(rng.standard_normal(40), basis) for _ in range(3000)]
    # a uniformly random direction: E = q / d, Var = 2 q (d - q) / (d^2 (d + 2))
    sd = math.sqrt(2 * 4 * 36 / (40**2 * 42) / 3000)
    assert np.mean(energies) == pytest.approx(4 / 40, abs=5 * sd)


def test_random_subspace_is_orthonormal_and_seeded():
    a = sm.random_subspace(10, 3, np.random.default_rng(5))
    b = sm.random_subspace(10, 3, np.random.default_rng(5))
    np.testing.assert_allclose(a.T @ a, np.eye(3), atol=1e-12)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="k=11"):
        sm.random_subspace(10, 11, np.random.default_rng(0))


def test_class_alignment_signs():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 8))
    labels = np.repeat(np.arange(3), 4)
    centred = w - w.mean(0)
    features = 5.0 + 2.0 * centred[labels]  # class means along the centred directions
    np.testing.assert_allclose(sm.class_alignment(features, labels, w), 1.0, atol=1e-12)
    np.testing.assert_allclose(sm.class_alignment(-features, labels, w), -1.0, atol=1e-12)
    same = np.tile(rng.standard_normal(8), (12, 1))  # one feature vector for every row
    assert np.isnan(sm.class_alignment(same, labels, w)).all()
    idx = np.arange(12)[None]
    assert np.isnan(sm.resample_class_alignment(same, idx, labels, w)).all()
    with pytest.raises(ValueError, match=r"classes \[2\] have no rows"):
        sm.class_alignment(features[:8], labels[:8], w)


@pytest.mark.parametrize("center", [False, True])
def test_resample_statistics_equal_the_direct_functions(center):
    rng = np.random.default_rng(4)
    s = rng.standard_normal((18, 25)) @ np.diag(np.linspace(3, 0.1, 25)) + 0.5
    basis = rng.standard_normal((25, 3))
    labels = np.arange(18) % 3
    w = rng.standard_normal((3, 25))
    idx = np.vstack([np.arange(18), rng.integers(0, 18, 18), rng.permutation(18)])
    idx[1, :3] = [0, 1, 2]  # every class present
    stats = sm.resample_statistics(s, idx, basis, 2, center=center, labels=labels, directions=w)
    for b, rows in enumerate(idx):
        sub = s[rows]
        assert stats.participation_ratio[b] == pytest.approx(
            sm.participation_ratio(sub, center=center), rel=1e-9
        )
        assert stats.effective_rank[b] == pytest.approx(
            sm.effective_rank(sub, center=center), rel=1e-6
        )
        assert stats.var_top1[b] == pytest.approx(sm.variance_explained(sub, 1, center=center))
        assert stats.var_top_k[b] == pytest.approx(sm.variance_explained(sub, 2, center=center))
        top = sm.top_subspace(sub, 2, center=center)
        np.testing.assert_allclose(stats.angles[b], sm.principal_angles(top, basis), atol=1e-7)
        assert stats.mean_energy[b] == pytest.approx(sm.projection_energy(sub.mean(0), basis))
        np.testing.assert_allclose(
            stats.class_cos[b], sm.class_alignment(sub, labels[rows], w), atol=1e-10
        )


def test_half_samples_keep_half_of_every_class_without_replacement():
    labels = np.array([0] * 6 + [1] * 5 + [2])
    draws = sm.half_samples(labels, 50, np.random.default_rng(0))
    assert draws.shape == (50, 3 + 2 + 1)
    for row in draws:
        assert len(set(row.tolist())) == len(row)
        assert np.bincount(labels[row], minlength=3).tolist() == [3, 2, 1]


def test_jackknife_interval_of_a_mean_has_the_textbook_width():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40) * 3.0
    labels = np.zeros(40, dtype=int)
    idx = sm.half_samples(labels, 4000, rng)
    low, high = sm.jackknife_interval(float(x.mean()), x[idx].mean(1), 40, 20)
    se = x.std(ddof=1) / math.sqrt(40)  # delete-d jackknife of a mean: s^2 / n in expectation
    assert (high - low) / 2 == pytest.approx(1.959963984540054 * se, rel=0.05)
    assert (low + high) / 2 == pytest.approx(x.mean())
    assert sm.jackknife_interval(0.99, x[idx].mean(1), 40, 20, bounds=(0, 1))[1] == 1.0
    with pytest.raises(ValueError, match="m=40, n=40 are not valid"):
        sm.jackknife_interval(0.0, [1.0, 2.0], 40, 40)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="matrix is zero"):
        sm.effective_rank(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        sm.participation_ratio([[1.0, np.nan]])
    with pytest.raises(ValueError, match="k=0 is not valid"):
        sm.variance_explained(np.eye(3), 0)
    with pytest.raises(ValueError, match=r"k=3 is not valid for a matrix of rank 2"):
        sm.top_subspace(np.eye(3)[:2], 3)
    with pytest.raises(ValueError, match="different spaces"):
        sm.principal_angles(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="vector is zero"):
        sm.projection_energy(np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="k=5 is not valid"):
        sm.resample_statistics(np.eye(4), np.arange(4)[None], np.eye(4), 5)

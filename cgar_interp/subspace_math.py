"""Subspace measures of a set of vectors, as pure float64 numpy (no model code).

The subspace probe (:mod:`cgar_interp.probes.subspace`) applies these to the matrix of
per-query shifts ``S = H_icl - H_zero`` (``[n, d_model]``, one row per query) and to the label
unembedding rows. Conventions: a *matrix* holds samples as rows, ``[n, d]``; a *basis* holds
directions as columns, ``[d, q]`` (need not be orthonormal: it is orthonormalised first).

- Participation ratio of the spectrum ``lambda_i = sigma_i^2`` (second moments of the rows, or
  their covariance with ``center=True``): ``PR = (sum lambda)^2 / sum lambda^2``, between 1 and
  the rank; ``r`` equal singular values give ``r``.
- Effective rank (Roy & Vetterli, "The effective rank", EUSIPCO 2007): ``exp(H(p))`` with
  ``p_i = sigma_i / sum_j sigma_j`` over the *singular values* (not their squares).
- Variance explained by the top ``k`` components: ``sum_{i<k} lambda_i / sum lambda``.
- Principal angles between two subspaces (Bjorck & Golub 1973): ``arccos`` of the singular
  values of ``Q_a^T Q_b``, with the small angles recomputed from sines for accuracy.
- Projection energy of a vector onto a subspace: ``|P v|^2 / |v|^2``; a uniformly random
  direction has expectation ``q / d`` on a ``q``-dimensional subspace of ``R^d``.
- Class-mean alignment: cosine of each centred class mean with its centred label direction.

:func:`resample_statistics` evaluates the same measures on many row resamples at once from the
Gram matrix ``S S^T`` (resampling rows indexes it); tests check it against the direct
functions. :func:`half_samples` and :func:`jackknife_interval` turn such resamples into
intervals: a delete-d jackknife (Shao & Wu 1989) over random half-samples, because resampling
rows *with* replacement duplicates some of them, which biases rank-like measures (effective
rank, participation ratio) far downward.

>>> import numpy as np
>>> m = np.diag([3.0, 3.0, 0.0])          # rank 2, equal singular values
>>> float(participation_ratio(m)), float(effective_rank(m))
(2.0, 2.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ResampleStatistics",
    "resample_class_alignment",
    "resample_statistics",
    "class_alignment",
    "effective_rank",
    "half_samples",
    "jackknife_interval",
    "orthonormal_basis",
    "participation_ratio",
    "principal_angles",
    "projection_energy",
    "random_subspace",
    "spectrum",
    "top_subspace",
    "variance_explained",
]


ZERO_TOL = 1e-6  # relative size below which a centred class mean counts as zero (float32
# residuals carry ~1e-7 relative precision; the Gram path loses half the digits)


def _as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (numpy, torch, list) as a finite float64 array with ``ndim`` dimensions."""
    if hasattr(x, "detach"):  # torch tensor, duck-typed: this module imports no torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries (NaN or inf); all must be finite")
    return arr


def _rows(matrix: Any, center: bool, name: str = "matrix") -> np.ndarray:
    arr = _as_array(matrix, name, 2)
    return arr - arr.mean(0, keepdims=True) if center else arr


def spectrum(matrix: Any, *, center: bool = False) -> np.ndarray:
    """Singular values of ``matrix`` ``[n, d]`` (rows centred first if ``center``), descending.

    Raises:
        ValueError: an all-zero matrix (after centring), whose spectrum measures are undefined.
    """
    rows = _rows(matrix, center)
    sigma = np.linalg.svd(rows, compute_uv=False)
    if sigma[0] <= 0:
        what = "after centring its rows " if center else ""
        raise ValueError(f"matrix is zero {what}(shape {rows.shape}): its spectrum is undefined")
    return sigma


def _pr(lam: np.ndarray) -> np.ndarray:
    return lam.sum(-1) ** 2 / (lam**2).sum(-1)


def _erank(sigma: np.ndarray) -> np.ndarray:
    p = sigma / sigma.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.exp(terms.sum(-1))


def participation_ratio(matrix: Any, *, center: bool = False) -> float:
    """``(sum lambda)^2 / sum lambda^2`` with ``lambda = sigma^2`` of ``matrix`` ``[n, d]``."""
    return float(_pr(spectrum(matrix, center=center) ** 2))


def effective_rank(matrix: Any, *, center: bool = False) -> float:
    """Roy & Vetterli's effective rank ``exp(-sum p_i ln p_i)``, ``p = sigma / sum sigma``."""
    return float(_erank(spectrum(matrix, center=center)))


def variance_explained(matrix: Any, k: int, *, center: bool = False) -> float:
    """Fraction of ``sum sigma^2`` in the top ``k`` components (1.0 once ``k`` >= the rank).

    Args:
        matrix: ``[n, d]`` rows.
        k: number of components, ``k >= 1``.
        center: use the covariance (rows centred) instead of second moments.
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r} is not valid: the number of components must be an int >= 1")
    lam = spectrum(matrix, center=center) ** 2
    return float(lam[:k].sum() / lam.sum())


def top_subspace(matrix: Any, k: int, *, center: bool = False) -> np.ndarray:
    """Orthonormal basis ``[d, k]`` of the top ``k`` right singular vectors of ``[n, d]`` rows.

    Raises:
        ValueError: ``k`` outside ``1 .. rank``, naming the rank.
    """
    rows = _rows(matrix, center)
    _, sigma, vt = np.linalg.svd(rows, full_matrices=False)
    rank = int((sigma > sigma[0] * max(rows.shape) * np.finfo(float).eps).sum()) if sigma[0] else 0
    if not isinstance(k, int | np.integer) or not 1 <= k <= rank:
        raise ValueError(
            f"k={k!r} is not valid for a matrix of rank {rank}: choose 1 <= k <= {rank}"
        )
    return vt[:k].T


def orthonormal_basis(basis: Any, name: str = "basis") -> np.ndarray:
    """Orthonormal columns ``[d, r]`` spanning the columns of ``basis`` ``[d, q]`` (``r`` = rank)."""
    arr = _as_array(basis, name, 2)
    u, sigma, _ = np.linalg.svd(arr, full_matrices=False)
    if sigma[0] <= 0:
        raise ValueError(f"{name} is zero (shape {arr.shape}): it spans no subspace")
    rank = int((sigma > sigma[0] * max(arr.shape) * np.finfo(float).eps).sum())
    return u[:, :rank]


def _angles_from_bases(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    """Principal angles (ascending) between orthonormal bases ``[..., d, p]`` and ``[..., d, q]``."""
    if qa.shape[-1] < qb.shape[-1]:
        qa, qb = qb, qa  # symmetric; keep q <= p so the sines pair with the cosines
    cross = np.swapaxes(qa, -1, -2) @ qb  # [..., p, q]
    cos = np.clip(np.linalg.svd(cross, compute_uv=False), 0.0, 1.0)  # descending
    angles = np.arccos(cos)  # ascending
    residual = qb - qa @ cross  # component of span(b) outside span(a)
    sin = np.clip(np.sort(np.linalg.svd(residual, compute_uv=False), axis=-1), 0.0, 1.0)
    small = cos**2 >= 0.5  # arccos is inaccurate near 1; arcsin is accurate there
    return np.where(small, np.arcsin(sin), angles)


def principal_angles(a: Any, b: Any) -> np.ndarray:
    """Principal angles in radians, ascending, between ``span(a)`` and ``span(b)``.

    Args:
        a: ``[d, p]`` columns spanning the first subspace.
        b: ``[d, q]`` columns spanning the second (same ``d``).

    Returns:
        ``[min(r_a, r_b)]`` angles in ``[0, pi/2]`` (``r`` the ranks), smallest first.

    >>> import numpy as np
    >>> e = np.eye(3)
    >>> np.degrees(principal_angles(e[:, :2], e[:, 1:])).round(6).tolist()
    [0.0, 90.0]
    """
    qa, qb = orthonormal_basis(a, "a"), orthonormal_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(
            f"a and b live in different spaces: a has d={qa.shape[0]} rows, b has d={qb.shape[0]}"
        )
    return _angles_from_bases(qa, qb)


def projection_energy(vector: Any, basis: Any) -> float:
    """``|P v|^2 / |v|^2``: the fraction of ``vector`` ``[d]``'s energy inside ``span(basis)``."""
    v = _as_array(vector, "vector", 1)
    q = orthonormal_basis(basis)
    if q.shape[0] != v.shape[0]:
        raise ValueError(f"vector has d={v.shape[0]}; basis has d={q.shape[0]} rows")
    norm2 = float(v @ v)
    if norm2 <= 0:
        raise ValueError("vector is zero: its projection energy is undefined")
    return float(np.sum((q.T @ v) ** 2) / norm2)


def random_subspace(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly (Haar) random ``k``-dimensional subspace of ``R^d``: orthonormal ``[d, k]``."""
    if (
        not isinstance(d, int | np.integer)
        or not isinstance(k, int | np.integer)
        or not 1 <= k <= d
    ):
        raise ValueError(f"k={k!r}, d={d!r} are not valid: need integers 1 <= k <= d")
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))  # sign fix makes the distribution exactly Haar


def _check_labels(labels: Any, n: int, n_classes: int) -> np.ndarray:
    lab = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if lab.shape != (n,) or not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be {n} integers (one per row); got shape {lab.shape}")
    if lab.min() < 0 or lab.max() >= n_classes:
        raise ValueError(f"labels must be in 0..{n_classes - 1}; got {lab.min()}..{lab.max()}")
    missing = sorted(set(range(n_classes)) - set(lab.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no rows; every class needs at least one")
    return lab


def class_alignment(features: Any, labels: Any, directions: Any) -> np.ndarray:
    """Cosine of each class's centred mean with its centred label direction.

    ``cos(mu_k - mean_j mu_j, w_k - mean_j w_j)`` with ``mu_k`` the mean of the rows of class
    ``k`` (centring on the unweighted mean of class means, so class sizes do not tilt it).

    Args:
        features: ``[n, d]`` rows.
        labels: ``[n]`` class index per row, every class ``0 .. K-1`` present.
        directions: ``[K, d]`` one direction per class (e.g. the label unembeddings).

    Returns:
        ``[K]`` cosines (NaN where a centred vector is zero: a centred class mean counts as
        zero below ``ZERO_TOL`` times the largest row norm, e.g. when every row is the same).
    """
    x = _as_array(features, "features", 2)
    w = _as_array(directions, "directions", 2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"directions have d={w.shape[1]}; features have d={x.shape[1]}")
    lab = _check_labels(labels, x.shape[0], w.shape[0])
    means = np.stack([x[lab == k].mean(0) for k in range(w.shape[0])])
    mu = means - means.mean(0)
    wc = w - w.mean(0)
    scale = float(np.linalg.norm(x, axis=1).max())
    den = np.linalg.norm(mu, axis=1) * np.linalg.norm(wc, axis=1)
    zero = np.linalg.norm(mu, axis=1) <= ZERO_TOL * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(zero | (den == 0), np.nan, (mu * wc).sum(1) / den)


# --------------------------------------------------------------------------------------------
# many resamples at once, and intervals from them


def half_samples(labels: Any, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_draws, m]`` random half-samples of the rows, without replacement, within each class.

    Each draw keeps ``max(1, n_k // 2)`` distinct rows of every class ``k`` (``n_k`` its rows),
    so every draw holds every class and ``m = sum_k max(1, n_k // 2)``.
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.size == 0:
        raise ValueError(f"labels must be a non-empty [n] array; got shape {lab.shape}")
    if not isinstance(n_draws, int | np.integer) or n_draws < 1:
        raise ValueError(f"n_draws={n_draws!r} is not valid: it must be an int >= 1")
    parts = []
    for k in np.unique(lab):
        members = np.flatnonzero(lab == k)
        keep = max(1, len(members) // 2)
        order = np.argsort(rng.random((n_draws, len(members))), axis=1)[:, :keep]
        parts.append(members[order])
    return np.concatenate(parts, axis=1)


def jackknife_interval(
    point: float,
    draws: Any,
    n: int,
    m: int,
    *,
    bounds: tuple[float, float] = (-np.inf, np.inf),
    z: float = 1.959963984540054,
) -> tuple[float, float]:
    """``point +- z se`` with the delete-d jackknife standard error of subsample statistics.

    Shao & Wu (1989): for statistics ``theta_S`` of random subsets of ``m`` of ``n`` rows
    (``d = n - m`` deleted), ``se^2 = m / (n - m) * mean_S (theta_S - mean theta_S)^2``. With
    half-samples (``m = n/2``) the factor is 1; for a mean it gives ``s^2 / n`` exactly in
    expectation. The interval is clipped to ``bounds`` (the measure's range).

    Args:
        point: the estimate on all ``n`` rows.
        draws: ``[B]`` the statistic on each subsample (NaNs are ignored).
        n: rows in the full sample; ``m``: rows per subsample (``1 <= m < n``).
        bounds: the measure's range; z: the normal quantile (default 95%).
    """
    if not 1 <= m < n:
        raise ValueError(f"m={m}, n={n} are not valid: subsamples need 1 <= m < n rows")
    d = np.asarray(draws, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2 or not np.isfinite(point):
        return float("nan"), float("nan")
    se = math.sqrt(m / (n - m) * float(np.mean((d - d.mean()) ** 2)))
    return float(max(point - z * se, bounds[0])), float(min(point + z * se, bounds[1]))


@dataclass(frozen=True)
class ResampleStatistics:
    """The measures on each of ``B`` row resamples, each a ``[B]`` array (``[B, K]`` for
    ``class_cos``; ``[B, min(k, q)]`` for ``angles``, radians ascending)."""

    participation_ratio: np.ndarray
    effective_rank: np.ndarray
    var_top1: np.ndarray
    var_top_k: np.ndarray
    angles: np.ndarray
    mean_energy: np.ndarray
    class_cos: np.ndarray | None


def resample_statistics(
    matrix: Any,
    resamples: Any,
    basis: Any,
    k: int,
    *,
    center: bool = False,
    labels: Any | None = None,
    directions: Any | None = None,
) -> ResampleStatistics:
    """Spectrum, top-``k`` angles to ``span(basis)`` and mean-vector energy, per row resample.

    Everything comes from the Gram matrix ``G = S S^T`` and the projections ``S Q`` (``Q`` an
    orthonormal basis of ``span(basis)``): a resample ``idx`` has Gram ``G[idx][:, idx]``, its
    top right singular vectors are ``V_k = S_idx^T U_k / sigma_k`` and ``V_k^T Q =
    diag(1/sigma_k) U_k^T (S Q)[idx]``, so no ``[n, d]`` resample is ever built.

    Args:
        matrix: ``[n, d]`` rows ``S``.
        resamples: ``[B, n']`` row indices of each resample (``np.arange(n)[None]`` is ``S``).
        basis: ``[d, q]`` columns spanning the reference subspace.
        k: dimension of the top subspace compared with it (``1 <= k <= n'``).
        center: centre each resample's rows first (covariance spectrum and subspace).
        labels, directions: ``[n]`` classes and ``[K, d]`` directions for the class-mean
            cosines of :func:`class_alignment` (optional; every resample must hold every class).

    Returns:
        :class:`ResampleStatistics`; ``mean_energy`` is :func:`projection_energy` of the mean
        row of each resample (uncentred whatever ``center`` says). A resample whose top ``k``
        singular values include a zero gets NaN angles.
    """
    s = _as_array(matrix, "matrix", 2)
    idx = np.asarray(resamples)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"resamples must be [B, n] integer row indices; got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= s.shape[0]:
        raise ValueError(f"resample indices must be in 0..{s.shape[0] - 1}")
    n_b, m = idx.shape
    if not isinstance(k, int | np.integer) or not 1 <= k <= m:
        raise ValueError(f"k={k!r} is not valid: need 1 <= k <= {m} (rows per resample)")
    q = orthonormal_basis(basis)
    if q.shape[0] != s.shape[1]:
        raise ValueError(f"basis has d={q.shape[0]} rows; matrix has d={s.shape[1]} columns")
    gram = s @ s.T
    proj = s @ q  # [n, q]
    g = gram[idx[:, :, None], idx[:, None, :]]  # [B, m, m]
    p = proj[idx]  # [B, m, q]
    ones = np.full(m, 1.0 / m)
    mean_norm2 = np.einsum("i,bij,j->b", ones, g, ones)
    mean_proj = p.mean(1)  # [B, q]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_energy = (mean_proj**2).sum(-1) / mean_norm2
    if center:
        h = np.eye(m) - 1.0 / m
        g = h @ g @ h
        p = h @ p
    lam, u = np.linalg.eigh(g)  # ascending
    lam = np.clip(lam[:, ::-1], 0.0, None)
    u = u[:, :, ::-1]
    if np.any(lam[:, 0] <= 0):
        raise ValueError("a resample of the matrix is zero: its spectrum is undefined")
    sigma = np.sqrt(lam)
    top = sigma[:, :k]
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = np.swapaxes(u[:, :, :k], 1, 2) @ p / top[:, :, None]  # [B, k, q] = V_k^T Q
    good = np.all(top > sigma[:, :1] * m * np.finfo(float).eps * 10, axis=1)
    cos = np.full((n_b, min(k, q.shape[1])), np.nan)
    if good.any():
        cos[good] = np.clip(np.linalg.svd(cross[good], compute_uv=False), 0.0, 1.0)
    angles = np.arccos(cos)
    class_cos = None
    if labels is not None or directions is not None:
        if labels is None or directions is None:
            raise ValueError("class cosines need both labels and directions")
        class_cos = resample_class_alignment(s, idx, labels, directions)
    return ResampleStatistics(
        participation_ratio=_pr(lam),
        effective_rank=_erank(sigma),
        var_top1=lam[:, 0] / lam.sum(-1),
        var_top_k=lam[:, :k].sum(-1) / lam.sum(-1),
        angles=angles,
        mean_energy=mean_energy,
        class_cos=class_cos,
    )


def resample_class_alignment(
    features: Any, resamples: Any, labels: Any, directions: Any
) -> np.ndarray:
    """:func:`class_alignment` on each row resample, ``[B, K]``, from the Gram matrix.

    Args:
        features: ``[n, d]`` rows.
        resamples: ``[B, n']`` row indices; every resample must hold every class.
        labels: ``[n]`` class per row.
        directions: ``[K, d]``.
    """
    x = _as_array(features, "features", 2)
    w = _as_array(directions, "directions", 2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"directions have d={w.shape[1]}; features have d={x.shape[1]}")
    lab = _check_labels(labels, x.shape[0], w.shape[0])
    idx = np.asarray(resamples)
    if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"resamples must be [B, n] integer row indices; got shape {idx.shape}")
    gram = x @ x.T
    proj_w = x @ (w - w.mean(0)).T  # [n, K]
    n_classes = w.shape[0]
    n_b = idx.shape[0]
    # coefficients c[b, k, i]: class mean k of resample b as a combination of the rows of S
    coef = np.zeros((n_b, n_classes, gram.shape[0]))
    rows = np.arange(n_b)[:, None]
    for k in range(n_classes):
        member = (lab[idx] == k).astype(float)  # [B, m]
        count = member.sum(1, keepdims=True)
        if np.any(count == 0):
            raise ValueError(f"a resample has no row of class {k}; class cosines need every class")
        np.add.at(coef[:, k], (np.broadcast_to(rows, idx.shape), idx), member / count)
    coef = coef - coef.mean(1, keepdims=True)  # centred class means
    dots = np.einsum("bki,ik->bk", coef, proj_w)
    # |class mean|^2 = c^T G c, as two matmuls (a three-operand einsum loops in Python's
    # reference order: 70x slower at 1000 resamples)
    norms = np.sqrt(np.clip(((coef @ gram) * coef).sum(-1), 0.0, None))
    w_norm = np.linalg.norm(w - w.mean(0), axis=1)
    scale = math.sqrt(float(np.diag(gram).max()))
    den = norms * w_norm
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((norms <= ZERO_TOL * scale) | (den == 0), np.nan, dots / den)

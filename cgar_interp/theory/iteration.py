"""Batched numerics for the self-consistent map ``Phi(p) = softmax(beta (z + K p))``.

Shared by :mod:`.gate` (one configuration, many starts) and :mod:`.simulate` (many trials at
once): ``z`` ``[..., N]`` are first-order logits ``b + lam A^-1 u`` and ``K`` ``[..., N, N]`` the
symmetric feedback ``lam^2 A^-1``. float64 numpy throughout.
"""

from __future__ import annotations

import numpy as np

from .mhn import softmax

__all__ = ["dedup_rows", "iterate_phi", "phi_map", "solve_rows"]


def phi_map(p: np.ndarray, z: np.ndarray, K: np.ndarray, beta: float) -> np.ndarray:  # noqa: N803
    """Batched ``Phi(p) = softmax(beta (z + K p))``.

    Args:
        p: ``[..., N]`` retrieval probabilities (any real vector is accepted).
        z: ``[..., N]`` first-order logits ``b + lam A^-1 u`` (broadcast against ``p``).
        K: ``[..., N, N]`` symmetric feedback matrix ``lam^2 A^-1`` (broadcast).
        beta: inverse temperature.

    Returns:
        ``[..., N]`` points of the simplex.
    """
    kp = np.matmul(K, p[..., None])[..., 0]
    return softmax(z + kp, beta)


def iterate_phi(
    z: np.ndarray,
    K: np.ndarray,  # noqa: N803
    beta: float,
    p0: np.ndarray | None = None,
    *,
    max_iter: int = 5000,
    tol: float = 1e-13,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched fixed-point iteration ``p <- Phi(p)`` until every row moves less than ``tol``.

    Args:
        z: ``[..., N]`` first-order logits.
        K: ``[..., N, N]`` feedback matrices ``lam^2 A^-1`` (broadcast against ``z``).
        beta: inverse temperature.
        p0: ``[..., N]`` starts; ``None`` starts from zero feedback (``p = 0``, the two-stage
            order: gates settle on ``u`` alone, so the first iterate is the first-order
            ``softmax(beta z)``).
        max_iter: most iterations.
        tol: convergence threshold on ``max |p_new - p|`` per row.

    Returns:
        ``(p, n_iter, converged)``: ``[..., N]`` last iterate, ``[...]`` iterations used per row,
        ``[...]`` booleans.
    """
    z = np.asarray(z, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)  # noqa: N806
    shape = np.broadcast_shapes(z.shape, K.shape[:-1], () if p0 is None else np.shape(p0))
    n, lead = shape[-1], shape[:-1]
    rows = int(np.prod(lead, dtype=np.int64))
    zf = np.broadcast_to(z, shape).reshape(rows, n)
    shared = K.ndim == 2  # one matrix for every row: no per-row copies
    kf = K if shared else np.broadcast_to(K, (*lead, n, n)).reshape(rows, n, n)
    p = np.zeros((rows, n)) if p0 is None else np.broadcast_to(p0, shape).reshape(rows, n).copy()
    n_iter = np.zeros(rows, dtype=np.int64)
    done = np.zeros(rows, dtype=bool)
    active = np.arange(rows)
    za, ka = zf, kf
    for _ in range(max_iter):
        pa = p[active]
        kp = pa @ ka if shared else np.matmul(ka, pa[..., None])[..., 0]  # K symmetric
        new = softmax(za + kp, beta)
        fin = np.max(np.abs(new - pa), axis=-1) < tol
        p[active] = new
        n_iter[active] += 1
        if fin.any():
            done[active[fin]] = True
            active, za = active[~fin], za[~fin]
            ka = ka if shared else ka[~fin]
            if active.size == 0:
                break
    return p.reshape(shape), n_iter.reshape(lead), done.reshape(lead)


def solve_rows(mats: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve ``mats[k] x = rhs[k]`` for every row; least squares where a matrix is singular."""
    try:
        return np.linalg.solve(mats, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.stack(
            [np.linalg.lstsq(m, r, rcond=None)[0] for m, r in zip(mats, rhs, strict=True)]
        )


def dedup_rows(points: np.ndarray, tol: float) -> np.ndarray:
    """Rows of ``points`` ``[S, N]`` with near-duplicates (max-norm < tol) dropped, order kept."""
    kept: list[np.ndarray] = []
    for p in points:
        if all(np.max(np.abs(p - q)) >= tol for q in kept):
            kept.append(p)
    return np.array(kept) if kept else np.zeros((0, points.shape[-1]))

"""Independent reference formulas for the theory tests (written from the
paper's formulas, as docs/science.md states them, not from the code)."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax as sp_softmax


def a_matrix(G: np.ndarray, alpha: float) -> np.ndarray:  # noqa: N803
    return (1.0 - alpha) * np.eye(len(G)) + alpha * G


def phi_ref(p, b, u, G, alpha, lam, beta):  # noqa: N803
    """softmax(beta (b + lam A^-1 u + lam^2 A^-1 p)) with a linear solve."""
    A = a_matrix(G, alpha)  # noqa: N806
    s = np.linalg.solve(A, u + lam * np.asarray(p))
    return sp_softmax(beta * (b + lam * s))


def random_config(rng: np.random.Generator, n: int, *, psd: bool = True):
    """b, u, G with unit diagonal (a Gram matrix of random unit context vectors when psd)."""
    b = rng.normal(size=n)
    u = rng.normal(size=n)
    if psd:
        c = rng.normal(size=(max(2, n // 2), n))
        c /= np.linalg.norm(c, axis=0)
        G = c.T @ c  # noqa: N806
    else:
        m = rng.normal(size=(n, n))
        G = 0.5 * (m + m.T)  # noqa: N806
    return b, u, G

"""Modern Hopfield network (Ramsauer et al. 2020; the paper's appendix B;
docs/science.md#modern-hopfield-networks).

Conventions: stored patterns are the *columns* of ``X`` with shape ``[d, N]`` (``d`` the pattern
dimension, ``N`` the number of patterns); a state (query) ``xi`` has shape ``[d]`` or ``[..., d]``
(batched). ``M = max_i |x_i|`` is the largest pattern norm. Everything is float64 numpy.

- Energy ``E(xi) = -lse(beta, X^T xi) + 1/2 xi^T xi + beta^-1 ln N + 1/2 M^2`` with
  ``lse(beta, z) = beta^-1 ln sum_i exp(beta z_i)``.
- Update (one attention step) ``xi_new = X softmax(beta X^T xi)``; it is the concave-convex
  procedure for ``E``, so ``E`` never increases along the iteration.
- Separation of pattern i: ``Delta_i = x_i^T x_i - max_{j != i} x_i^T x_j``.
- Well separated (Ramsauer, main text before Thm 3, constants checked against the original):
  ``Delta_i >= 2/(beta N) + beta^-1 ln(2 (N-1) N beta M^2)``.
- Retrieval error (Ramsauer Thm 5): ``|f(xi) - x_i| <= 2 (N-1) exp(-beta (Delta_i - 2 r M)) M``
  and, for ``r <= 1/(2 beta M)``, ``|x_i - x_i*| <= 2 e (N-1) M exp(-beta Delta_i)``.
- Storage capacity (Ramsauer Thm 3): see :func:`storage_capacity`.

The softmax helpers at the end (:func:`entropy`, :func:`n_eff`, :func:`keys_for_mass`,
:func:`classify_softmax`) take numpy arrays *or* torch tensors and work along the last axis, so
attention probes can call them on ``[batch, head, q, k]`` patterns directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import entr, lambertw, logsumexp, wrightomega

__all__ = [
    "MHNIteration",
    "StorageCapacity",
    "capacity_constant",
    "classify_softmax",
    "entropy",
    "global_fixed_point_unique",
    "iterate_to_fixed_point",
    "keys_for_mass",
    "mhn_energy",
    "mhn_update",
    "n_eff",
    "retrieval_error_bound",
    "score_margin",
    "separation",
    "softmax",
    "softmax_error_bound",
    "storage_capacity",
    "well_separated",
    "well_separated_threshold",
]

REGIMES = ("single", "metastable", "global")


# --------------------------------------------------------------------------------------------
# input checks


def _as_float64(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy, torch, list) as a float64 numpy array; refuses non-finite entries."""
    if hasattr(x, "detach"):  # torch tensor: duck-typed, theory/ does not import torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries (NaN or inf); all must be finite")
    return arr


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta={beta!r} is not valid: the inverse temperature must be > 0")
    return beta


def _check_patterns(X: Any, min_patterns: int = 1) -> np.ndarray:
    X = _as_float64(X, "X")
    if X.ndim != 2:
        raise ValueError(f"X must be [d, N] (patterns as columns); got shape {X.shape}")
    if X.shape[1] < min_patterns:
        raise ValueError(f"X has N={X.shape[1]} patterns; this needs N >= {min_patterns}")
    return X


def _check_state(X: np.ndarray, xi: Any) -> np.ndarray:
    xi = _as_float64(xi, "xi")
    if xi.ndim == 0 or xi.shape[-1] != X.shape[0]:
        raise ValueError(
            f"xi must be [d] or [..., d] with d={X.shape[0]} (rows of X); got shape {xi.shape}"
        )
    return xi


def softmax(z: Any, beta: float = 1.0) -> np.ndarray:
    """Numerically stable ``softmax(beta z)`` along the last axis.

    Args:
        z: ``[..., N]`` scores.
        beta: inverse temperature (> 0).

    Returns:
        ``[..., N]`` probabilities, float64.
    """
    z = beta * _as_float64(z, "z")
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# energy, update, iteration


def mhn_energy(X: Any, xi: Any, beta: float) -> np.ndarray | float:
    """Modern Hopfield energy ``E(xi)`` (Ramsauer eq. 2 / the paper's eq. 16).

    Args:
        X: ``[d, N]`` stored patterns (columns).
        xi: ``[d]`` state or ``[..., d]`` batch of states.
        beta: inverse temperature (> 0).

    Returns:
        The energy, a float for one state or ``[...]`` for a batch. It is >= 0 for every
        state (the constants ``beta^-1 ln N + M^2/2`` make it so).
    """
    X = _check_patterns(X)
    beta = _check_beta(beta)
    xi = _check_state(X, xi)
    n = X.shape[1]
    big_m = float(np.linalg.norm(X, axis=0).max())
    lse = logsumexp(beta * (xi @ X), axis=-1) / beta
    e = -lse + 0.5 * np.sum(xi * xi, axis=-1) + math.log(n) / beta + 0.5 * big_m**2
    return float(e) if np.ndim(e) == 0 else e


def mhn_update(X: Any, xi: Any, beta: float) -> np.ndarray:
    """One update ``xi_new = X softmax(beta X^T xi)`` (= one attention step with keys = values).

    Args:
        X: ``[d, N]`` stored patterns.
        xi: ``[d]`` or ``[..., d]`` states.
        beta: inverse temperature (> 0).

    Returns:
        ``[d]`` or ``[..., d]`` new states.
    """
    X = _check_patterns(X)
    beta = _check_beta(beta)
    xi = _check_state(X, xi)
    return softmax(xi @ X, beta) @ X.T


@dataclass(frozen=True)
class MHNIteration:
    """Trajectory of the update from one initial state.

    Attributes:
        states: ``[T + 1, d]`` states, ``states[0]`` the initial one.
        energies: ``[T + 1]`` energy of each state (non-increasing up to float rounding).
        p: ``[N]`` softmax weights ``softmax(beta X^T xi)`` at the last state.
        n_iter: number of updates made (T).
        converged: the last step moved less than ``tol`` (max-norm).
        step_norm: max-norm of the last step.
    """

    states: np.ndarray
    energies: np.ndarray
    p: np.ndarray
    n_iter: int
    converged: bool
    step_norm: float

    @property
    def fixed_point(self) -> np.ndarray:
        """``[d]`` the last state (the fixed point when ``converged``)."""
        return self.states[-1]


def iterate_to_fixed_point(
    X: Any, xi0: Any, beta: float, *, max_iter: int = 1000, tol: float = 1e-12
) -> MHNIteration:
    """Iterate :func:`mhn_update` from ``xi0`` until a step moves less than ``tol``.

    Args:
        X: ``[d, N]`` stored patterns.
        xi0: ``[d]`` initial state (a single query).
        beta: inverse temperature (> 0).
        max_iter: most updates to make (>= 1).
        tol: stop when ``max |xi_new - xi| < tol``.

    Returns:
        The :class:`MHNIteration` with the whole trajectory and its energies.
    """
    X = _check_patterns(X)
    beta = _check_beta(beta)
    xi = _check_state(X, xi0)
    if xi.ndim != 1:
        raise ValueError(f"xi0 must be one state [d]; got shape {xi.shape} (loop over a batch)")
    if max_iter < 1:
        raise ValueError(f"max_iter={max_iter} is not valid: it must be >= 1")
    states = [xi]
    step = math.inf
    for _ in range(max_iter):
        new = softmax(xi @ X, beta) @ X.T
        step = float(np.max(np.abs(new - xi)))
        xi = new
        states.append(xi)
        if step < tol:
            break
    traj = np.stack(states)
    return MHNIteration(
        states=traj,
        energies=np.asarray(mhn_energy(X, traj, beta)),
        p=softmax(xi @ X, beta),
        n_iter=len(states) - 1,
        converged=step < tol,
        step_norm=step,
    )


def global_fixed_point_unique(X: Any, beta: float) -> bool:
    """Whether ``beta M^2 < 1``, which makes the update a contraction (one fixed point).

    The update's Jacobian is ``beta X (diag p - p p^T) X^T``; for a unit ``v`` its quadratic form
    is ``beta Var_p(X^T v) <= beta M^2`` (each ``x_j^T v`` lies in ``[-M, M]``), so ``beta M^2 < 1``
    bounds the Jacobian's norm below 1 everywhere.
    """
    X = _check_patterns(X)
    beta = _check_beta(beta)
    return bool(beta * float(np.linalg.norm(X, axis=0).max()) ** 2 < 1.0)


# --------------------------------------------------------------------------------------------
# separation, well-separated condition, retrieval bounds


def separation(X: Any) -> np.ndarray:
    """Separation ``Delta_i = x_i^T x_i - max_{j != i} x_i^T x_j`` of every pattern (Ramsauer Def. 1).

    Args:
        X: ``[d, N]`` stored patterns, ``N >= 2``.

    Returns:
        ``[N]`` separations (negative when another pattern has a larger overlap with ``x_i``).
    """
    X = _check_patterns(X, min_patterns=2)
    gram = X.T @ X
    off = gram.copy()
    np.fill_diagonal(off, -np.inf)
    return np.diag(gram) - off.max(axis=1)


def score_margin(scores: Any) -> np.ndarray | float:
    """Margin of the top entry over the runner-up along the last axis (``[..., N] -> [...]``).

    For attention scores ``q.k`` this is the separation of the attended key *from the query's
    point of view*, Ramsauer's ``min_j (xi^T x_i - xi^T x_j)`` for the argmax ``i``.
    """
    s = _as_float64(scores, "scores")
    if s.ndim == 0 or s.shape[-1] < 2:
        raise ValueError(f"scores must be [..., N] with N >= 2; got shape {s.shape}")
    top2 = np.sort(s, axis=-1)[..., -2:]
    m = top2[..., 1] - top2[..., 0]
    return float(m) if np.ndim(m) == 0 else m


def well_separated_threshold(n: int, beta: float, big_m: float) -> float:
    """Ramsauer's separation threshold ``2/(beta N) + beta^-1 ln(2 (N-1) N beta M^2)``.

    Args:
        n: number of stored patterns ``N >= 2``.
        beta: inverse temperature (> 0).
        big_m: largest pattern norm ``M > 0``.
    """
    beta = _check_beta(beta)
    if n < 2:
        raise ValueError(f"n={n} is not valid: the condition needs N >= 2 patterns")
    if not (math.isfinite(big_m) and big_m > 0):
        raise ValueError(f"big_m={big_m!r} is not valid: the largest pattern norm must be > 0")
    return 2.0 / (beta * n) + math.log(2.0 * (n - 1) * n * beta * big_m**2) / beta


def well_separated(X: Any, beta: float) -> np.ndarray:
    """Whether each pattern meets Ramsauer's well-separated condition.

    ``Delta_i >= 2/(beta N) + beta^-1 ln(2 (N-1) N beta M^2)``; then the update maps the ball of
    radius ``1/(beta N M)`` around ``x_i`` into itself and has a fixed point there.

    Args:
        X: ``[d, N]`` stored patterns, ``N >= 2``.
        beta: inverse temperature (> 0).

    Returns:
        ``[N]`` booleans.
    """
    X = _check_patterns(X, min_patterns=2)
    big_m = float(np.linalg.norm(X, axis=0).max())
    return separation(X) >= well_separated_threshold(X.shape[1], beta, big_m)


def softmax_error_bound(delta: Any, n: int, beta: float) -> np.ndarray | float:
    """``min(1, (N-1) exp(-beta Delta))``: bound on ``1 - p_i`` when ``z_i - z_j >= Delta`` for all j.

    With ``t = sum_{j != i} exp(-beta (z_i - z_j)) <= (N-1) exp(-beta Delta)``,
    ``1 - p_i = t / (1 + t) <= (N-1) exp(-beta Delta)``. Used by Ramsauer Thm 5 and the paper's
    Theorem 3.1 alike.

    Args:
        delta: margin(s) ``Delta`` (any shape).
        n: number of entries ``N >= 1``.
        beta: inverse temperature (> 0).
    """
    beta = _check_beta(beta)
    d = _as_float64(delta, "delta")
    with np.errstate(over="ignore"):
        out = np.minimum(1.0, (n - 1) * np.exp(-beta * d))
    return float(out) if np.ndim(out) == 0 else out


def retrieval_error_bound(X: Any, beta: float, radius: Any | None = None) -> np.ndarray:
    """Ramsauer Thm 5 bound on the retrieval error of every pattern.

    With ``radius=None`` (a query and fixed point within ``1/(2 beta M)`` of ``x_i``) this is the
    theorem's second form ``|x_i - x_i*| <= 2 e (N-1) M exp(-beta Delta_i)``. With a radius
    ``r`` it is the first form ``|f(xi) - x_i| <= 2 (N-1) exp(-beta (Delta_i - 2 r M)) M`` for any
    query with ``|xi - x_i| <= r``. Ramsauer state it with ``r = max(|xi - x_i|, |x_i* - x_i|)``;
    the derivation (``1 - p_i <= (N-1) exp(-beta (Delta_i - 2 |xi - x_i| M))`` and
    ``|f(xi) - x_i| <= 2 M (1 - p_i)``) only needs ``r >= |xi - x_i|``, which is the reading here.
    The bound is not clipped (it can exceed ``2 M``, where it says nothing).

    Args:
        X: ``[d, N]`` stored patterns, ``N >= 2``.
        beta: inverse temperature (> 0).
        radius: ``None``, a scalar, or ``[N]`` per-pattern query distances.

    Returns:
        ``[N]`` bounds.
    """
    X = _check_patterns(X, min_patterns=2)
    beta = _check_beta(beta)
    n = X.shape[1]
    big_m = float(np.linalg.norm(X, axis=0).max())
    delta = separation(X)
    with np.errstate(over="ignore"):
        if radius is None:
            return 2.0 * math.e * (n - 1) * big_m * np.exp(-beta * delta)
        r = _as_float64(radius, "radius")
        if np.any(r < 0):
            raise ValueError("radius must be >= 0")
        return 2.0 * (n - 1) * big_m * np.exp(-beta * (delta - 2.0 * r * big_m))


# --------------------------------------------------------------------------------------------
# storage capacity (Ramsauer Thm 3)


@dataclass(frozen=True)
class StorageCapacity:
    """Ramsauer Thm 3 for patterns drawn uniformly on the sphere of radius ``M = K sqrt(d-1)``.

    Attributes:
        a: ``2/(d-1) (1 + ln(2 beta K^2 p (d-1)))``.
        b: ``2 K^2 beta / 5``.
        c: ``b / W_0(exp(a + ln b))``.
        n_patterns: ``sqrt(p) c^((d-1)/4)``: with probability ``1 - p`` at least this many random
            patterns are well separated (stored and retrievable).
        condition_holds: the theorem's requirement ``c >= (2/sqrt(p))^(4/(d-1))``.
        radius: the sphere radius ``M = K sqrt(d-1)`` the theorem assumes.
    """

    a: float
    b: float
    c: float
    n_patterns: float
    condition_holds: bool
    radius: float


def _check_capacity_args(d: int, beta: float, big_k: float, p: float) -> None:
    if int(d) != d or d < 2:
        raise ValueError(f"d={d!r} is not valid: the pattern dimension must be an integer >= 2")
    _check_beta(beta)
    if not (math.isfinite(big_k) and big_k > 0):
        raise ValueError(
            f"K={big_k!r} is not valid: it must be > 0 (patterns on radius K sqrt(d-1))"
        )
    if not (0 < p <= 1):
        raise ValueError(f"p={p!r} is not valid: the failure probability must be in (0, 1]")


def capacity_constant(d: int, beta: float, K: float, p: float) -> float:  # noqa: N803
    """Ramsauer Thm 3 constant ``c = b / W_0(exp(a + ln b))``.

    ``a = 2/(d-1) (1 + ln(2 beta K^2 p (d-1)))``, ``b = 2 K^2 beta / 5``, ``W_0`` the upper branch
    of Lambert W (``scipy.special.lambertw``; for ``a + ln b > 700``, where ``exp`` overflows,
    ``scipy.special.wrightomega``, which is ``W_0(exp(x))``). Equivalently ``c`` solves
    ``b/c - ln c = a``.

    Args:
        d: pattern dimension (>= 2).
        beta: inverse temperature (> 0).
        K: patterns lie on the sphere of radius ``M = K sqrt(d-1)``.
        p: failure probability in ``(0, 1]``.
    """
    _check_capacity_args(d, beta, K, p)
    a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * K**2 * p * (d - 1)))
    b = 2.0 * K**2 * beta / 5.0
    x = a + math.log(b)
    w = float(np.real(lambertw(math.exp(x), 0))) if x < 700 else float(np.real(wrightomega(x)))
    return b / w


def storage_capacity(d: int, beta: float, K: float, p: float) -> StorageCapacity:  # noqa: N803
    """Everything Ramsauer Thm 3 states for ``(d, beta, K, p)``; see :class:`StorageCapacity`."""
    _check_capacity_args(d, beta, K, p)
    a = 2.0 / (d - 1) * (1.0 + math.log(2.0 * beta * K**2 * p * (d - 1)))
    b = 2.0 * K**2 * beta / 5.0
    c = capacity_constant(d, beta, K, p)
    return StorageCapacity(
        a=a,
        b=b,
        c=c,
        n_patterns=math.sqrt(p) * c ** ((d - 1) / 4.0),
        condition_holds=bool(c >= (2.0 / math.sqrt(p)) ** (4.0 / (d - 1))),
        radius=K * math.sqrt(d - 1),
    )


# --------------------------------------------------------------------------------------------
# softmax diagnostics for attention probes (numpy or torch, last axis, batched)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def entropy(p: Any) -> Any:
    """Shannon entropy in nats along the last axis, ``0 ln 0 = 0``.

    Args:
        p: ``[..., N]`` probabilities (numpy array or torch tensor).

    Returns:
        ``[...]`` entropies, same library as the input (numpy float64 / torch in p's dtype).
    """
    if _is_torch(p):
        import torch

        return torch.special.entr(p).sum(-1)
    return entr(np.asarray(p, dtype=np.float64)).sum(-1)


def n_eff(p: Any) -> Any:
    """Effective number of entries ``exp(H(p))`` along the last axis (between 1 and N)."""
    h = entropy(p)
    return h.exp() if _is_torch(h) else np.exp(h)


def keys_for_mass(p: Any, mass: float = 0.9, atol: float | None = None) -> Any:
    """Smallest number of entries (largest first) whose sum reaches ``mass`` of the total.

    Ramsauer et al. characterise attention heads by this count at ``mass = 0.9``. The total is
    taken from ``p`` itself (rows need not sum to exactly 1), and a partial sum counts as reaching
    the target when it is within ``atol`` of it (default ``64 * eps`` of p's dtype), so that float
    rounding (0.3 + 0.3 + 0.3 = 0.8999...) does not add a spurious entry.

    Args:
        p: ``[..., N]`` nonnegative weights (numpy array or torch tensor).
        mass: target fraction in ``(0, 1]``.
        atol: tolerance on the fraction reached.

    Returns:
        ``[...]`` integer counts in ``[1, N]`` (numpy int64 / torch int64).
    """
    if not (0 < mass <= 1):
        raise ValueError(f"mass={mass!r} is not valid: it must be in (0, 1]")
    if _is_torch(p):
        import torch

        tol = 64 * torch.finfo(p.dtype).eps if atol is None else atol
        srt = torch.sort(p, dim=-1, descending=True).values
        cs = srt.cumsum(-1)
        target = mass * cs[..., -1:] - tol * cs[..., -1:]
        return ((cs < target).sum(-1) + 1).clamp(max=p.shape[-1])
    arr = np.asarray(p)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    tol = 64 * np.finfo(arr.dtype).eps if atol is None else atol
    srt = -np.sort(-arr, axis=-1)
    cs = np.cumsum(srt, axis=-1)
    target = (mass - tol) * cs[..., -1:]
    return np.minimum((cs < target).sum(-1) + 1, arr.shape[-1]).astype(np.int64)


def classify_softmax(
    p: Any,
    *,
    mass: float = 0.9,
    single_max_keys: int = 1,
    global_min_fraction: float = 0.5,
) -> str | np.ndarray:
    """Kind of Hopfield minimum a softmax distribution looks like: single / metastable / global.

    Ramsauer et al. (section 3, the BERT-head analysis) sort heads by ``k``, the number of
    softmax entries needed to cover 90% of the mass: a fixed point near a single pattern needs
    very few, a metastable state averages over a subset, the global fixed point averages over
    (almost) all. They give no hard cut-offs; the ones used here are configurable:

    - ``'single'`` when ``k <= single_max_keys`` (default 1);
    - ``'global'`` when ``k >= global_min_fraction * N`` (default half the entries);
    - ``'metastable'`` otherwise.

    Args:
        p: ``[..., N]`` probabilities (numpy or torch).
        mass: mass fraction ``k`` must cover.
        single_max_keys: largest ``k`` still counted as a single pattern (>= 1).
        global_min_fraction: fraction of ``N`` from which on ``k`` counts as global, in (0, 1].

    Returns:
        A ``str`` for a single distribution ``[N]``, else a ``[...]`` numpy array of str.
    """
    if single_max_keys < 1:
        raise ValueError(f"single_max_keys={single_max_keys} is not valid: it must be >= 1")
    if not (0 < global_min_fraction <= 1):
        raise ValueError(
            f"global_min_fraction={global_min_fraction!r} is not valid: it must be in (0, 1]"
        )
    k = keys_for_mass(p, mass)
    if _is_torch(k):
        k = k.cpu().numpy()
    k = np.asarray(k)
    n = int(p.shape[-1])
    out = np.where(
        k <= single_max_keys,
        "single",
        np.where(k >= global_min_fraction * n, "global", "metastable"),
    )
    return str(out) if out.ndim == 0 else out

"""Context-gated associative memory (the paper, section 3; docs/science.md#context-gated-hopfield-model).

``N`` memories; raw retrieval scores ``b = X^T xi`` (``[N]``), contextual drive ``u`` (``[N]``),
gate competition ``A(alpha) = (1 - alpha) I + alpha G`` (``G`` symmetric ``[N, N]``), gate
coupling ``lam >= 0``, inverse temperature ``beta > 0``. Joint energy over gates ``s`` and
retrieval probabilities ``p`` on the simplex::

    E(s, p) = 1/2 s^T A s - s^T u - lam s^T p - b^T p + beta^-1 sum_mu p_mu ln p_mu

Stationarity gives ``s* = A^-1 (u + lam p*)`` and ``p* = Phi(p*)`` with::

    Phi(p) = softmax(beta (b + lam A^-1 u + lam^2 A^-1 p))       (the paper's Thm 3.4)

Facts used below (derived here, checked in ``tests/theory``):

- Minimising ``E`` over ``s`` (``A`` positive definite) leaves the *reduced energy*
  ``F(p) = E(s*(p), p) = -(z^T p + lam^2/2 p^T A^-1 p) + beta^-1 sum p ln p - 1/2 u^T A^-1 u``
  with ``z = b + lam g``, ``g = A^-1 u``. The fixed points of ``Phi`` are its stationary points
  on the simplex, and iterating ``Phi`` is the concave-convex procedure on ``F`` (the quadratic
  part is concave because ``A^-1`` is positive definite), so ``F`` never increases along the
  iteration and it cannot cycle.
- The Jacobian of ``Phi`` is ``J(p) = beta (diag p - p p^T) lam^2 A^-1``. It is similar to the
  symmetric positive semi-definite ``K^1/2 S K^1/2`` (``S = beta (diag p - p p^T)``,
  ``K = lam^2 A^-1``), so its eigenvalues are real and >= 0; a fixed point is *stable* when the
  largest is < 1. Because ``|S|_2 <= beta / 2``, ``|J|_2 <= beta lam^2 / (2 eta_min)``, the
  paper's contraction bound: below 1 there is exactly one fixed point.
- ``eta_min(alpha) = lambda_min(A) = 1 - alpha (1 - mu_min(G))`` is linear in ``alpha``. It
  reaches 0 at ``alpha_crit = 1 / (1 - mu_min(G))`` when ``mu_min(G) < 1``; past it the gate
  energy is unbounded below along the bottom eigenvector (runaway gate, the paper's Thm 3.3).
  Sign cases: ``mu_min <= 0`` puts ``alpha_crit`` in ``(0, 1]`` (reachable); ``0 < mu_min < 1``
  puts it above 1 (outside the allowed ``alpha``, so never reached); ``mu_min >= 1`` means
  ``eta_min`` never decreases and ``alpha_crit = inf`` (the formula's negative value for
  ``mu_min > 1`` is a crossing at negative ``alpha``, not a transition).
- First-order retrieval (Thm 3.1): ``p1 = softmax(beta z)``. For a target ``mu``,
  ``Delta_raw = b_mu - max_{j != mu} b_j`` and ``Delta_gate = g_mu - max_{j != mu} g_j``. The
  paper writes the margin as ``Delta_raw + lam Delta_gate``; the exact margin of ``z`` is
  ``min_j (z_mu - z_j) >= Delta_raw + lam Delta_gate`` (a min of sums is at least the sum of the
  mins), so the bound ``1 - p1_mu <= (N-1) exp(-beta Delta)`` holds with either; the paper's
  additive form is the one reported as ``margin``/``error_bound``, the exact one alongside.

Everything is float64 numpy. Instances are immutable; use ``dataclasses.replace(mem, lam=2.0)``
for a variant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from scipy.optimize import root

from .iteration import dedup_rows, iterate_phi, phi_map, solve_rows
from .mhn import _as_float64, softmax, softmax_error_bound

__all__ = [
    "FirstOrderMargin",
    "FixedPoint",
    "GateIteration",
    "GateRegime",
    "GatedMemory",
    "required_margin",
]


# --------------------------------------------------------------------------------------------
# results and conditions


def required_margin(eps: float, n: int, beta: float) -> float:
    """Margin Thm 3.1 asks for ``p_target >= 1 - eps``: ``beta^-1 ln((1 - eps)(N - 1)/eps)``."""
    if not (0 < eps < 1):
        raise ValueError(f"eps={eps!r} is not valid: it must be in (0, 1)")
    if n < 2:
        raise ValueError(f"n={n} is not valid: a margin needs N >= 2 memories")
    return math.log((1 - eps) * (n - 1) / eps) / beta


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, eq=False)
class FixedPoint:
    """One solution of ``p = Phi(p)``.

    Attributes:
        p: ``[N]`` retrieval probabilities.
        s: ``[N]`` gates ``A^-1 (u + lam p)``.
        residual: ``max |p - Phi(p)|``.
        spectral_radius: largest eigenvalue of the Jacobian of ``Phi`` at ``p`` (real, >= 0).
        stable: ``spectral_radius < 1`` (an attracting fixed point of the iteration).
        energy: joint energy ``E(s, p)`` (= the reduced energy ``F(p)``).
    """

    p: np.ndarray
    s: np.ndarray
    residual: float
    spectral_radius: float
    stable: bool
    energy: float


@dataclass(frozen=True, eq=False)
class GateIteration:
    """Result of :meth:`GatedMemory.iterate`.

    Attributes:
        p: ``[N]`` last iterate.
        s: ``[N]`` gates at ``p``.
        n_iter: iterations made.
        converged: the last step moved less than ``tol``.
        residual: ``max |p - Phi(p)|``.
    """

    p: np.ndarray
    s: np.ndarray
    n_iter: int
    converged: bool
    residual: float


@dataclass(frozen=True)
class FirstOrderMargin:
    """Theorem 3.1 quantities for one target memory (first-order logits ``z = b + lam g``).

    Attributes:
        target: index of the target memory.
        delta_raw: ``b_t - max_{j != t} b_j``.
        delta_gate: ``g_t - max_{j != t} g_j`` with ``g = A^-1 u``.
        margin: the paper's ``delta_raw + lam delta_gate``.
        margin_exact: ``min_{j != t} (z_t - z_j)`` (``>= margin``).
        p_target: first-order ``softmax(beta z)_t``.
        error: ``1 - p_target``.
        error_bound: ``min(1, (N-1) exp(-beta margin))``.
        p_lower: ``1 / (1 + (N-1) exp(-beta margin))`` (the sharper form of the same bound).
        n: number of memories.
        beta: inverse temperature.
    """

    target: int
    delta_raw: float
    delta_gate: float
    margin: float
    margin_exact: float
    p_target: float
    error: float
    error_bound: float
    p_lower: float
    n: int
    beta: float

    def condition(self, eps: float) -> bool:
        """Whether ``margin >= beta^-1 ln((1-eps)(N-1)/eps)``, i.e. Thm 3.1 promises ``p_t >= 1-eps``."""
        return self.margin >= required_margin(eps, self.n, self.beta)


@dataclass(frozen=True)
class GateRegime:
    """Where a configuration sits relative to the paper's two conditions.

    Attributes:
        alpha: competition weight.
        alpha_crit: ``1 / (1 - mu_min(G))`` or ``inf`` (see the module docstring).
        below_alpha_crit: ``alpha < alpha_crit`` (``A`` positive definite, gates bounded).
        mu_min: smallest eigenvalue of ``G``.
        eta_min: smallest eigenvalue of ``A(alpha)``.
        contraction_bound: ``beta lam^2 / (2 eta_min)`` (``inf`` when ``A`` is not positive
            definite).
        uniqueness_condition: ``contraction_bound < 1`` (Thm 3.4: a unique fixed point,
            geometric convergence at that rate).
        lam_unique_max: largest ``lam`` meeting the uniqueness condition at this ``alpha, beta``
            (``sqrt(2 eta_min / beta)``; 0 when ``A`` is not positive definite).
        summary: one line in words.
    """

    alpha: float
    alpha_crit: float
    below_alpha_crit: bool
    mu_min: float
    eta_min: float
    contraction_bound: float
    uniqueness_condition: bool
    lam_unique_max: float
    summary: str


# --------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True, eq=False)
class GatedMemory:
    """The context-gated Hopfield retrieval stage.

    Args:
        b: ``[N]`` raw retrieval scores ``X^T xi``.
        u: ``[N]`` contextual drive (how strongly the context supports each memory).
        G: ``[N, N]`` symmetric context-similarity matrix.
        alpha: competition weight in ``[0, 1]``.
        lam: gate coupling, ``>= 0``.
        beta: inverse temperature, ``> 0``.

    Raises:
        ValueError: naming the bad value and the valid range.

    Example:
        >>> import numpy as np
        >>> mem = GatedMemory(b=np.zeros(2), u=np.zeros(2), G=np.eye(2), alpha=0.0, lam=1.0,
        ...                   beta=1.0)
        >>> mem.contraction_bound()
        0.5
        >>> [round(float(x), 6) for x in mem.phi(np.array([0.5, 0.5]))]
        [0.5, 0.5]
    """

    b: np.ndarray
    u: np.ndarray
    G: np.ndarray
    alpha: float
    lam: float
    beta: float

    def __post_init__(self) -> None:
        # copies: the instance freezes its arrays and must not freeze the caller's
        b = _as_float64(self.b, "b").copy()
        u = _as_float64(self.u, "u").copy()
        big_g = _as_float64(self.G, "G")
        if b.ndim != 1:
            raise ValueError(f"b must be a vector [N]; got shape {b.shape}")
        n = b.shape[0]
        if n < 2:
            raise ValueError(f"b has N={n} memories; the gated memory needs N >= 2")
        if u.shape != (n,):
            raise ValueError(f"u must have shape ({n},) like b; got {u.shape}")
        if big_g.shape != (n, n):
            raise ValueError(f"G must have shape ({n}, {n}); got {big_g.shape}")
        asym = float(np.max(np.abs(big_g - big_g.T)))
        if asym > 1e-10 * max(1.0, float(np.max(np.abs(big_g)))):
            raise ValueError(f"G must be symmetric; max |G - G^T| = {asym:.3g}")
        alpha, lam, beta = float(self.alpha), float(self.lam), float(self.beta)
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha!r} is not valid: it must be in [0, 1]")
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"lam={self.lam!r} is not valid: the gate coupling must be >= 0")
        if not (math.isfinite(beta) and beta > 0.0):
            raise ValueError(f"beta={self.beta!r} is not valid: it must be finite and > 0")
        big_g = 0.5 * (big_g + big_g.T)
        for name, arr in (("b", b), ("u", u), ("G", big_g)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "beta", beta)

    # ---- spectra --------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of memories N."""
        return self.b.shape[0]

    @cached_property
    def _g_eig(self) -> tuple[np.ndarray, np.ndarray]:
        mu, vecs = np.linalg.eigh(self.G)
        return mu, vecs

    @cached_property
    def A(self) -> np.ndarray:  # noqa: N802
        """``[N, N]`` gate competition matrix ``(1 - alpha) I + alpha G``."""
        a = (1.0 - self.alpha) * np.eye(self.n) + self.alpha * self.G
        a.setflags(write=False)
        return a

    @cached_property
    def _eta(self) -> np.ndarray:
        """Eigenvalues of A (ascending), ``1 - alpha + alpha mu_k(G)``."""
        return (1.0 - self.alpha) + self.alpha * self._g_eig[0]

    @property
    def mu_min(self) -> float:
        """Smallest eigenvalue of ``G``."""
        return float(self._g_eig[0][0])

    @property
    def eta_min(self) -> float:
        """Smallest eigenvalue of ``A(alpha)``: ``1 - alpha (1 - mu_min(G))``."""
        return float(self._eta[0])

    @property
    def alpha_crit(self) -> float:
        """``1 / (1 - mu_min(G))`` where ``A(alpha)`` stops being positive definite; ``inf`` if never.

        ``inf`` when ``mu_min(G) >= 1``. A value above 1 means the transition lies outside the
        allowed ``alpha`` range (``0 < mu_min < 1``).
        """
        mu = self.mu_min
        return math.inf if mu >= 1.0 else 1.0 / (1.0 - mu)

    @property
    def positive_definite(self) -> bool:
        """``eta_min > 1e-12 max(1, |eta_max|)`` (a relative tolerance for rounding at alpha_crit)."""
        return self.eta_min > 1e-12 * max(1.0, float(np.max(np.abs(self._eta))))

    def _require_pd(self, what: str) -> None:
        if not self.positive_definite:
            raise ValueError(
                f"{what} needs A(alpha) = (1-alpha) I + alpha G positive definite, but at "
                f"alpha={self.alpha:g} eta_min={self.eta_min:.4g} (alpha_crit="
                f"{self.alpha_crit:.4g}: the gate energy is unbounded below there); "
                f"use alpha < alpha_crit"
            )

    @cached_property
    def A_inv(self) -> np.ndarray:  # noqa: N802
        """``[N, N]`` inverse of ``A`` (from the eigen-decomposition of ``G``)."""
        self._require_pd("A^-1")
        vecs = self._g_eig[1]
        inv = (vecs / self._eta) @ vecs.T
        inv = 0.5 * (inv + inv.T)
        inv.setflags(write=False)
        return inv

    @cached_property
    def _k_sqrt(self) -> np.ndarray:
        """``K^1/2 = lam A^-1/2`` (symmetric)."""
        vecs = self._g_eig[1]
        return self.lam * (vecs / np.sqrt(self._eta)) @ vecs.T

    @cached_property
    def g(self) -> np.ndarray:
        """``[N]`` gate drive ``A^-1 u`` (the gates with no retrieval feedback)."""
        out = self.A_inv @ self.u
        out.setflags(write=False)
        return out

    @cached_property
    def z(self) -> np.ndarray:
        """``[N]`` first-order logits ``b + lam A^-1 u``."""
        out = self.b + self.lam * self.g
        out.setflags(write=False)
        return out

    @cached_property
    def K(self) -> np.ndarray:  # noqa: N802
        """``[N, N]`` retrieval-gate feedback ``lam^2 A^-1``."""
        out = self.lam**2 * self.A_inv
        out.setflags(write=False)
        return out

    # ---- conditions -----------------------------------------------------------------------

    def contraction_bound(self) -> float:
        """``beta lam^2 / (2 eta_min)``, the Lipschitz bound of ``Phi``; ``inf`` if A is not PD."""
        if not self.positive_definite:
            return math.inf
        return self.beta * self.lam**2 / (2.0 * self.eta_min)

    @property
    def uniqueness_condition(self) -> bool:
        """The paper's Thm 3.4 condition ``beta lam^2 / (2 eta_min) < 1``."""
        return self.contraction_bound() < 1.0

    def regime(self) -> GateRegime:
        """Which side of the uniqueness condition and of ``alpha_crit`` this configuration is on."""
        pd = self.positive_definite
        bound = self.contraction_bound()
        unique = bound < 1.0
        lam_max = math.sqrt(2.0 * self.eta_min / self.beta) if pd else 0.0
        if not pd:
            summary = (
                f"runaway gate: alpha={self.alpha:g} >= alpha_crit={self.alpha_crit:.4g} "
                f"(eta_min={self.eta_min:.3g}); the energy is unbounded below"
            )
        elif unique:
            summary = (
                f"unique fixed point: beta lam^2/(2 eta_min) = {bound:.3g} < 1 "
                f"(lam < {lam_max:.3g}); alpha={self.alpha:g} < alpha_crit={self.alpha_crit:.4g}"
            )
        else:
            summary = (
                f"outside the uniqueness condition: beta lam^2/(2 eta_min) = {bound:.3g} >= 1 "
                f"(lam >= {lam_max:.3g}), several fixed points possible; alpha={self.alpha:g} "
                f"< alpha_crit={self.alpha_crit:.4g}"
            )
        return GateRegime(
            alpha=self.alpha,
            alpha_crit=self.alpha_crit,
            below_alpha_crit=self.alpha < self.alpha_crit and pd,
            mu_min=self.mu_min,
            eta_min=self.eta_min,
            contraction_bound=bound,
            uniqueness_condition=unique,
            lam_unique_max=lam_max,
            summary=summary,
        )

    # ---- energy and the self-consistent map ------------------------------------------------

    def _check_p(self, p: Any, *, simplex: bool) -> np.ndarray:
        p = _as_float64(p, "p")
        if p.ndim == 0 or p.shape[-1] != self.n:
            raise ValueError(f"p must be [N] or [..., N] with N={self.n}; got shape {p.shape}")
        if simplex:
            if np.any(p < -1e-12):
                raise ValueError("p must be on the simplex: it has negative entries")
            total = p.sum(axis=-1)
            if np.any(np.abs(total - 1.0) > 1e-8):
                raise ValueError(
                    f"p must be on the simplex: its entries sum to {np.ravel(total)[0]!r}, not 1"
                )
            p = np.clip(p, 0.0, None)
        return p

    def _check_s(self, s: Any) -> np.ndarray:
        s = _as_float64(s, "s")
        if s.ndim == 0 or s.shape[-1] != self.n:
            raise ValueError(f"s must be [N] or [..., N] with N={self.n}; got shape {s.shape}")
        return s

    def energy(self, s: Any, p: Any) -> np.ndarray | float:
        """Joint energy ``E(s, p)`` (any ``alpha``; broadcast over leading axes).

        Args:
            s: ``[N]`` or ``[..., N]`` gates.
            p: ``[N]`` or ``[..., N]`` points of the simplex (``0 ln 0 = 0``).

        Returns:
            A float, or ``[...]`` energies.
        """
        s = self._check_s(s)
        p = self._check_p(p, simplex=True)
        a_s = s @ self.A  # A symmetric
        neg_ent = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        e = (
            0.5 * np.sum(s * a_s, axis=-1)
            - s @ self.u
            - self.lam * np.sum(s * p, axis=-1)
            - p @ self.b
            + neg_ent / self.beta
        )
        return float(e) if np.ndim(e) == 0 else e

    def s_star(self, p: Any) -> np.ndarray:
        """Gates minimising ``E(., p)``: ``A^-1 (u + lam p)`` (``[..., N] -> [..., N]``)."""
        p = self._check_p(p, simplex=False)
        return (self.u + self.lam * p) @ self.A_inv

    def reduced_energy(self, p: Any) -> np.ndarray | float:
        """``F(p) = min_s E(s, p) = E(s*(p), p)``, the energy ``Phi``'s iteration never increases."""
        p = self._check_p(p, simplex=True)
        return self.energy(self.s_star(p), p)

    def phi(self, p: Any) -> np.ndarray:
        """``Phi(p) = softmax(beta (b + lam A^-1 u + lam^2 A^-1 p))``, ``[..., N] -> [..., N]``."""
        self._require_pd("Phi")
        p = self._check_p(p, simplex=False)
        return phi_map(p, self.z, self.K, self.beta)

    def phi_jacobian(self, p: Any) -> np.ndarray:
        """``J(p) = beta (diag p - p p^T) lam^2 A^-1``, ``[..., N] -> [..., N, N]``."""
        self._require_pd("the Jacobian of Phi")
        p = self._check_p(p, simplex=False)
        s = self.beta * (p[..., :, None] * np.eye(self.n) - p[..., :, None] * p[..., None, :])
        return s @ self.K

    def spectral_radius(self, p: Any) -> np.ndarray | float:
        """Largest eigenvalue of ``J(p)`` (real and >= 0), via the symmetric ``K^1/2 S K^1/2``."""
        self._require_pd("the spectral radius of Phi's Jacobian")
        p = self._check_p(p, simplex=False)
        s = self.beta * (p[..., :, None] * np.eye(self.n) - p[..., :, None] * p[..., None, :])
        sym = self._k_sqrt @ s @ self._k_sqrt
        rho = np.linalg.eigvalsh(0.5 * (sym + np.swapaxes(sym, -1, -2)))[..., -1]
        rho = np.maximum(rho, 0.0)
        return float(rho) if np.ndim(rho) == 0 else rho

    def residual(self, p: Any) -> np.ndarray | float:
        """``max |p - Phi(p)|`` along the last axis."""
        p = self._check_p(p, simplex=False)
        r = np.max(np.abs(p - self.phi(p)), axis=-1)
        return float(r) if np.ndim(r) == 0 else r

    def iterate(
        self, p0: Any | None = None, *, max_iter: int = 10000, tol: float = 1e-13
    ) -> GateIteration:
        """Fixed-point iteration of ``Phi`` from ``p0`` (``None``: the two-stage start ``p = 0``).

        Under the uniqueness condition it converges geometrically to the unique fixed point;
        otherwise it still converges (it descends the reduced energy) to the fixed point whose
        basin holds ``p0``.
        """
        self._require_pd("iterate")
        p0 = None if p0 is None else self._check_p(p0, simplex=False)
        if p0 is not None and p0.ndim != 1:
            raise ValueError(f"p0 must be one start [N]; got shape {p0.shape}")
        p, n_iter, done = iterate_phi(self.z, self.K, self.beta, p0, max_iter=max_iter, tol=tol)
        return GateIteration(
            p=p,
            s=self.s_star(p),
            n_iter=int(n_iter),
            converged=bool(done),
            residual=float(self.residual(p)),
        )

    def first_order(self) -> np.ndarray:
        """``[N]`` first-order retrieval ``softmax(beta (b + lam A^-1 u))`` (no feedback)."""
        self._require_pd("the first-order retrieval")
        return softmax(self.z, self.beta)

    # ---- fixed points -----------------------------------------------------------------------

    def _reduced_energy_rows(self, p: np.ndarray) -> np.ndarray:
        """Reduced energy ``F(p)`` for ``[..., N]`` points of the simplex, without input checks."""
        quad = np.sum(p * np.matmul(self.K, p[..., None])[..., 0], axis=-1)
        ent = np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        const = 0.5 * float(self.u @ self.g)
        return -(p @ self.z + 0.5 * quad) + ent / self.beta - const

    def _newton(self, p: np.ndarray, n_steps: int = 40, tol: float = 1e-15) -> np.ndarray:
        """Batched damped Newton on ``F(p) = p - Phi(p)`` (``[S, N]`` starts); rows stop when solved."""
        eye = np.eye(self.n)
        p = np.array(p, dtype=np.float64)
        ph = phi_map(p, self.z, self.K, self.beta)
        norm = np.max(np.abs(p - ph), axis=-1)
        active = np.flatnonzero(norm >= tol)
        for _ in range(n_steps):
            if active.size == 0:
                break
            pa, pha, na = p[active], ph[active], norm[active]
            s = self.beta * (pha[:, :, None] * eye - pha[:, :, None] * pha[:, None, :])
            step = solve_rows(eye - s @ self.K, pha - pa)  # Newton: (I - J) dp = -(p - Phi(p))
            t = np.ones(len(active))
            new = pa + step
            ph_new = phi_map(new, self.z, self.K, self.beta)
            n_new = np.max(np.abs(new - ph_new), axis=-1)
            for _ in range(10):  # backtracking per row on max |F|
                worse = ~(n_new < na)
                if not worse.any():
                    break
                t = np.where(worse, t / 2, t)
                new[worse] = pa[worse] + t[worse, None] * step[worse]
                ph_new[worse] = phi_map(new[worse], self.z, self.K, self.beta)
                n_new[worse] = np.max(np.abs(new[worse] - ph_new[worse]), axis=-1)
            moved = n_new < na
            p[active[moved]], ph[active[moved]], norm[active[moved]] = (
                new[moved],
                ph_new[moved],
                n_new[moved],
            )
            # rows that are solved, or that no step along Newton's direction improves, stop
            active = active[moved & (n_new >= tol)]
        return p

    def fixed_points(
        self,
        *,
        n_starts: int = 64,
        seed: int = 0,
        vertex_starts: bool = True,
        n_root_starts: int = 16,
        max_pair_starts: int = 32,
        max_iter: int = 3000,
        accept_tol: float = 1e-11,
        dedup_tol: float = 1e-7,
    ) -> tuple[FixedPoint, ...]:
        """Search for every fixed point of ``Phi`` (stable and unstable), deduplicated.

        Strategy (a search, not a proof of completeness; it finds all of them in every case the
        tests can count independently):

        1. starts: the uniform point, ``p = 0`` (two-stage start), one start leaning to each
           memory (``(e_j + 1/N) / 2``, when ``vertex_starts`` and ``N <= 256``) and ``n_starts``
           Dirichlet(1) draws (seeded);
        2. batched fixed-point iteration from all of them (reaches the stable fixed points);
        3. a root finder on ``p - Phi(p)`` (batched damped Newton, then
           ``scipy.optimize.root`` for candidates Newton leaves unsolved) from every end point,
           from ``n_root_starts`` raw starts and, for up to ``max_pair_starts`` pairs of
           distinct end points (closest pairs first), from the point of highest reduced energy
           on the segment joining them (saddles sit between attractors);
        4. keep points with ``max |p - Phi(p)| <= accept_tol``, merged when closer than
           ``dedup_tol`` (max-norm).

        Args:
            n_starts: random starts.
            seed: seed of the random starts (same seed, same answer).
            vertex_starts: add one start near each memory.
            n_root_starts: raw random starts handed to the root finder directly.
            max_pair_starts: pairs of end points searched for a saddle between them.
            max_iter: iterations of step 2.
            accept_tol: residual a fixed point must reach.
            dedup_tol: distance below which two solutions are one.

        Returns:
            Fixed points sorted by energy (lowest first); each has ``p``, ``s``, residual,
            spectral radius and a ``stable`` flag.
        """
        self._require_pd("fixed_points")
        n = self.n
        rng = np.random.default_rng(seed)
        starts = [np.full((1, n), 1.0 / n), np.zeros((1, n))]
        if vertex_starts and n <= 256:
            starts.append(0.5 * np.eye(n) + 0.5 / n)
        random_starts = rng.dirichlet(np.ones(n), size=n_starts) if n_starts > 0 else None
        if random_starts is not None:
            starts.append(random_starts)
        p0 = np.concatenate(starts)
        ends, _, _ = iterate_phi(self.z, self.K, self.beta, p0, max_iter=max_iter, tol=1e-14)

        distinct = dedup_rows(ends, 1e-6)
        cands = [distinct]
        if random_starts is not None and n_root_starts > 0:
            cands.append(random_starts[:n_root_starts])
        if len(distinct) > 1 and max_pair_starts > 0:
            # a saddle between two attractors sits near the top of the reduced energy along the
            # segment joining them: start the root finder there
            i, j = np.triu_indices(len(distinct), k=1)
            order = np.argsort(np.max(np.abs(distinct[i] - distinct[j]), axis=-1))
            i, j = i[order][:max_pair_starts], j[order][:max_pair_starts]
            t = np.linspace(0.0, 1.0, 41)[1:-1, None]  # [39, 1]
            seg = (1 - t) * distinct[i][:, None] + t * distinct[j][:, None]  # [pairs, 39, N]
            top = np.argmax(self._reduced_energy_rows(seg), axis=-1)
            cands.append(seg[np.arange(len(i)), top])
        cand = np.concatenate(cands)
        sol = self._newton(cand)
        res = np.max(np.abs(sol - phi_map(sol, self.z, self.K, self.beta)), axis=-1)
        bad = ~(res <= accept_tol)
        for k in np.flatnonzero(bad):
            out = root(
                lambda x: x - phi_map(x, self.z, self.K, self.beta),
                cand[k],
                jac=lambda x: np.eye(n) - self.phi_jacobian(phi_map(x, self.z, self.K, self.beta)),
                method="hybr",
            )
            sol[k] = self._newton(out.x[None])[0]
        # land exactly on the simplex, then re-check the residual
        sol = phi_map(sol, self.z, self.K, self.beta)
        res = np.max(np.abs(sol - phi_map(sol, self.z, self.K, self.beta)), axis=-1)
        good = sol[res <= accept_tol]
        good = good[np.argsort(res[res <= accept_tol])]
        unique = dedup_rows(good, dedup_tol)

        points = []
        for p in unique:
            s = self.s_star(p)
            rho = float(self.spectral_radius(p))
            points.append(
                FixedPoint(
                    p=p,
                    s=s,
                    residual=float(self.residual(p)),
                    spectral_radius=rho,
                    stable=rho < 1.0,
                    energy=float(self.energy(s, p)),
                )
            )
        points.sort(key=lambda fp: fp.energy)
        return tuple(points)

    # ---- Theorem 3.1 and the label read-out --------------------------------------------------

    def _check_target(self, target: int) -> int:
        if int(target) != target or not (0 <= target < self.n):
            raise ValueError(
                f"target={target!r} is not valid: it must be an index in [0, {self.n})"
            )
        return int(target)

    def first_order_margin(self, target: int) -> FirstOrderMargin:
        """Theorem 3.1 margin and bound for ``target`` (see :class:`FirstOrderMargin`)."""
        t = self._check_target(target)
        others = np.arange(self.n) != t
        d_raw = float(self.b[t] - self.b[others].max())
        d_gate = float(self.g[t] - self.g[others].max())
        margin = d_raw + self.lam * d_gate
        exact = float(self.z[t] - self.z[others].max())
        p1 = self.first_order()
        with np.errstate(over="ignore"):
            tail = (self.n - 1) * math.exp(min(-self.beta * margin, 700.0))
        return FirstOrderMargin(
            target=t,
            delta_raw=d_raw,
            delta_gate=d_gate,
            margin=margin,
            margin_exact=exact,
            p_target=float(p1[t]),
            error=float(1.0 - p1[t]),
            error_bound=float(softmax_error_bound(margin, self.n, self.beta)),
            p_lower=1.0 / (1.0 + tail),
            n=self.n,
            beta=self.beta,
        )

    def _label_mask(self, label_set: Iterable[int]) -> np.ndarray:
        idx = list(label_set)
        if not idx:
            raise ValueError("label_set is empty; give the indices of the label memories")
        if len(set(idx)) != len(idx):
            raise ValueError(f"label_set {idx} has repeated indices")
        for i in idx:
            if int(i) != i or not (0 <= i < self.n):
                raise ValueError(f"label index {i!r} is not valid: it must be in [0, {self.n})")
        if len(idx) == self.n:
            raise ValueError("label_set holds every memory; the log-odds needs a non-label rest")
        mask = np.zeros(self.n, dtype=bool)
        mask[np.asarray(idx, dtype=int)] = True
        return mask

    def label_logodds(self, label_set: Iterable[int], p: Any | None = None) -> float:
        """``ln(sum_L p) - ln(sum_rest p)``; ``p`` defaults to the first-order retrieval."""
        mask = self._label_mask(label_set)
        p = self.first_order() if p is None else self._check_p(p, simplex=True)
        return float(np.log(p[mask].sum()) - np.log(p[~mask].sum()))

    def label_logodds_slope(self, label_set: Iterable[int]) -> float:
        """The paper's first-order slope of the label log-odds in ``lam``: ``beta (mean_L g - mean_rest g)``.

        It is the exact derivative at ``lam = 0`` when ``b`` is constant within the label set and
        within the rest (first-order ``p`` uniform inside each group); otherwise see
        :meth:`label_logodds_derivative`.
        """
        mask = self._label_mask(label_set)
        return float(self.beta * (self.g[mask].mean() - self.g[~mask].mean()))

    def label_logodds_derivative(self, label_set: Iterable[int]) -> float:
        """Exact ``d/d lam`` of the first-order label log-odds at this ``lam``.

        ``beta (E_{p|L} g - E_{p|rest} g)`` with ``p = softmax(beta (b + lam g))``: the paper's
        slope with means weighted by the current retrieval probabilities.
        """
        mask = self._label_mask(label_set)
        p = self.first_order()
        m_l = float(np.sum(p[mask] * self.g[mask]) / p[mask].sum())
        m_r = float(np.sum(p[~mask] * self.g[~mask]) / p[~mask].sum())
        return self.beta * (m_l - m_r)

"""Seeded simulations of the context-gated memory on random memories (tables; their figures are
:func:`cgar_interp.figures.simulations.simulation_figures`).

The generative setting (the paper's simulations use ``N = 50`` memories in ``d = 10`` at
``beta = 3.5``; its rendering does not say how queries and contexts were drawn, so the choices
below are this module's and are recorded in every table via :class:`SimulationConfig`):

- memories ``x_mu``: uniform on the unit sphere in ``R^d`` (so ``M = 1``); each memory also has a
  context vector ``c_mu``, uniform on the unit sphere in ``R^{context_dim}``;
- ``G = C^T C`` (cosine similarity of the memories' contexts, unit diagonal) and
  ``A = (1 - alpha) I + alpha G``; for the alpha phase diagram ``G_kappa = I + kappa (C^T C - I)``
  (competition strength ``kappa`` scales the off-diagonal similarities), whose
  ``alpha_crit = 1 / (kappa (1 - sigma_min(C^T C)))``;
- a trial draws a target ``t``, a noisy query ``xi = x_t + sigma eps / sqrt(d)``
  (``eps ~ N(0, I)``, so ``E|xi - x_t|^2 = sigma^2``), raw scores ``b = X^T xi``, and a noisy
  context ``c = c_t + sigma_c eps' / sqrt(context_dim)`` with drive ``u = C^T c``;
- "retrieval" is the fixed point reached by iterating ``Phi`` from the two-stage start ``p = 0``
  (gates first settle on the context alone, so the first iterate is the first-order
  ``softmax(beta (b + lam A^-1 u))``); its error is ``1 - p*_t``.

Tables (tidy rows, one per trial and setting): ``retrieval_vs_lambda``, ``fixed_point_counts``,
``alpha_phase``, ``noisy_queries``, ``mhn_separation``. Each table uses its own random stream
``default_rng([seed, k])``, so the same seed gives the same numbers and resizing one table
leaves the others unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from .gate import GatedMemory
from .iteration import iterate_phi
from .mhn import (
    entropy,
    keys_for_mass,
    separation,
    softmax,
    well_separated_threshold,
)

__all__ = ["TABLES", "SimulationConfig", "run_simulations"]

TABLES = (
    "retrieval_vs_lambda",
    "fixed_point_counts",
    "alpha_phase",
    "noisy_queries",
    "mhn_separation",
)


@dataclass(frozen=True)
class SimulationConfig:
    """Sizes and parameters of :func:`run_simulations` (defaults: the paper's N=50, d=10, beta=3.5).

    Attributes:
        seed: master seed.
        n_memories: N.
        dim: pattern dimension d.
        beta: inverse temperature.
        context_dim: dimension of the context vectors.
        alpha: competition weight used outside the phase diagram, in ``[0, 1]``.
        lambdas: gate couplings of ``retrieval_vs_lambda``.
        n_trials: trials per setting (retrieval, noisy queries, MHN separation).
        query_noise: query noise ``sigma`` of ``retrieval_vs_lambda``.
        context_noise: context noise ``sigma_c`` everywhere.
        noise_levels: query noise levels of ``noisy_queries``.
        context_lam: ``lam`` of the with-context condition of ``noisy_queries``.
        count_betas / count_lambdas: the (beta, lam) grid of ``fixed_point_counts``.
        count_instances: random instances per grid point.
        count_starts: random starts of each fixed-point search.
        phase_kappas / phase_alphas: the (kappa, alpha) grid of ``alpha_phase``.
        phase_lam: ``lam`` of ``alpha_phase``.
        phase_steps: gradient steps of the gate dynamics in ``alpha_phase``.
        runaway_norm: gate norm above which the phase diagram calls the gate runaway.
        max_iter: cap on fixed-point iterations.
    """

    seed: int = 0
    n_memories: int = 50
    dim: int = 10
    beta: float = 3.5
    context_dim: int = 10
    alpha: float = 0.0
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    n_trials: int = 200
    query_noise: float = 0.5
    context_noise: float = 0.25
    noise_levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    context_lam: float = 1.0
    count_betas: tuple[float, ...] = (1.0, 2.0, 3.5, 6.0)
    count_lambdas: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    count_instances: int = 2
    count_starts: int = 24
    phase_kappas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0)
    phase_alphas: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(21))
    phase_lam: float = 1.0
    phase_steps: int = 3000
    runaway_norm: float = 1e3
    max_iter: int = 5000

    def __post_init__(self) -> None:
        for name in ("n_memories", "dim", "context_dim"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)} is not valid: it must be >= 2")
        for name in ("n_trials", "count_instances", "phase_steps", "max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is not valid: it must be >= 1")
        if self.count_starts < 0:
            raise ValueError(f"count_starts={self.count_starts} is not valid: it must be >= 0")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta={self.beta!r} is not valid: it must be > 0")
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha!r} is not valid: it must be in [0, 1]")
        for name in ("lambdas", "count_lambdas", "noise_levels", "phase_kappas"):
            vals = getattr(self, name)
            if not vals or any(not math.isfinite(v) or v < 0 for v in vals):
                raise ValueError(f"{name}={vals!r} is not valid: give finite values >= 0")
        if not self.count_betas or any(not math.isfinite(v) or v <= 0 for v in self.count_betas):
            raise ValueError(f"count_betas={self.count_betas!r} is not valid: give values > 0")
        if not self.phase_alphas or any(not 0 <= a <= 1 for a in self.phase_alphas):
            raise ValueError(f"phase_alphas={self.phase_alphas!r} is not valid: values in [0, 1]")
        for name in ("query_noise", "context_noise", "context_lam", "phase_lam"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} is not valid: it must be finite and >= 0")
        if not self.runaway_norm > 0:
            raise ValueError(f"runaway_norm={self.runaway_norm!r} is not valid: it must be > 0")


# --------------------------------------------------------------------------------------------
# random instances


def _sphere(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform unit vectors along axis -2 of ``shape`` (``[..., dim, n]``)."""
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-2, keepdims=True)


@dataclass(frozen=True)
class _Instances:
    """``T`` random trials: memories ``X [T, d, N]``, contexts ``C [T, dc, N]``, targets ``[T]``,
    query noise directions ``[T, d]`` and context observations (drive ``u [T, N]``)."""

    X: np.ndarray
    C: np.ndarray
    target: np.ndarray
    eps: np.ndarray
    u: np.ndarray


def _draw(cfg: SimulationConfig, rng: np.random.Generator, n_trials: int) -> _Instances:
    n, d, dc = cfg.n_memories, cfg.dim, cfg.context_dim
    X = _sphere(rng, (n_trials, d, n))  # noqa: N806
    C = _sphere(rng, (n_trials, dc, n))  # noqa: N806
    target = rng.integers(0, n, size=n_trials)
    eps = rng.standard_normal((n_trials, d)) / math.sqrt(d)
    rows = np.arange(n_trials)
    ctx = C[rows, :, target] + cfg.context_noise * rng.standard_normal((n_trials, dc)) / math.sqrt(
        dc
    )
    u = np.einsum("tcn,tc->tn", C, ctx)
    return _Instances(X=X, C=C, target=target, eps=eps, u=u)


def _raw_scores(inst: _Instances, sigma: float) -> np.ndarray:
    rows = np.arange(len(inst.target))
    xi = inst.X[rows, :, inst.target] + sigma * inst.eps
    return np.einsum("tdn,td->tn", inst.X, xi)


def _a_inv(cfg: SimulationConfig, C: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
    """``A^-1 [T, N, N]`` and ``eta_min [T]`` for ``G = C^T C``; refuses a non-PD ``A``."""
    G = np.einsum("tcn,tcm->tnm", C, C)  # noqa: N806
    mu, vecs = np.linalg.eigh(G)
    eta = (1.0 - alpha) + alpha * mu
    if np.any(eta[:, 0] <= 1e-12):
        raise ValueError(
            f"alpha={alpha!r} makes A = (1-alpha) I + alpha G singular or indefinite for some "
            f"trial (G = C^T C has rank <= context_dim={cfg.context_dim} < N="
            f"{cfg.n_memories}); use alpha < 1 or context_dim >= n_memories"
        )
    return np.einsum("tnk,tk,tmk->tnm", vecs, 1.0 / eta, vecs), eta[:, 0]


def _margins(b: np.ndarray, g: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Delta_raw [T]`` and ``Delta_gate [T]`` (target minus best other)."""
    rows = np.arange(len(target))

    def margin(v: np.ndarray) -> np.ndarray:
        other = v.copy()
        other[rows, target] = -np.inf
        return v[rows, target] - other.max(axis=-1)

    return margin(b), margin(g)


# --------------------------------------------------------------------------------------------
# the tables


def _retrieval_vs_lambda(cfg: SimulationConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, 0])
    inst = _draw(cfg, rng, cfg.n_trials)
    n, beta, t_idx = cfg.n_memories, cfg.beta, inst.target
    b = _raw_scores(inst, cfg.query_noise)
    a_inv, eta_min = _a_inv(cfg, inst.C, cfg.alpha)
    g = np.einsum("tnm,tm->tn", a_inv, inst.u)
    d_raw, d_gate = _margins(b, g, t_idx)
    lam = np.asarray(cfg.lambdas, dtype=np.float64)
    z = b[None] + lam[:, None, None] * g[None]  # [L, T, N]
    K = lam[:, None, None, None] ** 2 * a_inv[None]  # noqa: N806
    p1 = softmax(z, beta)
    p_star, n_iter, conv = iterate_phi(z, K, beta, None, max_iter=cfg.max_iter)
    rows = np.arange(cfg.n_trials)
    margin = d_raw[None] + lam[:, None] * d_gate[None]
    zt = z[:, rows, t_idx]
    z_other = z.copy()
    z_other[:, rows, t_idx] = -np.inf
    margin_exact = zt - z_other.max(axis=-1)
    with np.errstate(over="ignore"):
        bound = np.minimum(1.0, (n - 1) * np.exp(-beta * margin))
        bound_exact = np.minimum(1.0, (n - 1) * np.exp(-beta * margin_exact))
    err1 = 1.0 - p1[:, rows, t_idx]
    err_star = 1.0 - p_star[:, rows, t_idx]
    contraction = beta * lam[:, None] ** 2 / (2.0 * eta_min[None])
    shape = (len(lam), cfg.n_trials)
    return pd.DataFrame(
        {
            "lam": np.repeat(lam, cfg.n_trials),
            "trial": np.tile(rows, len(lam)),
            "target": np.tile(t_idx, len(lam)),
            "delta_raw": np.broadcast_to(d_raw, shape).ravel(),
            "delta_gate": np.broadcast_to(d_gate, shape).ravel(),
            "margin": margin.ravel(),
            "margin_exact": margin_exact.ravel(),
            "error_bound": bound.ravel(),
            "error_bound_exact": bound_exact.ravel(),
            "error_first_order": err1.ravel(),
            "error_fixed_point": err_star.ravel(),
            "correct_first_order": (p1.argmax(-1) == t_idx[None]).ravel(),
            "correct_fixed_point": (p_star.argmax(-1) == t_idx[None]).ravel(),
            "bound_holds_first_order": (err1 <= bound + 1e-12).ravel(),
            "bound_holds_fixed_point": (err_star <= bound + 1e-12).ravel(),
            "entropy_fixed_point": entropy(p_star).ravel(),
            "eta_min": np.broadcast_to(eta_min, shape).ravel(),
            "contraction_bound": contraction.ravel(),
            "uniqueness_condition": (contraction < 1.0).ravel(),
            "n_iter": n_iter.ravel(),
            "converged": conv.ravel(),
        }
    )


def _fixed_point_counts(cfg: SimulationConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, 1])
    inst = _draw(cfg, rng, cfg.count_instances)
    b = _raw_scores(inst, cfg.query_noise)
    rows = []
    for k in range(cfg.count_instances):
        big_g = inst.C[k].T @ inst.C[k]
        for beta in cfg.count_betas:
            for lam in cfg.count_lambdas:
                mem = GatedMemory(b[k], inst.u[k], big_g, cfg.alpha, lam, beta)
                fps = mem.fixed_points(n_starts=cfg.count_starts, seed=cfg.seed + k)
                n_stable = sum(fp.stable for fp in fps)
                rows.append(
                    {
                        "instance": k,
                        "beta": beta,
                        "lam": lam,
                        "eta_min": mem.eta_min,
                        "contraction_bound": mem.contraction_bound(),
                        "uniqueness_condition": mem.uniqueness_condition,
                        "n_fixed_points": len(fps),
                        "n_stable": n_stable,
                        "n_unstable": len(fps) - n_stable,
                        "max_residual": max(fp.residual for fp in fps),
                        "max_spectral_radius": max(fp.spectral_radius for fp in fps),
                        "target_p_lowest_energy": float(fps[0].p[inst.target[k]]),
                    }
                )
    return pd.DataFrame(rows)


def _alpha_phase(cfg: SimulationConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, 2])
    inst = _draw(cfg, rng, 1)
    n = cfg.n_memories
    sim = inst.C[0].T @ inst.C[0]
    b = _raw_scores(inst, cfg.query_noise)[0]
    u, t = inst.u[0], int(inst.target[0])
    kap = np.asarray(cfg.phase_kappas, dtype=np.float64)
    alp = np.asarray(cfg.phase_alphas, dtype=np.float64)
    eye = np.eye(n)
    G = eye[None] + kap[:, None, None] * (sim - eye)[None]  # noqa: N806  [k, N, N]
    A = (1 - alp)[None, :, None, None] * eye + alp[None, :, None, None] * G[:, None]  # noqa: N806
    A = A.reshape(-1, n, n)  # noqa: N806  [k * a, N, N]
    # theory: eigenvalues of G and of A
    mu_min = np.linalg.eigvalsh(G)[:, 0]
    alpha_crit = np.where(mu_min < 1, 1.0 / np.where(mu_min < 1, 1.0 - mu_min, 1.0), np.inf)
    eta_min = np.linalg.eigvalsh(A)[:, 0]
    # measurement 1: gradient descent of the gate energy at fixed p (uniform), from s = 0, with
    # step 1/(max row sum of |A|) (>= the spectral radius, so bounded modes never overshoot)
    p_fixed = np.full(n, 1.0 / n)
    drive = u + cfg.phase_lam * p_fixed
    step = 1.0 / np.abs(A).sum(-1).max(-1)
    s = np.zeros((len(A), n))
    for _ in range(cfg.phase_steps):
        s = s - step[:, None] * (np.matmul(A, s[..., None])[..., 0] - drive)
        s = np.clip(s, -1e150, 1e150)
    gate_norm = np.linalg.norm(s, axis=-1)
    # measurement 2: Cholesky succeeds exactly when A is positive definite (no eigenvalues)
    chol_pd = np.array([_cholesky_ok(a) for a in A])
    # retrieval at the two-stage fixed point where the gate is bounded
    p_target = np.full(len(A), np.nan)
    contraction = np.full(len(A), np.inf)
    for k in np.flatnonzero(chol_pd):
        alpha = float(alp[k % len(alp)])
        mem = GatedMemory(b, u, G[k // len(alp)], alpha, cfg.phase_lam, cfg.beta)
        if not mem.positive_definite:  # its relative tolerance is stricter than Cholesky's
            continue
        p_target[k] = float(mem.iterate(max_iter=cfg.max_iter).p[t])
        contraction[k] = mem.contraction_bound()
    return pd.DataFrame(
        {
            "kappa": np.repeat(kap, len(alp)),
            "alpha": np.tile(alp, len(kap)),
            "mu_min": np.repeat(mu_min, len(alp)),
            "alpha_crit": np.repeat(alpha_crit, len(alp)),
            "eta_min": eta_min,
            "below_alpha_crit": np.tile(alp, len(kap)) < np.repeat(alpha_crit, len(alp)),
            "cholesky_pd": chol_pd,
            "gate_norm": gate_norm,
            "runaway": gate_norm > cfg.runaway_norm,
            "contraction_bound": contraction,
            "p_target_fixed_point": p_target,
        }
    )


def _cholesky_ok(a: np.ndarray) -> bool:
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return False
    return True


def _noisy_queries(cfg: SimulationConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, 3])
    inst = _draw(cfg, rng, cfg.n_trials)
    a_inv, _ = _a_inv(cfg, inst.C, cfg.alpha)
    g = np.einsum("tnm,tm->tn", a_inv, inst.u)
    sig = np.asarray(cfg.noise_levels, dtype=np.float64)
    b = np.stack([_raw_scores(inst, s) for s in sig])  # [S, T, N]
    rows = np.arange(cfg.n_trials)
    frames = []
    for condition, lam in (("no_context", 0.0), ("context", cfg.context_lam)):
        z = b + lam * g[None]
        K = lam**2 * a_inv[None]  # noqa: N806
        p, _, conv = iterate_phi(z, K, cfg.beta, None, max_iter=cfg.max_iter)
        pt = p[:, rows, inst.target]
        shape = (len(sig), cfg.n_trials)
        frames.append(
            pd.DataFrame(
                {
                    "sigma": np.repeat(sig, cfg.n_trials),
                    "trial": np.tile(rows, len(sig)),
                    "condition": condition,
                    "lam": lam,
                    "p_target": pt.ravel(),
                    "error": (1.0 - pt).ravel(),
                    "correct": (p.argmax(-1) == inst.target[None]).ravel(),
                    "entropy": entropy(p).ravel(),
                    "n_eff": np.exp(entropy(p)).ravel(),
                    "keys_90": keys_for_mass(p, 0.9).ravel(),
                    "converged": np.broadcast_to(conv, shape).ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _mhn_separation(cfg: SimulationConfig) -> pd.DataFrame:
    rng = np.random.default_rng([cfg.seed, 4])
    inst = _draw(cfg, rng, cfg.n_trials)
    n, beta = cfg.n_memories, cfg.beta
    rows = np.arange(cfg.n_trials)
    delta = np.stack([separation(x) for x in inst.X])[rows, inst.target]
    threshold = well_separated_threshold(n, beta, 1.0)
    # retrieval by the plain modern Hopfield update (no context) from the noisy query
    xi = inst.X[rows, :, inst.target] + cfg.query_noise * inst.eps
    for _ in range(200):
        xi = np.einsum("tn,tdn->td", softmax(np.einsum("tdn,td->tn", inst.X, xi), beta), inst.X)
    err = np.linalg.norm(xi - inst.X[rows, :, inst.target], axis=-1)
    nearest = np.einsum("tdn,td->tn", inst.X, xi).argmax(-1)
    return pd.DataFrame(
        {
            "trial": rows,
            "target": inst.target,
            "delta": delta,
            "threshold": threshold,
            "well_separated": delta >= threshold,
            "thm5_bound": 2.0 * math.e * (n - 1) * np.exp(-beta * delta),
            "retrieval_error": err,
            "retrieved_target": nearest == inst.target,
        }
    )


def run_simulations(config: SimulationConfig | None = None) -> dict[str, pd.DataFrame]:
    """Run every simulation of :data:`TABLES` (a few seconds at the defaults on 2 CPU cores).

    Args:
        config: the settings (defaults: :class:`SimulationConfig`).

    Returns:
        table name -> tidy DataFrame; ``df.attrs["config"]`` holds the settings as a dict.
    """
    cfg = config or SimulationConfig()
    tables = {
        "retrieval_vs_lambda": _retrieval_vs_lambda(cfg),
        "fixed_point_counts": _fixed_point_counts(cfg),
        "alpha_phase": _alpha_phase(cfg),
        "noisy_queries": _noisy_queries(cfg),
        "mhn_separation": _mhn_separation(cfg),
    }
    settings = asdict(cfg)
    for df in tables.values():
        df.attrs["config"] = settings
    return tables

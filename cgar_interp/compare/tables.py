"""Prediction vs measurement tables for a run directory (``theory_*.parquet``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import atomic_write_bytes
from ..rundir import parquet_bytes
from ..theory import required_margin, softmax_error_bound
from .predict import BetaFit, fit_beta, label_margin, predict, r_squared
from .terms import BASE_COLUMNS, GATE_COLUMNS, METRICS, MODELS, CompareConfig, GateTerms


def _models(terms: GateTerms) -> tuple[str, ...]:
    return MODELS if terms.norm is not None else ("first_order",)


def _terms_rows(terms: GateTerms) -> pd.DataFrame:
    out = {
        "task": terms.task,
        "q_layer": terms.q_layer,
        "c_layer": terms.c_layer,
        "query": terms.query,
        "gold": terms.gold,
        "n_classes": terms.n_classes,
        "delta_raw": label_margin(terms.b, terms.gold),
        "delta_gate": label_margin(terms.g, terms.gold),
        "gate_favours_gold": label_margin(terms.g, terms.gold) > 0,
    }
    if terms.norm is not None:
        nm = terms.norm
        s0 = terms.scale(np.zeros(1))[0]
        d_gate_gamma = label_margin(nm["g_gamma"], terms.gold)
        out.update(
            {
                "delta_raw_gamma": label_margin(nm["b_gamma"], terms.gold),
                "delta_gate_gamma": d_gate_gamma,
                "beta_norm0": s0,
                # lambda at which |lambda cbar| = |h|: the onset of the norm's saturation
                "lam_norm_equal": np.sqrt(nm["h_ms"] / nm["c_ms"]),
                # lim_{lambda -> inf} beta(lambda) Delta(lambda): where the exponent saturates
                "beta_delta_limit": d_gate_gamma / np.sqrt(nm["c_ms"]),
                "recon_abs_err": np.abs(s0[:, None] * nm["b_gamma"] - terms.normed_logit).max(-1),
            }
        )
    return pd.DataFrame(out)


def _diagnosis(
    row: pd.Series, model: str, metric: str, mode: str, c_layer: int, n_layers: int, sat: float
) -> str:
    """Which assumption breaks at one measured point (rule-based, in words)."""
    reasons = []
    if mode == "patch" and c_layer < n_layers:
        reasons.append(
            "patch mode: lambda cbar also passes through blocks c..L-1, which the "
            "first-order decode model leaves out"
        )
    if model != "normed" and row.norm_ratio >= sat:
        reasons.append(
            f"norm saturation: lambda|cbar|/|h| = {row.norm_ratio:.3g}, the decode's "
            f"beta(lambda) = {row.beta_ratio:.3g} x beta(0); a constant beta overstates the "
            "sharpening and a linear margin the gain"
        )
    if model == "first_order" and row.lam == 0:
        reasons.append(
            "lambda = 0 already off: raw W_U h (no norm weight gamma) ranks or spreads the "
            "labels differently from the normed decode"
        )
    if metric in ("label_mass", "gold_mass"):
        how = (
            "the paper's read-out, log-odds linear in lambda"
            if model == "first_order"
            else "tangent planes of the non-label log-partition (predicted mass is an upper "
            "bound, exact at lambda = 0 and lambda -> infinity)"
        )
        reasons.append(
            f"full vocabulary: label scores do not fix the non-label log-partition; {how}; "
            "the non-label distribution reshapes at this lambda"
        )
    elif model == "normed" and mode == "decode":
        reasons.append("numerical: the normed model is exact for label-restricted decode metrics")
    if not reasons:
        reasons.append("first-order model at small lambda; see residual")
    return "; ".join(reasons)


def query_rows(terms: GateTerms, model: str, lams: np.ndarray, pred) -> pd.DataFrame:
    """The per-query predictions of one model at (task, q, c): one row per (lambda, metric,
    eval query), ``value`` the prediction for that query (``theory_compare``'s ``predicted``
    is their mean over the queries). Columns: ``task``, ``q_layer``, ``c_layer``, ``model``,
    ``lam``, ``metric``, ``query``, ``split`` (``"eval"``: gate_terms holds the eval queries),
    ``value``.

    Args:
        terms: one (task, q, c).
        model: the model of ``pred``.
        lams: ``[L]`` the lambdas of ``pred``.
        pred: :class:`~cgar_interp.compare.predict.Prediction` of ``model`` at ``lams``.
    """
    n = len(terms.query)
    frames = []
    for metric, values in pred.metrics.items():
        frames.append(
            pd.DataFrame(
                {
                    "lam": np.repeat(np.asarray(lams, dtype=np.float64), n),
                    "metric": metric,
                    "query": np.tile(terms.query, len(lams)),
                    "value": np.asarray(values, dtype=np.float64).reshape(-1),
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "model", model)
    out.insert(0, "c_layer", terms.c_layer)
    out.insert(0, "q_layer", terms.q_layer)
    out.insert(0, "task", terms.task)
    out["split"] = "eval"
    return out[["task", "q_layer", "c_layer", "model", "lam", "metric", "query", "split", "value"]]


def compare_tables(
    gate_terms: pd.DataFrame,
    context_gate: pd.DataFrame,
    config: CompareConfig | None = None,
    n_layers: int | None = None,
) -> dict[str, pd.DataFrame]:
    """The theory-vs-measurement tables from the two context-gate tables (no I/O).

    Args:
        gate_terms: ``tables/gate_terms.parquet``.
        context_gate: ``tables/context_gate.parquet``.
        config: settings (default :class:`CompareConfig`).
        n_layers: the model's layer count (patch rows have ``q_layer = n_layers``); default:
            the largest query layer of the measured patch rows, else of ``gate_terms``.

    Returns:
        table name (:data:`TABLES`) -> DataFrame.
    """
    cfg = config or CompareConfig()
    missing = [c for c in BASE_COLUMNS if c not in gate_terms]
    if missing:
        raise ValueError(f"gate_terms lacks columns {missing}; is it a context_gate table?")
    gate_missing = [c for c in GATE_COLUMNS if c not in context_gate]
    if gate_missing and len(context_gate):
        raise ValueError(f"context_gate lacks columns {gate_missing}; is it a context_gate table?")
    if gate_missing:  # no measurements at all: predictions only
        context_gate = pd.DataFrame({c: pd.Series(dtype=object) for c in GATE_COLUMNS})
    if n_layers is None:
        patch = context_gate[context_gate["mode"] == "patch"]
        n_layers = int(patch.q_layer.max() if len(patch) else gate_terms.q_layer.max())
    measured_lams = context_gate[context_gate["mode"].isin(cfg.modes)].lam
    lams = np.array(sorted(set(measured_lams.tolist()) | {0.0}), dtype=np.float64)
    positive = lams[lams > 0]
    grid = np.array([0.0])
    if positive.size:
        grid = np.concatenate(
            [
                [0.0],
                np.geomspace(positive.min() / cfg.grid_below, positive.max(), cfg.grid_points),
            ]
        )

    term_frames, fit_rows, compare_rows, bound_rows, query_frames = [], [], [], [], []
    keys = ["task", "q_layer", "c_layer"]
    groups = {k: f for k, f in gate_terms.groupby(keys, sort=True)}
    betas: dict[tuple[str, int], BetaFit] = {}
    for (task, q, c), frame in groups.items():
        terms = GateTerms.from_frame(frame)
        term_frames.append(_terms_rows(terms))
        if (task, q) not in betas:
            betas[(task, q)] = fit_beta(terms.b, terms.normed_logit, cfg.beta_max)
            fit = betas[(task, q)]
            s0 = terms.scale(np.zeros(1))[0] if terms.norm is not None else None
            recon = (
                float(np.abs(s0[:, None] * terms.norm["b_gamma"] - terms.normed_logit).max())
                if s0 is not None
                else math.nan
            )
            fit_rows.append(
                {
                    "task": task,
                    "q_layer": q,
                    "n_queries": len(terms.gold),
                    "n_classes": terms.n_classes,
                    "beta_eff": fit.beta,
                    "fit_kl": fit.kl,
                    "fit_kl_uniform": fit.kl_uniform,
                    "fit_converged": fit.converged,
                    "beta_norm0_mean": float(s0.mean()) if s0 is not None else math.nan,
                    "recon_max_abs_err": recon,
                    "models": ",".join(_models(terms)),
                }
            )
        beta_eff = betas[(task, q)].beta
        n_cls = terms.n_classes
        # Thm 3.1 at eps = 1/2: beta Delta > ln(N - 1) puts p_gold > 1/2 (a correct argmax)
        need = required_margin(0.5, n_cls, 1.0)
        ratio = np.sqrt(terms.norm["c_ms"] / terms.norm["h_ms"]) if terms.norm is not None else None
        exact = predict(terms, "normed", lams, beta_eff) if terms.norm is not None else None
        for model in _models(terms):
            for which, lam_set in (("measured", lams), ("grid", grid)):
                pred = predict(terms, model, lam_set, beta_eff)
                beta_delta = pred.beta * pred.margin  # [L, n]
                bound = softmax_error_bound(beta_delta, n_cls, 1.0)
                acc_lower = (beta_delta > need).mean(-1)
                diag_ratio = (
                    (lam_set[:, None] * ratio[None]).mean(-1)
                    if ratio is not None
                    else np.full(len(lam_set), np.nan)
                )
                beta_ratio = (
                    (terms.scale(lam_set) / terms.scale(np.zeros(1))).mean(-1)
                    if terms.norm is not None
                    else np.full(len(lam_set), np.nan)
                )
                for li, lam in enumerate(lam_set):
                    base = {
                        "task": task,
                        "q_layer": q,
                        "c_layer": c,
                        "model": model,
                        "lam": float(lam),
                        "point": which,
                        "norm_ratio": float(diag_ratio[li]),
                        "beta_ratio": float(beta_ratio[li]),
                        "bound_nonvacuous": float((bound[li] < 1.0).mean()),
                    }
                    for metric, values in pred.metrics.items():
                        compare_rows.append(
                            {
                                **base,
                                "metric": metric,
                                "kind": "prediction",
                                "predicted": float(values[li].mean()),
                            }
                        )
                    compare_rows.append(
                        {
                            **base,
                            "metric": "label_correct",
                            "kind": "lower_bound",
                            "predicted": float(acc_lower[li]),
                        }
                    )
                if which == "measured":
                    query_frames.append(query_rows(terms, model, lam_set, pred))
                    err = 1.0 - pred.p_gold
                    for li, lam in enumerate(lam_set):
                        row = {
                            "task": task,
                            "q_layer": q,
                            "c_layer": c,
                            "model": model,
                            "lam": float(lam),
                            "n_classes": n_cls,
                            "beta_mean": float(pred.beta[li].mean()),
                            "margin_mean": float(pred.margin[li].mean()),
                            "required_margin_mean": float((need / pred.beta[li]).mean())
                            if np.all(pred.beta[li] > 0)
                            else math.inf,
                            "frac_condition": float(acc_lower[li]),
                            "bound_nonvacuous": float((bound[li] < 1.0).mean()),
                            "bound_mean": float(bound[li].mean()),
                            "error_model_mean": float(err[li].mean()),
                            "bound_holds": bool(np.all(err[li] <= bound[li] + 1e-12)),
                        }
                        if exact is not None:
                            decode_err = 1.0 - exact.p_gold[li]
                            row["decode_error_mean"] = float(decode_err.mean())
                            row["bound_covers_decode"] = float(
                                (decode_err <= bound[li] + 1e-12).mean()
                            )
                        bound_rows.append(row)

    compare = pd.DataFrame(compare_rows)
    compare = _attach_measured(compare, context_gate, cfg, n_layers)
    terms_table = pd.concat(term_frames, ignore_index=True) if term_frames else pd.DataFrame()
    bound_table = pd.DataFrame(bound_rows)
    if not bound_table.empty:
        meas = context_gate[
            (context_gate["mode"] == "decode")
            & (context_gate.vector == "context")
            & (context_gate.metric == "label_correct")
        ][["task", "q_layer", "c_layer", "lam", "value"]].rename(
            columns={"value": "measured_accuracy"}
        )
        bound_table = bound_table.merge(meas, on=["task", "q_layer", "c_layer", "lam"], how="left")
        bound_table["accuracy_bound_holds"] = (
            bound_table.measured_accuracy >= bound_table.frac_condition - 1e-12
        ) | bound_table.measured_accuracy.isna()
    summary = _summary(compare, cfg, n_layers)
    return {
        "theory_terms": terms_table,
        "theory_fit": pd.DataFrame(fit_rows),
        "theory_compare": compare,
        "theory_bound": bound_table,
        "theory_summary": summary,
        "theory_gate_strength": gate_strength(groups, context_gate),
        "theory_queries": pd.concat(query_frames, ignore_index=True)
        if query_frames
        else pd.DataFrame(),
    }


def gate_strength(groups: dict, context_gate: pd.DataFrame) -> pd.DataFrame:
    """The gate strength full ICL corresponds to: the lambda at which the paper's gated
    readout ``W_U norm(h_zero + lambda cbar)`` (decode mode, measured exactly) puts as much
    mass on the label tokens as the full ICL prompt does.

    Per (task, q, c): the smallest lambda of the decode curve of label mass that reaches the
    ICL label mass, interpolated between the run's lambdas (linearly from lambda = 0 to the
    first positive lambda, log-linearly after). ``reached`` is False where no measured lambda
    gets there (``lam_fit`` is NaN). In a k-shot sweep this is the fitted gate strength per
    number of demonstrations; its resolution is the run's lambda grid.

    Args:
        groups: ``{(task, q, c): gate-terms frame}`` of one k (for the keys and |cbar|).
        context_gate: the measured table.
    """
    rows = []
    gate = context_gate[context_gate["metric"] == "label_mass"]
    for (task, q, c), frame in groups.items():
        icl = gate[(gate.task == task) & (gate["mode"] == "baseline") & (gate.vector == "icl")]
        curve = gate[
            (gate.task == task)
            & (gate["mode"] == "decode")
            & (gate.vector == "context")
            & (gate.q_layer == q)
            & (gate.c_layer == c)
        ].sort_values("lam")
        if icl.empty or len(curve) < 2:
            continue
        target = float(icl.value.iloc[0])
        lams, mass = curve.lam.to_numpy(float), curve.value.to_numpy(float)
        hits = np.nonzero(mass >= target)[0]
        lam = math.nan
        if len(hits):
            j = int(hits[0])
            if j == 0:
                lam = float(lams[0])
            else:
                x0, x1, y0, y1 = lams[j - 1], lams[j], mass[j - 1], mass[j]
                t = (target - y0) / (y1 - y0)
                lam = float(
                    x0 + t * (x1 - x0) if x0 == 0 else np.exp(np.log(x0) + t * np.log(x1 / x0))
                )
        best = int(mass.argmax())
        rows.append(
            {
                "task": task,
                "q_layer": int(q),
                "c_layer": int(c),
                "icl_label_mass": target,
                "icl_ci_low": float(icl.ci_low.iloc[0]),
                "icl_ci_high": float(icl.ci_high.iloc[0]),
                "lam_fit": lam,
                "reached": bool(len(hits)),
                "lam_best": float(lams[best]),
                "best_label_mass": float(mass[best]),
                "lams": ",".join(f"{x:g}" for x in lams),
                "cbar_norm": float(frame.cbar_norm.iloc[0]) if "cbar_norm" in frame else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _attach_measured(
    compare: pd.DataFrame, context_gate: pd.DataFrame, cfg: CompareConfig, n_layers: int
) -> pd.DataFrame:
    """One row per measured mode for the ``measured`` points (decode at (q, c); patch at c)."""
    if compare.empty:
        return compare
    frames = [compare[compare.point == "grid"].assign(mode="predicted")]
    at = compare[compare.point == "measured"]
    for mode in cfg.modes:
        meas = context_gate[
            (context_gate["mode"] == mode)
            & (context_gate.vector == "context")
            & context_gate.metric.isin(METRICS)
        ][["task", "q_layer", "c_layer", "lam", "metric", "value", "n", "ci_low", "ci_high"]]
        if meas.empty:
            continue
        part = at
        if mode == "patch":
            part = at[at.q_layer == n_layers]
        merged = part.merge(
            meas, on=["task", "q_layer", "c_layer", "lam", "metric"], how="inner"
        ).rename(columns={"value": "measured"})
        frames.append(merged.assign(mode=mode))
    out = pd.concat(frames, ignore_index=True)
    for col in ("measured", "n", "ci_low", "ci_high"):
        if col not in out:
            out[col] = np.nan
    tol = cfg.ci_tol
    out["residual"] = out["measured"] - out["predicted"]
    pred_kind = out.kind == "prediction"
    out["within_ci"] = pd.Series(pd.NA, index=out.index, dtype="boolean")
    has = out.measured.notna()
    inside = (out.predicted >= out.ci_low - tol) & (out.predicted <= out.ci_high + tol)
    out.loc[has & pred_kind, "within_ci"] = inside[has & pred_kind]
    # a lower bound "holds" where the measurement is not below it
    out.loc[has & ~pred_kind, "within_ci"] = (out.measured >= out.predicted - tol)[has & ~pred_kind]
    order = ["task", "q_layer", "c_layer", "mode", "model", "kind", "metric", "lam", "point"]
    return out.sort_values(order, kind="stable").reset_index(drop=True)


def _summary(compare: pd.DataFrame, cfg: CompareConfig, n_layers: int) -> pd.DataFrame:
    """R^2, RMSE and the worst lambda per curve, per c and pooled over c."""
    if compare.empty:
        return pd.DataFrame()
    data = compare[(compare.kind == "prediction") & compare.measured.notna()]
    rows = []
    for (task, q, mode, model, metric), part in data.groupby(
        ["task", "q_layer", "mode", "model", "metric"], sort=True
    ):
        scopes = [(int(c), sel) for c, sel in part.groupby("c_layer", sort=True)]
        scopes.append((-1, part))
        for c, sel in scopes:
            resid = sel.residual.to_numpy()
            worst = sel.iloc[int(np.argmax(np.abs(resid)))]
            within = sel.within_ci.astype(bool)
            outside = sel[~within]
            worst_c = int(worst.c_layer)
            diagnosis = (
                "all points inside the measured 95% intervals"
                if outside.empty
                else _diagnosis(worst, model, metric, mode, worst_c, n_layers, cfg.saturation_ratio)
            )
            rows.append(
                {
                    "task": task,
                    "q_layer": q,
                    "c_layer": c,
                    "pooled": c == -1,
                    "mode": mode,
                    "model": model,
                    "metric": metric,
                    "n_points": len(sel),
                    "r2": r_squared(sel.measured.to_numpy(), sel.predicted.to_numpy()),
                    "rmse": float(np.sqrt(np.mean(resid**2))),
                    "max_abs_residual": float(np.abs(resid).max()),
                    "worst_lam": float(worst.lam) if np.abs(resid).max() > 0 else math.nan,
                    "worst_c_layer": worst_c if np.abs(resid).max() > 0 else -1,
                    "frac_within_ci": float(within.mean()),
                    "first_lam_outside_ci": float(outside.lam.min())
                    if not outside.empty
                    else math.nan,
                    "diagnosis": diagnosis,
                }
            )
    return pd.DataFrame(rows)


def compare_run(
    run_dir: str | Path, config: CompareConfig | None = None, *, write: bool = True
) -> dict[str, pd.DataFrame]:
    """Theory vs measurement for a context-gate run directory (the entry point).

    Reads ``tables/gate_terms.parquet`` and ``tables/context_gate.parquet``; writes the tables of
    :data:`TABLES` into ``tables/`` atomically (unless ``write=False``).

    Args:
        run_dir: a run directory holding a context_gate probe's tables.
        config: settings (default :class:`CompareConfig`).
        write: write the tables into the run directory.

    Returns:
        table name -> DataFrame.

    Raises:
        ValueError: the run directory has no context-gate tables.
    """
    run_dir = Path(run_dir)
    tables = run_dir / "tables"
    paths = {name: tables / f"{name}.parquet" for name in ("gate_terms", "context_gate")}
    absent = [str(p) for p in paths.values() if not p.is_file()]
    if absent:
        raise ValueError(
            f"{str(run_dir)!r} has no context-gate tables ({', '.join(absent)} missing); "
            "run a suite with a context_gate probe first"
        )
    n_layers = None
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        import json

        arch = json.loads(manifest.read_text()).get("architecture") or {}
        n_layers = arch.get("n_layers")
    gate_terms = pd.read_parquet(paths["gate_terms"])
    gate = pd.read_parquet(paths["context_gate"])
    if "shots" not in gate_terms.columns:  # a run made before the shots column existed
        out = compare_tables(gate_terms, gate, config, n_layers=n_layers)
    else:  # one comparison per k (a k-shot sweep's fit per number of demonstrations)
        parts: dict[str, list[pd.DataFrame]] = {}
        for k, terms_k in gate_terms.groupby("shots", sort=True):
            gate_k = gate[gate["shots"].isin([0, k])].drop(columns="shots")
            result = compare_tables(
                terms_k.drop(columns="shots"), gate_k, config, n_layers=n_layers
            )
            for name, frame in result.items():
                parts.setdefault(name, []).append(frame.assign(shots=int(k)))
        out = {}
        for name, frames in parts.items():
            merged = pd.concat(frames, ignore_index=True)
            merged.attrs = dict(frames[0].attrs)
            out[name] = merged
    if write:
        for name, frame in out.items():
            atomic_write_bytes(tables / f"{name}.parquet", parquet_bytes(frame))
    return out


# --------------------------------------------------------------------------------------------
# the simulations' regime, in numbers


def simulation_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per lambda of ``retrieval_vs_lambda`` (:func:`cgar_interp.theory.run_simulations`):
    where the paper's uniqueness condition holds and how the Theorem 3.1 bound fares.

    Returns:
        One row per lambda: ``contraction_bound`` (mean ``beta lam^2 / (2 eta_min)``), the
        fraction of trials meeting the uniqueness condition, mean first-order and fixed-point
        errors, mean bound, fraction of trials where the bound holds (first order and fixed
        point) and accuracy; plus, from ``fixed_point_counts`` at the configuration's beta,
        the mean and max number of fixed points found.
    """
    df = tables["retrieval_vs_lambda"]
    agg = (
        df.groupby("lam")
        .agg(
            contraction_bound=("contraction_bound", "mean"),
            frac_uniqueness=("uniqueness_condition", "mean"),
            error_first_order=("error_first_order", "mean"),
            error_fixed_point=("error_fixed_point", "mean"),
            bound_mean=("error_bound", "mean"),
            bound_holds_first_order=("bound_holds_first_order", "mean"),
            bound_holds_fixed_point=("bound_holds_fixed_point", "mean"),
            accuracy_fixed_point=("correct_fixed_point", "mean"),
        )
        .reset_index()
    )
    beta = df.attrs.get("config", {}).get("beta")
    counts = tables.get("fixed_point_counts")
    if counts is not None and beta is not None:
        at = counts[np.isclose(counts.beta, beta)]
        fp = at.groupby("lam").agg(
            fixed_points_mean=("n_fixed_points", "mean"),
            fixed_points_max=("n_fixed_points", "max"),
            stable_max=("n_stable", "max"),
        )
        agg = agg.merge(fp.reset_index(), on="lam", how="outer").sort_values("lam")
    return agg.reset_index(drop=True)

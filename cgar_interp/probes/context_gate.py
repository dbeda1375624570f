"""The paper's context-gate sweep (docs/science.md#context-gate-sweep), with the ablation and
baselines.

For every query layer q, context layer c and gate strength lambda:

- ``decode`` mode (the paper's first-order form): ``r = W_U norm(h_zero^(q) + lambda cbar^(c))``,
  computed for the whole grid from one unembedding per residual and per vector
  (:class:`~cgar_interp.decoding.ShiftedDecoder`);
- ``patch`` mode (the ablation of that approximation): add ``lambda cbar^(c)`` to the residual at
  layer c, last position, of the zero-shot forward pass and run blocks c..L-1 (prefix reuse; the
  query layer is then the model's own output, recorded as ``q_layer = n_layers``).

``cbar^(c)`` is the mean of ``h_icl^(c) - h_zero^(c)`` over the *fit* queries; everything is
scored on the disjoint *eval* queries. Vectors: ``context`` (cbar), ``random`` (a seeded random
direction with cbar's norm), and two label controls, the same estimator on other prompts:
``flipped`` (cbar from ``icl_flipped`` prompts, every demonstration's label sent through one
derangement of the classes: a consistent wrong mapping) and ``random_labels`` (cbar from
``icl_random`` prompts, every label drawn uniformly at random: Min et al., 2022).
Baselines: zero-shot and full ICL logits of the same eval queries.

Cost: the shared capture is two forward passes per query (zero-shot and ICL; plus one per *fit*
query for each label control); decode mode is matrix algebra on captured residuals, whatever
the grid; patch mode adds one-token suffix passes over the zero-shot pass's KV cache, every
(vector, lambda) variant batched together, and no forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from ..capture import resume_variants
from ..decoding import ShiftedDecoder
from ..layers import resolve_layers
from ..metrics import CHUNK_ELEMENTS
from ..sites import site_names
from .base import ProbeContext, SharedRead, register_probe
from .protocol import FLIPPED, RANDOM_LABELS, ProbeConfig, ci_cell

KIND = "context_gate"
TABLE = "context_gate"  # the tidy sweep (and its baselines)
TERMS_TABLE = "gate_terms"  # per eval query, the label-restricted terms the theory reads
MODES = ("decode", "patch")
VECTORS = ("context", "random", "flipped", "random_labels")
# the label-control vectors: cbar estimated on these prompts instead of the ICL ones
CONTROL_VECTORS = {"flipped": FLIPPED, "random_labels": RANDOM_LABELS}
RENAMED = {
    "shuffled": "'shuffled' was the class-level derangement, now 'flipped'; 'random_labels' is "
    "Min et al.'s random labels"
}


@dataclass(frozen=True)
class ContextGateConfig(ProbeConfig):
    """Grid and options of the context-gate probe (TOML ``kind = "context_gate"``).

    Attributes:
        query_layers: layers q decoded in decode mode (``"last"`` = n_layers, the paper's).
        context_layers: layers c where cbar is estimated/added (``"paper"``: 20/24/28/32 of 32).
        lambdas: gate strengths, finite and >= 0 (the paper: 0, 0.01, 0.1, 1, 10).
        modes: ``decode`` and/or ``patch``.
        vectors: ``context`` and any of the baselines ``random``, ``flipped``,
            ``random_labels``.
    """

    query_layers: str | tuple[int, ...] = "last"
    context_layers: str | tuple[int, ...] = "paper"
    lambdas: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 10.0)
    modes: tuple[str, ...] = MODES
    vectors: tuple[str, ...] = VECTORS

    def __post_init__(self):
        if not self.lambdas:
            raise ValueError("lambdas is empty; give at least one, e.g. [0, 0.1, 1]")
        for lam in self.lambdas:
            if not math.isfinite(lam) or lam < 0:
                raise ValueError(f"lambda {lam!r} is not valid: lambdas must be finite and >= 0")
        for mode in self.modes:
            if mode not in MODES:
                raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
        for vec in self.vectors:
            if vec in RENAMED:
                raise ValueError(
                    f"vector {vec!r} was renamed: {RENAMED[vec]}; valid vectors: "
                    f"{', '.join(VECTORS)}"
                )
            if vec not in VECTORS:
                raise ValueError(f"unknown vector {vec!r}; valid vectors: {', '.join(VECTORS)}")
        if "context" not in self.vectors:
            raise ValueError("vectors must include 'context' (the baselines are compared with it)")

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position (the probe contract)."""
        q = resolve_layers(self.query_layers, n_layers, "query_layers")
        c = resolve_layers(self.context_layers, n_layers, "context_layers")
        return tuple(sorted(set(q) | set(c)))

    @property
    def resumes_zero_shot(self) -> bool:
        """Patch mode intervenes at the last position of the eval queries' zero-shot prompts."""
        return "patch" in self.modes

    def shared_reads(self, inputs, n_layers: int) -> tuple[SharedRead, ...]:
        """Patch mode also scores the *fit* queries (where a claim selects its lambda): their
        zero-shot KV caches are kept in the shared pass."""
        if "patch" not in self.modes or not len(inputs.fit):
            return ()
        c_layers = resolve_layers(self.context_layers, n_layers, "context_layers")
        return (SharedRead.of("zero", inputs.fit, site_names("resid", c_layers), keep_states=True),)

    def prompt_kinds(self) -> frozenset[str]:
        """A label control's cbar is estimated on its prompts (``icl_flipped``,
        ``icl_random``): only those the vectors name are built."""
        controls = {CONTROL_VECTORS[v] for v in self.vectors if v in CONTROL_VECTORS}
        return super().prompt_kinds() | controls

    def self_check_paths(self) -> frozenset[str]:
        """Patch mode's resume paths, and decode mode's algebra of the final norm."""
        decode = {"decode_algebra"} if "decode" in self.modes else set()
        return super().self_check_paths() | decode

    def compares_with_theory(self) -> bool:
        """The gate terms (:func:`gate_terms`) are what the theory comparison fits."""
        return True

    @classmethod
    def key_numbers(cls, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """Per task and metric (label mass, full-vocab accuracy): zero-shot, full ICL and the
        context vector at the last context layer (and query layer) per lambda and mode."""
        gate = tables.get(TABLE)
        if gate is None or gate.empty:
            return {}
        out = {}
        last_q, last_c = gate.q_layer.max(), gate.c_layer.max()
        for metric, title in (
            ("label_mass", "label-token mass"),
            ("vocab_correct", "full-vocab accuracy"),
        ):
            rows = []
            for task in gate.task.unique():
                sel = gate[(gate.task == task) & (gate.metric == metric)]
                base = {r.vector: ci_cell(r) for r in sel[sel["mode"] == "baseline"].itertuples()}
                for mode in ("decode", "patch"):
                    cur = sel[
                        (sel["mode"] == mode)
                        & (sel.vector == "context")
                        & (sel.c_layer == last_c)
                        & ((sel.q_layer == last_q) | (sel["mode"] == "patch"))
                    ].sort_values("lam")
                    if cur.empty:
                        continue
                    row = {
                        "task": task,
                        "mode": mode,
                        "zero-shot": base.get("zero_shot", ""),
                        "full ICL": base.get("icl", ""),
                    }
                    row.update({f"lambda={r.lam:g}": ci_cell(r) for r in cur.itertuples()})
                    row["n"] = int(cur.n.iloc[0])
                    rows.append(row)
            out[f"Context gate, {title}, q = c = {last_c} (value [95% CI])"] = pd.DataFrame(rows)
        return out


def gate_vectors(
    config: ContextGateConfig, ctx: ProbeContext, layers
) -> dict[tuple[str, int], torch.Tensor]:
    """``{(vector kind, c): [d_model]}``: cbar and its baselines, estimated on fit queries."""
    cap = ctx.captures()
    fit = ctx.inputs.fit
    out = {}
    for c in layers:
        cbar = (cap.resid["icl"][c][fit] - cap.resid["zero"][c][fit]).mean(0)
        out[("context", c)] = cbar
        if "random" in config.vectors:
            gen = torch.Generator().manual_seed(ctx.seed * 100_003 + c)
            direction = torch.randn(cbar.shape[0], generator=gen, dtype=cbar.dtype)
            out[("random", c)] = direction * (cbar.norm() / direction.norm())
        for vector, kind in CONTROL_VECTORS.items():
            if vector not in config.vectors:
                continue
            if kind not in cap.resid:
                raise ValueError(
                    f"vector {vector!r} needs {kind!r} prompts for task {ctx.inputs.task!r}; "
                    "a suite with this vector builds them"
                )
            control = cap.resid[kind][c][fit] - cap.resid["zero"][c][fit]
            out[(vector, c)] = control.mean(0)
    return out


def run_context_gate(config: ContextGateConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Context-gate sweep: tidy metric rows, plus per-query gate terms for the theory.

    The tidy rows score the *eval* queries. The same sweep on the *fit* queries is kept per
    query only (``context_gate_queries``, ``split = "fit"``): a claim that selects (the best
    lambda, the best layer) selects there and is judged on the eval queries.
    """
    handle, inputs = ctx.handle, ctx.inputs
    n_layers = handle.n_layers
    q_layers = resolve_layers(config.query_layers, n_layers, "query_layers")
    c_layers = resolve_layers(config.context_layers, n_layers, "context_layers")
    lambdas = torch.tensor(config.lambdas, dtype=torch.float32)
    vectors = gate_vectors(config, ctx, c_layers)
    base = {"task": inputs.task, "probe": KIND}
    rows: list[dict] = []
    splits = [("eval", inputs.eval, ctx.zero_states())]
    if len(inputs.fit):
        fit_states = (
            ctx.read("zero", inputs.fit, site_names("resid", c_layers), keep_states=True).states
            if "patch" in config.modes
            else None
        )
        splits.append(("fit", inputs.fit, fit_states))
    for split, queries, states in splits:

        def emit(per_query, split=split, queries=queries, **keys):
            if split == "eval":  # aggregates of the eval queries, per-query values kept
                rows.extend(ctx.rows(per_query, queries=queries, **base, **keys))
            else:  # the fit queries: per-query values only, for selection
                ctx.record_queries(per_query, queries, **base, **keys)

        sweep_split(config, ctx, queries, states, vectors, q_layers, c_layers, lambdas, emit)
    return {
        TABLE: pd.DataFrame(rows),
        TERMS_TABLE: gate_terms(ctx, q_layers, c_layers, vectors),
    }


def sweep_split(config, ctx, ev, states, vectors, q_layers, c_layers, lambdas, emit) -> None:
    """The baselines and the (mode, vector, q, c, lambda) grid scored on the queries ``ev``
    (``[n]``); ``emit(per_query {metric: [n]}, **keys)`` takes each grid point's values.
    ``states``: the zero-shot KV caches of ``ev`` (None: patch mode runs its own pass)."""
    handle, inputs = ctx.handle, ctx.inputs
    n_layers = handle.n_layers
    cap = ctx.captures()
    for kind, label in (("zero", "zero_shot"), ("icl", "icl")):
        emit(
            ctx.score(cap.logits[kind][ev], ev),
            mode="baseline",
            vector=label,
            q_layer=n_layers,
            c_layer=-1,
            lam=0.0,
        )

    if "decode" in config.modes:
        # queries per decode step: the [n_lambda, chunk, vocab] logits of a step stay a few
        # MiB (in cache: the grid is bound by memory traffic, not arithmetic)
        chunk = max(1, CHUNK_ELEMENTS // (len(config.lambdas) * handle.arch.vocab_size))
        directions = None
        for q in q_layers:
            decoder = ShiftedDecoder(handle, cap.resid["zero"][q][ev])  # h: [n, d]
            if directions is None:  # W_U (gamma * v) for every vector at once; the same for all q
                directions = decoder.directions(torch.stack(list(vectors.values())))
            for (kind, c), direction in zip(vectors, directions, strict=True):
                parts: dict[str, list[torch.Tensor]] = {}
                for start in range(0, len(ev), chunk):
                    idx = ev[start : start + chunk]
                    logits = decoder(direction, lambdas, slice(start, start + chunk))
                    scored = ctx.score(logits, idx)
                    for name, value in scored.items():
                        parts.setdefault(name, []).append(value)
                merged = {name: torch.cat(v, dim=-1) for name, v in parts.items()}
                for i, lam in enumerate(config.lambdas):
                    emit(
                        {name: v[i] for name, v in merged.items()},
                        mode="decode",
                        vector=kind,
                        q_layer=q,
                        c_layer=c,
                        lam=lam,
                    )

    if "patch" in config.modes:
        kinds = [k for k in config.vectors if (k, c_layers[0]) in vectors]
        batch = inputs.zero.select(ev)

        def variants(c, h_last, idx):
            stack = [
                h_last[None] + lambdas[:, None, None] * vectors[(k, c)].to(h_last.dtype)
                for k in kinds
            ]
            return torch.cat(stack)  # [n_kinds * n_lam, b, d]

        tick = ctx.progress(f"{inputs.task}: patch", len(ev)) if ctx.progress else None
        out = resume_variants(
            handle,
            batch,
            c_layers,
            variants,
            lambda logits, idx: ctx.score(logits.float(), ev[idx]),
            batch_size=ctx.batch_size,
            progress=tick,
            states=states,
        )
        n_lam = len(config.lambdas)
        for c in c_layers:
            for k_i, kind in enumerate(kinds):
                for l_i, lam in enumerate(config.lambdas):
                    emit(
                        {m: v[k_i * n_lam + l_i] for m, v in out[c].items()},
                        mode="patch",
                        vector=kind,
                        q_layer=n_layers,
                        c_layer=c,
                        lam=lam,
                    )


def gate_terms(ctx: ProbeContext, q_layers, c_layers, vectors) -> pd.DataFrame:
    """Per eval query, label-restricted raw scores ``b = W_U h_zero^(q)`` and ``g = W_U cbar^(c)``.

    Raw (no final norm): the section-2 first-order form ``z = b + lambda g``. Also the label
    logits of the normed decode at lambda = 0, ``|cbar|``, and what the theory comparison
    (:mod:`cgar_interp.compare`) needs to model the final RMSNorm exactly. With ``gamma`` the
    norm's weight and ``eps`` its epsilon, the decode-mode label logit at any lambda is::

        (b_gamma + lambda g_gamma) / sqrt(h_ms + 2 lambda hc_ms + lambda^2 c_ms + norm_eps)

    One row per (query, q, c, class). Columns:

    - ``b``, ``g``: raw label scores; ``normed_logit``: decode label logit at lambda = 0;
      ``cbar_norm``: ``|cbar^(c)|``;
    - ``b_gamma``, ``g_gamma``: ``(W_U (gamma * h))_k`` and ``(W_U (gamma * cbar))_k``;
    - ``h_ms``, ``hc_ms``, ``c_ms``: means over ``d_model`` of ``h^2``, ``h * cbar``,
      ``cbar^2``; ``norm_eps``: the norm's epsilon;
    - ``lse_rest``: log-sum-exp of the lambda = 0 decode logits over the non-label vocabulary
      (with the label logits it gives the label mass at lambda = 0);
    - ``b_gamma_rest_pmean``, ``g_gamma_rest_pmean``: means of ``W_U (gamma * h)`` and
      ``W_U (gamma * cbar)`` over the non-label vocabulary, weighted by the lambda = 0 decode
      softmax (the exact lambda-derivative of the label log-odds at 0 uses them);
    - ``g_rest_mean``, ``g_gamma_rest_mean``: plain means of ``W_U cbar`` and
      ``W_U (gamma * cbar)`` over the non-label vocabulary (the paper's read-out slope);
    - ``lse_rest_inf``, ``b_gamma_rest_pmean_inf``, ``g_gamma_rest_pmean_inf``: the same
      log-sum-exp and weighted means for the decode of ``cbar`` alone (the lambda -> infinity
      end of the sweep), a second anchor for the non-label log-partition.
    """
    handle, inputs = ctx.handle, ctx.inputs
    cap = ctx.captures()
    readout = handle.readout()  # a remote model's weights are fetched once
    w_full = readout.weight.float().cpu()  # [V, d]
    label_ids = inputs.label_ids.cpu()
    w_u = w_full[label_ids]  # [K, d]
    gamma = readout.gamma.float().cpu()
    eps = readout.eps
    rest = torch.ones(w_full.shape[0], dtype=torch.bool)
    rest[label_ids] = False
    w_rest_mean = (w_full.sum(0) - w_full[label_ids].sum(0)) / int(rest.sum())  # [d]

    def over_rest(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-sum-exp over the non-label vocabulary, and the softmax-weighted mean W_U row."""
        masked = logits.masked_fill(~rest, float("-inf"))
        return torch.logsumexp(masked, dim=-1), torch.softmax(masked, dim=-1) @ w_full

    ev = inputs.eval
    contexts = torch.stack([vectors[("context", c)].float().cpu() for c in c_layers])  # [n_c, d]
    # the decode of each cbar alone (the lambda -> infinity end), all c in one unembedding
    lse_inf_all, w_rest_inf_all = over_rest(handle.decode_residual(contexts).float().cpu())
    rows = []
    for q in q_layers:
        h = cap.resid["zero"][q][ev]
        b = h @ w_u.T  # [n_eval, K]
        b_gamma = (h * gamma) @ w_u.T  # [n_eval, K]
        full = handle.decode_residual(h).float().cpu()  # [n_eval, V]
        normed = full[:, label_ids]
        lse_rest, w_rest_p = over_rest(full)  # [n_eval], [n_eval, d]
        b_gamma_rest = (w_rest_p * (h * gamma)).sum(-1)  # [n_eval]
        h_ms = h.pow(2).mean(-1)  # [n_eval]
        for c_i, c in enumerate(c_layers):
            vec = contexts[c_i]
            g = w_u @ vec  # [K]
            g_gamma = w_u @ (gamma * vec)  # [K]
            g_gamma_rest = w_rest_p @ (gamma * vec)  # [n_eval]
            hc_ms = (h * vec).mean(-1)  # [n_eval]
            c_ms = float(vec.pow(2).mean())
            g_rest_mean = float(w_rest_mean @ vec)
            g_gamma_rest_mean = float(w_rest_mean @ (gamma * vec))
            lse_rest_inf = float(lse_inf_all[c_i])  # the decode of cbar alone
            w_rest_inf = w_rest_inf_all[c_i]  # [d]
            b_gamma_rest_inf = (h * gamma) @ w_rest_inf  # [n_eval]
            g_gamma_rest_inf = float(w_rest_inf @ (gamma * vec))
            for i, query in enumerate(ev.tolist()):
                for k, cls in enumerate(inputs.classes):
                    rows.append(
                        {
                            "task": inputs.task,
                            "query": query,
                            "gold": int(inputs.gold[query]),
                            "q_layer": q,
                            "c_layer": c,
                            "class": k,
                            "class_name": cls,
                            "b": float(b[i, k]),
                            "g": float(g[k]),
                            "normed_logit": float(normed[i, k]),
                            "cbar_norm": float(vec.norm()),
                            "b_gamma": float(b_gamma[i, k]),
                            "g_gamma": float(g_gamma[k]),
                            "h_ms": float(h_ms[i]),
                            "hc_ms": float(hc_ms[i]),
                            "c_ms": c_ms,
                            "norm_eps": eps,
                            "lse_rest": float(lse_rest[i]),
                            "b_gamma_rest_pmean": float(b_gamma_rest[i]),
                            "g_gamma_rest_pmean": float(g_gamma_rest[i]),
                            "g_rest_mean": g_rest_mean,
                            "g_gamma_rest_mean": g_gamma_rest_mean,
                            "lse_rest_inf": lse_rest_inf,
                            "b_gamma_rest_pmean_inf": float(b_gamma_rest_inf[i]),
                            "g_gamma_rest_pmean_inf": g_gamma_rest_inf,
                        }
                    )
    return pd.DataFrame(rows)


def _zero_shot_rows(name: str, frame: pd.DataFrame):
    if name != TABLE:
        return False
    return (frame["mode"] == "baseline") & (frame["vector"] == "zero_shot")


register_probe(KIND, ContextGateConfig, zero_shot_rows=_zero_shot_rows)(run_context_gate)

"""Subspace localisation: does context move the residual into the label subspace?
(docs/science.md#subspace-localisation)

Per residual layer ``l`` (after ``l`` blocks, last position), from the shared captures
(:meth:`ProbeContext.captures`), with ``S = H_icl - H_zero`` the ``[n, d_model]`` matrix of
per-query shifts over the ``queries`` set (default all queries, fit and eval: these measures
describe the shifts and are not scored on held-out queries), ``cbar`` its mean row, and the
label subspace ``span{W_U[label]}`` (``K`` rows of the unembedding at the classes' first label
tokens; ``readout = "unembed_norm"`` multiplies them by the final RMSNorm's weight, the
directions the decode actually reads from the residual):

- ``participation_ratio`` and ``effective_rank`` (Roy & Vetterli) of ``S``'s spectrum, and
  ``var_top1`` / ``var_top_k``: variance explained by the top 1 / ``top_k`` components
  (uncentred second moments by default, so the common shift ``cbar`` counts; ``center = true``
  uses the covariance);
- ``angle_min_deg``, ``angle_mean_deg`` and ``overlap`` (mean squared cosine) of the principal
  angles between the top-``top_k`` right singular subspace of ``S`` and the label subspace;
- ``cbar_label_energy``: ``|P_label cbar|^2 / |cbar|^2``;
- ``class_align``: mean over classes of the cosine between the centred class-mean shift and the
  centred label direction (Yang et al. 2025's alignment of class directions with the
  unembeddings); also for ``h_zero`` and ``h_icl`` themselves;
- ``shift_norm`` and ``shift_rel_norm`` (``|h_icl - h_zero| / |h_zero|``) per query;
- ``probe_acc``: cross-validated accuracy of a logistic-regression probe of the class from
  ``h_zero`` and from ``h_icl`` (all queries; standardised features, ``StratifiedKFold`` with
  ``cv_folds`` folds shuffled by the suite seed), scored per query out of fold;
- per query ``q`` (the claim 4 controls, docs/science.md#claim-4), with ``s_q = h_icl - h_zero``
  the query's own shift: ``label_energy = |P_label s_q|^2 / |s_q|^2``; ``nonlabel_energy =
  |P_ctrl s_q|^2 / |s_q|^2``, ``P_ctrl`` the projection on the span of the readout rows (same
  ``readout``) of ``K`` *frequency-matched non-label tokens* (:func:`frequency_matched_tokens`:
  per label, the nearest token id that is no label token and has the label's shape -- a leading
  space or not, then letters; BPE ids are ordered by merge rank, which tracks corpus frequency,
  so a near id is a token of about the label's frequency: a proxy, no corpus is counted); and,
  with ``random_labels`` and the suite's ``icl_random`` prompts (Min et al. 2022: each
  demonstration's label drawn at random), ``random_label_energy = |P_label r_q|^2 / |r_q|^2``
  with ``r_q = h_icl_random - h_zero`` on the same query. Eval queries with their per-query
  values (``subspace_queries``, the values claim 4's verdicts resample); the fit queries'
  values are kept per query too. The control tokens' ids and strings are the table's
  ``nonlabel_ids`` / ``nonlabel_tokens`` columns (JSON lists).

Rows (``subject`` column): ``shift`` (the per-query energies too), ``h_zero``, ``h_icl``;
baselines ``random`` (a Haar-random
``top_k``-dimensional subspace in place of the shift subspace, and a random direction in place
of ``cbar``: ``n_random`` seeded draws; value = mean, interval = 2.5-97.5% of the draws; they
depend only on ``d_model``, ``top_k`` and ``K``, so one set of draws serves every layer) and
``chance`` (majority-class accuracy). Intervals of the matrix measures are
``estimate +- 1.96 se`` with the delete-d jackknife standard error (Shao & Wu 1989) over
``n_resamples`` random half-samples of the queries drawn within each class
(:func:`cgar_interp.subspace_math.jackknife_interval`), clipped to each measure's range: a
with-replacement bootstrap duplicates queries, which biases the effective rank and the
participation ratio so far downward that its percentile interval misses the estimate.
Per-query measures use the shared bootstrap of :meth:`ProbeContext.rows`. The spectrum measures
depend on the number of queries ``n`` (with ``n < d_model`` the effective rank is at most ``n``):
compare them across layers and tasks at the same ``n``. At layer 0 both prompts end with the
same token embedding, so the shift is exactly zero and no ``shift`` row is written; where every
query has the same feature vector (``h_zero`` and ``h_icl`` at layer 0, whose last token is the
same for all queries) ``class_align`` is undefined and not written.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import subspace_math as sm
from ..layers import NAMED, resolve_layers
from ..sites import site_name, site_names
from .base import ProbeContext, register_probe
from .inputs import SharedRead, TaskInputs
from .protocol import RANDOM_LABELS, ProbeConfig  # random labels: Min et al., 2022

KIND = "subspace"
TABLE = "subspace"  # tidy: per layer, subject and measure
QUERY_SETS = ("all", "eval", "fit")
READOUTS = ("unembed", "unembed_norm")


@dataclass(frozen=True)
class SubspaceConfig(ProbeConfig):
    """Options of the subspace probe (TOML ``kind = "subspace"``).

    Attributes:
        layers: residual layers (``"all"`` = ``0 .. n_layers``, ``"paper"``, ints; see
            :func:`cgar_interp.layers.resolve_layers`).
        top_k: dimension of the shift subspace compared with the label subspace (>= 1;
            ``None``: the number of classes ``K``, the label subspace's dimension).
        center: centre the shifts before the spectrum and the top subspace.
        queries: rows of ``S``: ``"all"``, ``"eval"`` or ``"fit"``.
        readout: ``"unembed"`` (rows of ``W_U``) or ``"unembed_norm"`` (times the final norm's
            weight).
        n_random: random-subspace draws for the baseline (>= 2).
        cv_folds: folds of the linear probe (>= 2, at most the smallest class's count).
        probe_c: inverse L2 regularisation of the logistic regression (> 0).
        n_resamples: random half-samples for the intervals of the matrix measures (>= 2;
            ``None``: the suite's ``n_boot``).
        random_labels: ask the suite for the random-label prompts (``icl_random``) and read
            their residuals at the eval queries, for ``random_label_energy`` (claim 4b); one
            more forward pass per query.
    """

    layers: str | tuple[int, ...] = "all"
    top_k: int | None = None
    center: bool = False
    queries: str = "all"
    readout: str = "unembed"
    n_random: int = 200
    cv_folds: int = 5
    probe_c: float = 1.0
    n_resamples: int | None = None
    random_labels: bool = True

    def __post_init__(self):
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k={self.top_k!r} is not valid: it must be an int >= 1 or None")
        if self.queries not in QUERY_SETS:
            raise ValueError(
                f"queries={self.queries!r} is not valid: use one of {', '.join(QUERY_SETS)}"
            )
        if self.readout not in READOUTS:
            raise ValueError(
                f"readout={self.readout!r} is not valid: use one of {', '.join(READOUTS)}"
            )
        if not isinstance(self.n_random, int) or self.n_random < 2:
            raise ValueError(f"n_random={self.n_random!r} is not valid: it must be an int >= 2")
        if not isinstance(self.cv_folds, int) or self.cv_folds < 2:
            raise ValueError(f"cv_folds={self.cv_folds!r} is not valid: it must be an int >= 2")
        if not (isinstance(self.probe_c, int | float) and np.isfinite(self.probe_c)) or (
            self.probe_c <= 0
        ):
            raise ValueError(f"probe_c={self.probe_c!r} is not valid: it must be finite and > 0")
        if self.n_resamples is not None and (
            not isinstance(self.n_resamples, int) or self.n_resamples < 2
        ):
            raise ValueError(
                f"n_resamples={self.n_resamples!r} is not valid: it must be an int >= 2 or None"
            )
        if isinstance(self.layers, str) and self.layers not in NAMED:
            raise ValueError(
                f"layers={self.layers!r} is not valid: use one of {', '.join(NAMED)}, or a list "
                "of residual layers"
            )
        if not isinstance(self.layers, str) and len(self.layers) == 0:
            raise ValueError("layers is empty; give at least one residual layer, or 'all'")

        if not isinstance(self.random_labels, bool):
            raise ValueError(f"random_labels={self.random_labels!r} is not valid: true or false")

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position (the probe contract)."""
        return resolve_layers(self.layers, n_layers, "layers")

    def prompt_kinds(self) -> frozenset[str]:
        """The zero-shot and ICL prompts, and with ``random_labels`` the random-label ones."""
        return super().prompt_kinds() | ({RANDOM_LABELS} if self.random_labels else set())

    def shared_reads(self, inputs: TaskInputs, n_layers: int) -> tuple[SharedRead, ...]:
        """The random-label prompts' residuals at the eval queries (layers after the
        embedding, where a shift can be non-zero), read in the shared pass."""
        layers = random_label_layers(self, inputs, n_layers)
        if not layers:
            return ()
        return (SharedRead.of(RANDOM_LABELS, inputs.eval, site_names("resid", layers)),)


def random_label_layers(config: SubspaceConfig, inputs: TaskInputs, n_layers: int) -> list[int]:
    """The layers whose random-label residuals the probe reads (none without the prompts)."""
    if not config.random_labels or inputs.icl_random is None:
        return []
    return [layer for layer in config.needed_layers(n_layers) if layer > 0]


def label_directions(ctx: ProbeContext, readout: str) -> np.ndarray:
    """``[K, d_model]`` label readout directions: ``W_U[label_ids]`` (times gamma if normed)."""
    return unembedding_directions(ctx, ctx.inputs.label_ids, readout)


_SPACE_MARKERS = ("\u0120", "\u2581")  # byte-level BPE's "G-dot" and SentencePiece's "_"


def token_text(tokenizer, token_id: int) -> str | None:
    """The vocabulary entry of ``token_id`` with a leading space marker (``Ġ``, ``▁``) as a
    space; None where the tokenizer has no entry (an id past its vocabulary)."""
    try:
        text = tokenizer.convert_ids_to_tokens(int(token_id))
    except (IndexError, KeyError, ValueError, OverflowError):
        return None
    if not isinstance(text, str) or not text:
        return None
    if text[0] in _SPACE_MARKERS:
        text = " " + text[1:]
    return text


def _shape(text: str) -> tuple[bool, str]:
    """``(leading space, body class)`` of a token's text: ``"alpha"`` (ASCII letters),
    ``"alnum"`` (ASCII letters and digits, with a letter), or ``"other"``."""
    space = text.startswith(" ")
    body = text[1:] if space else text
    if body.isascii() and body.isalpha():
        return space, "alpha"
    if body.isascii() and body.isalnum() and any(c.isalpha() for c in body):
        return space, "alnum"
    return space, "other"


def frequency_matched_tokens(
    label_ids: Sequence[int], tokenizer, vocab_size: int
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``K`` non-label tokens of about the labels' frequencies, one per label, in label order.

    For each label's first token ``t``, the nearest id ``t - 1, t + 1, t - 2, ...`` (the lower
    first at equal distance) that is no label token, no special token, not already chosen, not
    the label's own word in another case, and of the label's shape (:func:`_shape`: a leading
    space exactly when the label has one, and ASCII letters when the label is letters, letters
    and digits when it is, any text otherwise). A proxy for frequency matching: BPE ids are
    ordered by merge rank, and the merge rank of a token tracks its corpus frequency, so a
    near id is a token of about the label's frequency (no corpus is counted). The choice
    depends only on the tokenizer and the label ids, never on an outcome. Without a tokenizer
    (an id-only model) the nearest non-label ids are taken, texts ``""``.

    Returns:
        ``(ids, texts)``: the chosen token ids and their vocabulary entries (space marker as a
        space).
    """
    labels = [int(t) for t in label_ids]
    excluded = set(labels)
    if tokenizer is not None:
        excluded |= {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
        label_texts = [token_text(tokenizer, t) or "" for t in labels]
        words = {text.strip().lower() for text in label_texts}
    chosen: list[int] = []
    texts: list[str] = []
    for k, label in enumerate(labels):
        want = _shape(label_texts[k]) if tokenizer is not None else None
        found = None
        for d in range(1, vocab_size):
            for cand in (label - d, label + d):
                if not 0 <= cand < vocab_size or cand in excluded or cand in chosen:
                    continue
                if tokenizer is None:
                    found = (cand, "")
                    break
                text = token_text(tokenizer, cand)
                if text is None or text.strip().lower() in words:
                    continue
                space, body = _shape(text)
                if space == want[0] and (want[1] == "other" or body == want[1]):
                    found = (cand, text)
                    break
            if found is not None or (label - d < 0 and label + d >= vocab_size):
                break
        if found is None:
            raise ValueError(
                f"no non-label token of the shape of label token {label} in a vocabulary of "
                f"{vocab_size}: cannot build the frequency-matched control"
            )
        chosen.append(found[0])
        texts.append(found[1])
    return tuple(chosen), tuple(texts)


def unembedding_directions(ctx: ProbeContext, token_ids, readout: str) -> np.ndarray:
    """``[len(token_ids), d_model]`` readout rows of ``token_ids`` (times gamma if normed)."""
    weights = ctx.handle.readout()  # resident copies; a remote model's, fetched once
    w_u = weights.weight
    w = w_u[torch.as_tensor(token_ids).to(w_u.device)].float().cpu()
    if readout == "unembed_norm":
        w = w * weights.gamma.float().cpu()
    return w.double().numpy()


def energy_share(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``[n]`` share ``|P v|^2 / |v|^2`` of each row of ``vectors [n, d]`` in ``span(basis)``
    (``basis [d, r]`` orthonormal columns); NaN for a zero row."""
    total = np.einsum("nd,nd->n", vectors, vectors)
    inside = np.sum((vectors @ basis) ** 2, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def linear_probe_correct(
    features: np.ndarray, labels: np.ndarray, folds: int, c: float, seed: int
) -> np.ndarray:
    """``[n]`` out-of-fold correctness (0/1) of a standardised logistic-regression probe."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = int(np.bincount(labels).min())
    if folds > smallest:
        raise ValueError(
            f"cv_folds={folds} is more than the smallest class's {smallest} queries; lower "
            "cv_folds or raise n_fit/n_eval"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, features, labels, cv=cv)
    return (predicted == labels).astype(float)


def _spread(draws: np.ndarray) -> tuple[float, float]:
    """2.5% and 97.5% quantiles of baseline draws (their spread, not an estimate's interval)."""
    low, high = np.quantile(draws[np.isfinite(draws)], [0.025, 0.975])
    return float(low), float(high)


BOUNDS = {
    "participation_ratio": (1.0, np.inf),
    "effective_rank": (1.0, np.inf),
    "var_top1": (0.0, 1.0),
    "var_top_k": (0.0, 1.0),
    "cbar_label_energy": (0.0, 1.0),
    "class_align": (-1.0, 1.0),
    "angle_min_deg": (0.0, 90.0),
    "angle_mean_deg": (0.0, 90.0),
    "overlap": (0.0, 1.0),
}


def _angle_summary(angles: np.ndarray) -> dict[str, np.ndarray]:
    """``angles [..., m]`` radians -> min / mean degrees and the mean squared cosine."""
    return {
        "angle_min_deg": np.degrees(angles[..., 0]),
        "angle_mean_deg": np.degrees(angles.mean(-1)),
        "overlap": (np.cos(angles) ** 2).mean(-1),
    }


def run_subspace(config: SubspaceConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Per-layer shift spectrum, label-subspace angles, probes and alignment; tidy rows."""
    from threadpoolctl import threadpool_limits

    inputs = ctx.inputs
    layers = config.needed_layers(ctx.handle.n_layers)
    cap = ctx.captures()
    n_all = inputs.gold.shape[0]
    rows_idx = {
        "all": torch.arange(n_all),
        "eval": inputs.eval,
        "fit": inputs.fit,
    }[config.queries]
    labels_all = inputs.gold.numpy()
    labels = labels_all[rows_idx.numpy()]
    n_classes = len(inputs.classes)
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(
            f"task {inputs.task!r}: classes {missing} have no query in the {config.queries!r} "
            "set; raise n_fit/n_eval or use queries = 'all'"
        )
    top_k = config.top_k or n_classes
    if top_k > len(rows_idx):
        raise ValueError(
            f"top_k={top_k} exceeds the {len(rows_idx)} queries in the {config.queries!r} set"
        )
    directions = label_directions(ctx, config.readout)  # [K, d]
    basis = directions.T  # [d, K]
    label_q = sm.orthonormal_basis(basis)
    label_dim = label_q.shape[1]
    vocab = int(ctx.handle.readout().weight.shape[0])
    tokenizer = getattr(ctx.handle, "tokenizer", None)
    control_ids, control_texts = frequency_matched_tokens(
        inputs.label_ids.tolist(), tokenizer, vocab
    )
    control_q = sm.orthonormal_basis(
        unembedding_directions(ctx, list(control_ids), config.readout).T, "control basis"
    )
    ev, fit = inputs.eval, inputs.fit
    random_layers = random_label_layers(config, inputs, ctx.handle.n_layers)
    random_resid: dict[int, np.ndarray] = {}
    if random_layers:  # declared in shared_reads: from the shared pass, no pass of its own
        run = ctx.read(RANDOM_LABELS, ev, site_names("resid", random_layers))
        random_resid = {
            layer: run[site_name("resid", layer)].double().cpu().numpy() for layer in random_layers
        }
    d_model = directions.shape[1]
    rng = np.random.default_rng(ctx.seed)
    n_resamples = config.n_resamples or max(ctx.n_boot, 2)
    resamples = sm.half_samples(labels, n_resamples, rng)
    identity = np.arange(len(labels))[None]
    n, m = len(labels), resamples.shape[1]

    base = {"task": inputs.task, "probe": KIND}
    rows: list[dict] = []

    def add(layer: int, subject: str, metric: str, value, n: int, low, high) -> None:
        rows.append(
            {
                **base,
                "layer": layer,
                "subject": subject,
                "metric": metric,
                "value": float(value),
                "n": int(n),
                "ci_low": float(low),
                "ci_high": float(high),
            }
        )

    with threadpool_limits(limits=1, user_api="blas"):  # tiny matrices: threads only contend
        random_angles = np.stack(
            [
                sm.principal_angles(sm.random_subspace(d_model, top_k, rng), basis)
                for _ in range(config.n_random)
            ]
        )
        random_stats = _angle_summary(random_angles)
        random_stats["cbar_label_energy"] = np.array(
            [
                sm.projection_energy(rng.standard_normal(d_model), basis)
                for _ in range(config.n_random)
            ]
        )
        chance = float(np.bincount(labels_all).max() / n_all)
        for layer in layers:
            h_zero_all = cap.resid["zero"][layer].double().numpy()
            h_icl_all = cap.resid["icl"][layer].double().numpy()
            h_zero, h_icl = h_zero_all[rows_idx.numpy()], h_icl_all[rows_idx.numpy()]
            shift = h_icl - h_zero
            if np.any(shift):
                point = sm.resample_statistics(
                    shift,
                    identity,
                    basis,
                    top_k,
                    center=config.center,
                    labels=labels,
                    directions=directions,
                )
                draws = sm.resample_statistics(
                    shift,
                    resamples,
                    basis,
                    top_k,
                    center=config.center,
                    labels=labels,
                    directions=directions,
                )
                measures = {
                    "participation_ratio": (point.participation_ratio, draws.participation_ratio),
                    "effective_rank": (point.effective_rank, draws.effective_rank),
                    "var_top1": (point.var_top1, draws.var_top1),
                    "var_top_k": (point.var_top_k, draws.var_top_k),
                    "cbar_label_energy": (point.mean_energy, draws.mean_energy),
                    "class_align": (point.class_cos.mean(-1), draws.class_cos.mean(-1)),
                }
                angles_point, angles_draws = (
                    _angle_summary(point.angles),
                    _angle_summary(draws.angles),
                )
                for name in angles_point:
                    measures[name] = (angles_point[name], angles_draws[name])
                for name, (value, draws) in measures.items():
                    interval = sm.jackknife_interval(value[0], draws, n, m, bounds=BOUNDS[name])
                    add(layer, "shift", name, value[0], n, *interval)
                norms = np.linalg.norm(shift, axis=1)
                rows.extend(
                    {**base, **row, "layer": layer, "subject": "shift"}
                    for row in ctx.rows(
                        {
                            "shift_norm": norms,
                            "shift_rel_norm": norms / np.linalg.norm(h_zero, axis=1),
                        }
                    )
                )
                for name, draws in random_stats.items():
                    add(layer, "random", name, draws.mean(), len(draws), *_spread(draws))
            energies = query_energies(
                h_zero_all, h_icl_all, random_resid.get(layer), ev, label_q, control_q
            )
            if energies is not None:
                keys = {**base, "layer": layer, "subject": "shift"}
                rows.extend(ctx.rows(energies, queries=ev, **keys))
                on_fit = query_energies(
                    h_zero_all, h_icl_all, None, fit, label_q, control_q
                )  # kept per query (a layer chosen on fit someday), not summarised
                if on_fit is not None:
                    ctx.record_queries(on_fit, fit, **keys)
            for subject, feats, feats_all in (
                ("h_zero", h_zero, h_zero_all),
                ("h_icl", h_icl, h_icl_all),
            ):
                cos_point = sm.class_alignment(feats, labels, directions).mean()
                if np.isfinite(cos_point):  # undefined where every query has the same feature
                    cos_draws = sm.resample_class_alignment(feats, resamples, labels, directions)
                    low, high = sm.jackknife_interval(
                        cos_point, cos_draws.mean(-1), n, m, bounds=BOUNDS["class_align"]
                    )
                    add(layer, subject, "class_align", cos_point, n, low, high)
                with warnings.catch_warnings():
                    # layer 0 features are one repeated embedding: zero variance is expected
                    warnings.filterwarnings("ignore", message=".*[Vv]ariance.*")
                    correct = linear_probe_correct(
                        feats_all, labels_all, config.cv_folds, config.probe_c, ctx.seed
                    )
                rows.extend(
                    {**base, **row, "layer": layer, "subject": subject}
                    for row in ctx.rows({"probe_acc": correct})
                )
            add(layer, "chance", "probe_acc", chance, n_all, chance, chance)
    table = pd.DataFrame(rows)
    table["top_k"] = top_k
    table["label_dim"] = label_dim
    table["readout"] = config.readout
    table["nonlabel_ids"] = json.dumps([int(i) for i in control_ids])
    table["nonlabel_tokens"] = json.dumps(list(control_texts))
    return {TABLE: table}


def query_energies(
    h_zero: np.ndarray,
    h_icl: np.ndarray,
    h_random: np.ndarray | None,
    queries: torch.Tensor,
    label_q: np.ndarray,
    control_q: np.ndarray,
) -> dict[str, np.ndarray] | None:
    """Per-query energy shares of the shifts at ``queries`` (rows of ``h_zero`` / ``h_icl``,
    ``[n_all, d]``): ``label_energy`` and ``nonlabel_energy`` of ``h_icl - h_zero``, and with
    ``h_random`` (``[len(queries), d]``, the random-label prompts' residuals at ``queries``)
    ``random_label_energy`` of ``h_random - h_zero``. None where some query's shift is zero
    (layer 0: both prompts end in the same token embedding), so the shares are undefined.
    """
    idx = queries.numpy()
    shift = h_icl[idx] - h_zero[idx]
    if not np.all(np.any(shift != 0, axis=1)):
        return None
    out = {
        "label_energy": energy_share(shift, label_q),
        "nonlabel_energy": energy_share(shift, control_q),
    }
    if h_random is not None:
        random_shift = h_random - h_zero[idx]
        if np.all(np.any(random_shift != 0, axis=1)):
            out["random_label_energy"] = energy_share(random_shift, label_q)
    return out


register_probe(KIND, SubspaceConfig)(run_subspace)

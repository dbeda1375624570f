"""Run-time self-check: every fast path a run will use, against a plain forward, first.

The engine takes shortcuts that are exact in arithmetic but depend on the libraries under it
keeping their interfaces: a shared demonstration prefix run once and reused through the KV
cache, one-token suffix passes that resume from the capture pass's cache, the decode-mode
algebra of the final norm, attention patterns read through hooks. transformers 5.24 broke the
first two on the TransformerLens backend *without an error* (see :mod:`cgar_interp.compat`).
So before the first probe a run checks each shortcut it will use against a plain full forward
of the same rows on the same backend, on a few of its own prompts per task:

========================  ===================================================================
path                      compared with
========================  ===================================================================
``shared_prefix``         capture over a shared prefix's KV cache vs full prompts
``kv_resume``             one-token suffix passes over the kept cache, with a patch, vs a
                          full forward with the same patch (patch mode, task vectors)
``patch_lambda0``         patch mode at lambda = 0 vs the zero-shot logits
``task_vector_layer0``    a task vector at layer 0 (the same last token) vs zero-shot
``decode_algebra``        :class:`~cgar_interp.decoding.ShiftedDecoder` vs the model's own
                          final norm and unembedding of ``h + lambda v`` (and at lambda = 0
                          vs the forward pass's logits)
``head_patterns``         captured attention patterns vs ``softmax(beta q . k)`` recomputed
                          from q and k of a plain pass (Hopfield heads)
``recompute_err``         the same, over every row the Hopfield probe reads (during the run)
``head_resume``           one head's output at the last position replaced through the kept
                          cache (:func:`~cgar_interp.prefix.resume_from_mid`, head mediation)
                          vs a full forward with that head's ``z`` patched
``suffix_patch``          the same head's ``z`` patched inside a suffix pass from layer 0, two
                          variants at once (head ablation) vs the full forward
``grad_pass``             the gradient of p(gold) at a block's ``z`` from one forward and
                          backward pass (attribution patching) vs a central finite difference
                          of two plain forwards along it (relative); the same gradient from
                          the kept KV cache (the local shortcut) vs the full pass's; and the
                          grad pass's logits vs a plain forward's
========================  ===================================================================

The difference is the largest absolute difference of probabilities: softmax over the full
vocabulary for logits (what every metric is computed from), the attention distribution for
patterns. The tolerance is set by the model's dtype (:data:`TOLERANCE`). Beyond it the run
stops with :class:`SelfCheckFailed`, one line naming the path, the difference, the backend
and the library versions, unless the user opted out (``allow_failure``); the result is
recorded in the manifest either way, and the report shows it first (a red banner when a check
failed and the run went on).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from .sites import site_name, site_names

# Largest allowed |delta p| by dtype, set from the rounding of each dtype and checked against
# measurements on the embedded model (paper suite, 3 rows per task, CPU; the transformers 5.24
# bug staged on the same rows moved p by 0.40-0.54 in every dtype):
# - float32: the shortcuts only reorder float32 sums; measured at most 3.5e-6 (logits 4e-5).
# - bfloat16 (8 significant bits): the model's own norm + unembedding returns logits rounded
#   to bfloat16, 0.0625 at |logit| in [16, 32), so two logits' difference moves by up to 0.125
#   and a probability by about p(1-p) * 0.125 * 2 <= 0.06; measured at most 0.037 (decode
#   algebra, whose float32 arithmetic is the more exact of the two), 0.007 elsewhere.
# - float16 (11 bits, 8x finer): measured at most 0.0081 (decode algebra).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 3e-2, torch.bfloat16: 1e-1}
# grad_pass: largest relative error of the gradient's directional derivative against a central
# difference whose first-order change is 1e-3 in probability. float32 rounds p to ~1e-7, so
# the difference's own noise is ~1e-4 relative; the third-order remainder of the step is below
# a percent on the embedded model. A gradient off by a factor is off by 100%.
GRAD_TOLERANCE = {
    torch.float32: 0.05,
    torch.float64: 1e-3,
    torch.float16: 0.3,
    torch.bfloat16: 0.5,
}

PATHS = {
    "shared_prefix": "capture over a shared prefix's KV cache vs full prompts",
    "kv_resume": "one-token suffix passes over the kept KV cache vs a full patched forward",
    "patch_lambda0": "patch mode at lambda = 0 vs zero-shot logits",
    "task_vector_layer0": "task vector at layer 0 vs zero-shot logits (a no-op)",
    "decode_algebra": "decode-mode algebra vs the model's own norm + unembedding",
    "head_patterns": "captured attention patterns vs softmax(beta q.k) recomputed",
    "recompute_err": "Hopfield probe: patterns vs softmax(beta q.k), every row it reads",
    "head_resume": "a head's output replaced via the kept KV cache vs a full z-patched forward",
    "suffix_patch": "z patched inside suffix passes (variants as tokens) vs a full forward",
    "grad_pass": "gradient of p(gold) at z (forward + backward) vs a finite difference",
}


class SelfCheckFailed(RuntimeError):
    """A fast path disagreed with the plain path beyond the tolerance of the model's dtype."""


def tolerance_for(dtype: torch.dtype) -> float:
    if dtype not in TOLERANCE:
        raise ValueError(f"no self-check tolerance for dtype {dtype}; known: {list(TOLERANCE)}")
    return TOLERANCE[dtype]


def prob_diff(a: Tensor, b: Tensor) -> tuple[float, float]:
    """``(max |softmax(a) - softmax(b)|, max |a - b|)`` over logits ``[..., vocab]``."""
    a, b = a.float(), b.float()
    dp = (torch.softmax(a, -1) - torch.softmax(b, -1)).abs().max()
    return float(dp), float((a - b).abs().max())


@dataclass(frozen=True)
class PathCheck:
    """One comparison of a fast path with the plain path."""

    path: str
    task: str
    max_abs_diff: float
    tolerance: float
    rows: int
    passed: bool
    max_logit_diff: float | None = None
    detail: str = ""


@dataclass
class SelfCheck:
    """The checks of one run, and what to do when one fails.

    Attributes:
        backend, dtype, versions: named in the error and the manifest.
        allow_failure: record a failed check and go on (the user's explicit opt-out).
        checks: every :class:`PathCheck` so far.
    """

    backend: str
    dtype: torch.dtype
    versions: dict = field(default_factory=dict)
    allow_failure: bool = False
    checks: list[PathCheck] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tolerance(self) -> float:
        return tolerance_for(self.dtype)

    def record(
        self,
        path: str,
        task: str,
        diff: float,
        *,
        rows: int,
        logit_diff: float | None = None,
        detail: str = "",
        tolerance: float | None = None,
    ) -> PathCheck:
        """Record one comparison; raise :class:`SelfCheckFailed` if it fails (unless allowed).
        ``tolerance``: for a path whose difference is not in probability (``grad_pass``'s
        relative error); default the dtype's."""
        if path not in PATHS:
            raise ValueError(f"unknown self-check path {path!r}; known: {', '.join(PATHS)}")
        tol = self.tolerance if tolerance is None else tolerance
        passed = math.isfinite(diff) and diff <= tol
        check = PathCheck(path, task, float(diff), tol, rows, passed, logit_diff, detail)
        self.checks.append(check)
        if not passed and not self.allow_failure:
            raise SelfCheckFailed(self.message(check))
        return check

    def message(self, check: PathCheck) -> str:
        versions = ", ".join(
            f"{k} {v}"
            for k, v in self.versions.items()
            if k in ("transformers", "transformer_lens", "nnsight", "torch")
        )
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"self-check failed: {check.path} ({PATHS[check.path]}) differs by "
            f"{check.max_abs_diff:.3g} in probability (tolerance {check.tolerance:g} for {dtype}) "
            f"on task {check.task!r}, backend {self.backend} ({versions}); the run's numbers "
            "would be wrong. Fix the environment (make install installs the lock), or pass "
            "--allow-self-check-failure to go on anyway (recorded, and shown in red)"
        )

    def replay(self, stored: dict) -> None:
        """Record the comparisons of an earlier session (:func:`load_check`) as if they had run
        now: each against its own tolerance, raising :class:`SelfCheckFailed` for a failed one
        unless failures are allowed, as running them again would."""
        for c in stored["checks"]:
            self.record(
                c["path"],
                c["task"],
                c["max_abs_diff"],
                rows=c["rows"],
                logit_diff=c["max_logit_diff"],
                detail=c["detail"],
                tolerance=c["tolerance"],
            )
        self.seconds += float(stored.get("seconds", 0.0))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> dict:
        """What the manifest records: per path the largest difference, and every check."""
        worst: dict[str, dict] = {}
        for c in self.checks:
            if c.path not in worst or c.max_abs_diff > worst[c.path]["max_abs_diff"]:
                worst[c.path] = {
                    "max_abs_diff": c.max_abs_diff,
                    "max_logit_diff": c.max_logit_diff,
                    "task": c.task,
                    "passed": c.passed,
                    "compares": PATHS[c.path],
                }
        return {
            "passed": self.passed,
            "allow_failure": self.allow_failure,
            "overridden": self.allow_failure and not self.passed,
            "tolerance": self.tolerance,
            "dtype": str(self.dtype).removeprefix("torch."),
            "metric": "max |delta p|, softmax over the vocabulary (attention for patterns)",
            "seconds": round(self.seconds, 3),
            "paths": worst,
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass(frozen=True)
class PlannedPaths:
    """Which fast paths a suite uses (only those are checked).

    Attributes:
        shared_prefix: ``shared_prefix``. resume: ``kv_resume`` and ``patch_lambda0``.
        task_vectors: ``task_vector_layer0``. decode: ``decode_algebra``.
        head_patterns: ``head_patterns``. head_resume: ``head_resume`` and ``suffix_patch``.
        grad_pass: ``grad_pass``.
    """

    shared_prefix: bool
    resume: bool
    task_vectors: bool
    decode: bool
    head_patterns: bool
    head_resume: bool = False
    grad_pass: bool = False

    @classmethod
    def of(cls, paths: frozenset[str], shared_prefix: bool, remote: bool = False) -> PlannedPaths:
        """The plan of the paths a suite's probes declare (names of :data:`PATHS`)."""
        unknown = sorted(set(paths) - set(PATHS))
        if unknown:
            raise ValueError(f"unknown self-check paths {unknown}; known: {', '.join(PATHS)}")
        return cls(
            shared_prefix=shared_prefix,
            resume="kv_resume" in paths,
            task_vectors="task_vector_layer0" in paths,
            decode="decode_algebra" in paths,
            head_patterns="head_patterns" in paths,
            # a remote model resumes no cache: head mediation's verified heads run as
            # z-patched full forwards there, which grad_pass's plain forwards are
            head_resume="head_resume" in paths and not remote,
            grad_pass="grad_pass" in paths,
        )


def planned_paths(suite, icl_batch, remote: bool = False) -> PlannedPaths:
    """The shortcuts ``suite`` will take on prompts like ``icl_batch``: the paths its probes
    declare (:meth:`~cgar_interp.probes.protocol.ProbeConfig.self_check_paths`), and the shared
    prefix where the prompts have one. A remote model reuses no prefix (no cache lives on the
    server); its resumes run as full forward passes and its decodes with the readout weights
    fetched from the server, which the checks compare."""
    from .prefix import common_prefix_length

    prefix = common_prefix_length(icl_batch.ids, icl_batch.lengths)
    return PlannedPaths.of(
        suite.self_check_paths(),
        shared_prefix=prefix >= 16 and not remote,  # capture_many's default min_prefix
        remote=remote,
    )


# the versions a kept self-check holds for (besides the model, the dtype and what it checks)
KEY_VERSIONS = ("cgar_interp", "nnsight", "torch", "transformers")


def self_check_key(provenance: dict, plans, rows: int) -> dict:
    """What a self-check's result holds for: the model (id and hash as the manifest records
    them), its backend and dtype, the library versions (:data:`KEY_VERSIONS`), the rows per
    task, and per task the paths it checks and a digest of its prompts and labels.

    Args:
        provenance: the run manifest (:meth:`~cgar_interp.models.ModelHandle.provenance`).
        plans: ``(TaskInputs, PlannedPaths)`` per checked task, in order.
        rows: eval queries per task.
    """
    import hashlib

    versions = provenance.get("versions") or {}
    tasks = []
    for inputs, plan in plans:
        digest = hashlib.sha256()
        for tensor in (inputs.label_ids, inputs.gold, inputs.eval, *_batch_tensors(inputs)):
            t = torch.as_tensor(tensor).detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        tasks.append({"task": inputs.task, "paths": asdict(plan), "inputs": digest.hexdigest()})
    return {
        "model": provenance.get("model"),
        "model_hash": provenance.get("model_hash"),
        "backend": provenance.get("backend"),
        "dtype": provenance.get("dtype"),
        "versions": {k: versions.get(k) for k in KEY_VERSIONS},
        "rows_per_task": rows,
        "tasks": tasks,
    }


def _batch_tensors(inputs) -> list[Tensor]:
    return [t for batch in (inputs.zero, inputs.icl) for t in (batch.ids, batch.lengths)]


def load_check(path, key: dict) -> dict | None:
    """The self-check kept at ``path`` (:func:`store_check`) if it holds for ``key``; else
    None (absent, unreadable, or for another model, dtype, version or set of checks)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text())
    except ValueError:
        return None
    # compare through JSON: the kept key went through it (tuples are lists there)
    if kept.get("key") != json.loads(json.dumps(key, default=str)) or "checks" not in kept:
        return None
    return kept


def store_check(path, key: dict, check: SelfCheck, tmp_dir=None) -> None:
    """Keep ``check``'s comparisons at ``path`` (atomically) with the ``key`` they hold for."""
    from .results import atomic_write_json

    atomic_write_json(
        path,
        {"key": key, "checks": [asdict(c) for c in check.checks], "seconds": check.seconds},
        tmp_dir,
    )


def check_task(check: SelfCheck, handle, inputs, plan: PlannedPaths, *, rows: int = 3) -> None:
    """Run every planned comparison on the first ``rows`` eval queries of one task.

    Args:
        check: where results go (raises on the first failure unless allowed).
        handle: the run's model, on the run's backend.
        inputs: the task's :class:`~cgar_interp.probes.base.TaskInputs`.
        plan: what the suite uses (:func:`planned_paths`).
        rows: how many queries (a handful; the check must stay cheap).
    """
    from .capture import CaptureJob, capture_jobs, capture_many, resume_variants
    from .models import Patch
    from .tokens import TokenBatch

    t0 = time.perf_counter()
    task = inputs.task
    idx = inputs.eval[:rows]
    zero, icl = inputs.zero.select(idx), inputs.icl.select(idx)
    n = len(idx)
    n_layers = handle.n_layers
    resume_layers = sorted({0, n_layers // 2})  # layer 0 runs every block over the cache
    sites = list(site_names("resid", sorted({*resume_layers, n_layers})))
    try:
        # the plain path: whole prompts, no cache; and the same prompts with their states
        # kept for the resume check (independent passes: on NDIF one request)
        jobs = [CaptureJob(handle, zero, sites, -1, batch_size=n, shared_prefix=False)]
        if plan.resume:
            jobs.append(CaptureJob(handle, zero, sites, -1, batch_size=n, keep_states=True))
        zero_plain, *kept_run = capture_jobs(handle, jobs)
        # a patch of a residual's own size, in a seeded direction (what cbar or a task
        # vector is to the engine: a [d_model] vector added at the last position)
        gen = torch.Generator().manual_seed(12345)
        shift = {}
        for layer in resume_layers:
            h = zero_plain[site_name("resid", layer)].float()
            direction = torch.randn(h.shape[-1], generator=gen)
            shift[layer] = direction * (h.norm(dim=-1).mean() / direction.norm())
            # representable in the model's dtype, so that both paths round the sum h + shift
            # once (the suffix path adds in float32, the full forward in the model's dtype)
            shift[layer] = shift[layer].to(handle.dtype).float()
        if plan.shared_prefix:
            icl_sites = list(site_names("resid", (n_layers // 2, n_layers)))
            plain = capture_many(handle, icl, icl_sites, -1, batch_size=n, shared_prefix=False)
            fast = capture_many(handle, icl, icl_sites, -1, batch_size=n, shared_prefix=True)
            dp, dl = prob_diff(fast.logits, plain.logits)
            dr = max(
                float((fast[s] - plain[s]).abs().max() / plain[s].abs().max().clamp_min(1.0))
                for s in icl_sites
            )
            check.record(
                "shared_prefix",
                task,
                max(dp, dr),
                rows=n,
                logit_diff=dl,
                detail=f"largest relative residual difference {dr:.3g}",
            )
        if plan.resume:
            (kept,) = kept_run
            # a task vector at layer 0: the mean last-position residual of prompts that end
            # in the same token is that token's embedding, so replacing it changes nothing
            theta0 = zero_plain[site_name("resid", 0)].float().mean(0)
            last = zero.ids[torch.arange(n), zero.lengths - 1]
            same_last = bool((last == last[0]).all())

            def variants(layer, h, i):
                out = [h, h + shift[layer]]
                if layer == 0:
                    out.append(theta0.expand_as(h))
                return torch.stack(out)

            got = resume_variants(
                handle,
                zero,
                resume_layers,
                variants,
                lambda logits, i: {"logits": logits.float()},
                batch_size=n,
                states=kept.states,
            )
            # the plain path: one full forward of the rows repeated once per layer, each copy
            # patched at its own layer (the same arithmetic as one forward per layer)
            m = len(resume_layers)
            copies = TokenBatch(zero.ids.repeat(m, 1), zero.lengths.repeat(m))
            patches = []
            for k, layer in enumerate(resume_layers):
                value = torch.zeros(m * n, shift[layer].shape[0])
                value[k * n : (k + 1) * n] = shift[layer]
                patches.append(Patch(site_name("resid", layer), -1, value))
            full = handle.run_with_patches(copies, patches, logits_positions=-1).logits
            worst_patch, worst_zero, dl_patch, dl_zero = 0.0, 0.0, 0.0, 0.0
            for k, layer in enumerate(resume_layers):
                logits = got[layer]["logits"]  # [n_var, n, vocab]
                dp, dl = prob_diff(logits[0], zero_plain.logits)
                worst_zero, dl_zero = max(worst_zero, dp), max(dl_zero, dl)
                dp, dl = prob_diff(logits[1], full[k * n : (k + 1) * n])
                worst_patch, dl_patch = max(worst_patch, dp), max(dl_patch, dl)
            check.record(
                "kv_resume",
                task,
                worst_patch,
                rows=n,
                logit_diff=dl_patch,
                detail=f"patched at layers {resume_layers}",
            )
            check.record("patch_lambda0", task, worst_zero, rows=n, logit_diff=dl_zero)
            if plan.task_vectors and same_last:
                dp, dl = prob_diff(got[0]["logits"][2], zero_plain.logits)
                check.record("task_vector_layer0", task, dp, rows=n, logit_diff=dl)
        if plan.decode:
            from .decoding import ShiftedDecoder

            h = zero_plain[site_name("resid", n_layers)].float()
            v = torch.randn(h.shape[-1], generator=gen)
            v = v * (h.norm(dim=-1).mean() / v.norm())
            lambdas = torch.tensor([0.0, 0.1, 1.0, 10.0])
            algebra = ShiftedDecoder(handle, h)(v, lambdas)  # [k, n, vocab]
            worst, worst_l = prob_diff(algebra[0], zero_plain.logits)
            for k, lam in enumerate(lambdas.tolist()):
                direct = handle.decode_residual(h + lam * v)
                dp, dl = prob_diff(algebra[k], direct)
                worst, worst_l = max(worst, dp), max(worst_l, dl)
            check.record("decode_algebra", task, worst, rows=n, logit_diff=worst_l)
        if plan.head_patterns:
            from .probes.hopfield_heads import read_heads

            # the ICL prompts are the long ones: two rows of them (the Hopfield probe checks
            # every row it reads again, as recompute_err)
            blocks = tuple(sorted({0, n_layers // 2, n_layers - 1}))
            few = icl.select(torch.arange(min(n, 2)))
            reads = read_heads(handle, few, blocks, batch_size=n)
            worst = max(
                float(
                    (torch.softmax(r.scores.double(), -1) - r.pattern.double())
                    .nan_to_num(0.0)
                    .abs()
                    .max()
                )
                for r in reads.values()
            )
            check.record(
                "head_patterns", task, worst, rows=few.batch_size, detail=f"blocks {list(blocks)}"
            )
        if plan.head_resume:
            check_head_resume(check, handle, icl, task)
        if plan.grad_pass:  # the long prompts again: two rows of them
            two = torch.arange(min(n, 2))
            check_grad_pass(
                check, handle, icl.select(two), inputs.label_ids[inputs.gold[idx[two]]], task
            )
    finally:
        check.seconds += time.perf_counter() - t0


def check_head_resume(check: SelfCheck, handle, batch, task: str) -> None:
    """Head 0 of the middle block, its output replaced by the rows' mean at the last position:
    through the kept cache (:func:`~cgar_interp.prefix.resume_from_mid`) vs a full forward
    with its ``z`` patched (``head_out = W_O z``, so both are the same intervention). Then the
    same ``z`` replacement inside a suffix pass from layer 0 (the ablation path of head
    mediation), as variant 1 of two (variant 0 unpatched), vs the same full forward."""
    from .capture import capture_many, resume_variants
    from .models import Patch
    from .prefix import resume_from_mid

    layer, head, n = handle.n_layers // 2, 0, batch.batch_size
    resid0, mid_site = site_name("resid", 0), site_name("resid_mid", layer)
    z_site, out_site = site_name("z", layer), site_name("head_out", layer)
    kept = capture_many(
        handle, batch, [resid0, mid_site, z_site, out_site], -1, batch_size=n, keep_states=True
    )
    mean_z = kept[z_site].float().mean(0)[head]  # [d_head]
    mean_out = kept[out_site].float().mean(0)[head]  # [d_model]
    fast = torch.zeros(n, handle.arch.vocab_size)
    for rows, state in kept.states:
        mid = kept[mid_site][rows].float()
        out = kept[out_site][rows].float()[:, head]
        fast[rows] = resume_from_mid(handle, state, layer, (mid + mean_out - out)[None])[0].float()

    def replace(z):  # z: [batch, n_pos, n_heads, d_head] at the last position
        z = z.clone()
        z[:, :, head] = mean_z.to(z.dtype)
        return z

    full = handle.run_with_patches(batch, [Patch(z_site, -1, replace)], logits_positions=-1)
    dp, dl = prob_diff(fast, full.logits)
    check.record("head_resume", task, dp, rows=n, logit_diff=dl, detail=f"block {layer}, head 0")

    def replace_second(z):  # z: [b, 2 variants, n_heads, d_head], the suffix's new tokens
        z = z.clone()
        z[:, 1, head] = mean_z.to(z.dtype)
        return z

    got = resume_variants(
        handle,
        batch,
        [0],
        lambda _, h, i: torch.stack([h, h]),
        lambda logits, i: {"logits": logits.float()},
        batch_size=n,
        states=kept.states,
        patches=[Patch(z_site, -1, replace_second)],
    )[0]["logits"]
    dp, dl = prob_diff(got[1], full.logits)
    dp0, dl0 = prob_diff(got[0], kept.logits)
    check.record(
        "suffix_patch",
        task,
        max(dp, dp0),
        rows=n,
        logit_diff=max(dl, dl0),
        detail=f"from layer 0, {z_site} head 0 in variant 1 of 2",
    )


def check_grad_pass(check: SelfCheck, handle, batch, gold_tokens: Tensor, task: str) -> None:
    """The attribution estimate's gradient, from one forward and backward pass
    (:meth:`~cgar_interp.models.ModelHandle.gradients`), against plain forwards: per row,
    ``p(gold)`` with the middle block's ``z`` at the last position moved by ``+-s u`` along
    the unit gradient ``u``, whose central difference ``(p+ - p-)/2`` equals ``s |grad|`` to
    first order. ``s`` makes that first-order change 1e-3 in probability (at most 5% of the
    ``z``'s norm). Recorded: the largest relative error over rows (tolerance
    :data:`GRAD_TOLERANCE`), or the grad pass's own logits against a plain forward's
    (``|delta p|`` over the dtype's tolerance) if that is worse."""
    from .capture import capture_many, resume_gradients
    from .metrics import GoldProbability
    from .models import Patch, RunRequest

    layer = handle.n_layers // 2
    z_site = site_name("z", layer)
    objective = GoldProbability(gold_tokens)
    run = handle.gradients(batch, [z_site], objective, sites=[z_site])
    grad, z = run.grads[z_site].float(), run[z_site].float()  # [n, H, d_head]
    cache_rel, plain_logits = 0.0, None
    if not handle.remote:  # the cache path a local run takes, against this full grad pass
        kept = capture_many(
            handle, batch, ["resid.0"], -1, batch_size=batch.batch_size, keep_states=True
        )
        cached = resume_gradients(handle, kept.states, [layer], objective)[z_site]
        cache_rel = float((cached - grad).abs().max() / grad.abs().max().clamp_min(1e-30))
        plain_logits = kept.logits  # that capture is a plain forward: its last logits
    flat = grad.flatten(1)
    norm = flat.norm(dim=1)
    step = torch.minimum(1e-3 / norm.clamp_min(1e-30), 0.05 * z.flatten(1).norm(dim=1))
    direction = (flat / norm.clamp_min(1e-30)[:, None]).view_as(grad)

    def moved(sign: float):
        def fn(x):  # x: [n, 1, H, d_head] at the last position
            shift = sign * step[:, None, None, None] * direction[:, None]
            return x + shift.to(device=x.device, dtype=x.dtype)

        return fn

    # the two moved passes and a plain forward are independent: on NDIF one request
    requests = [
        (sign, RunRequest(batch, patches=(Patch(z_site, -1, moved(sign)),), logits_positions=-1))
        for sign in (1.0, -1.0)
    ]
    if plain_logits is None:
        requests.append(("plain", RunRequest(batch, positions=None, logits_positions=-1)))
    runs = dict(handle.run_many(requests))
    if plain_logits is None:
        plain_logits = runs["plain"].logits
    p = {sign: objective(runs[sign].logits.float()) for sign in (1.0, -1.0)}
    central = (p[1.0] - p[-1.0]) / 2
    first_order = (step * norm).double()
    usable = first_order > 1e-9  # a row whose p(gold) has no gradient at all has no test
    relative = (central - first_order).abs()[usable] / first_order[usable]
    worst = float(relative.max()) if usable.any() else 0.0
    dp, dl = prob_diff(run.logits, plain_logits)
    tolerance = GRAD_TOLERANCE.get(check.dtype, 0.5)
    check.record(
        "grad_pass",
        task,
        max(worst, cache_rel, dp * tolerance / check.tolerance),
        rows=int(usable.sum()),
        logit_diff=dl,
        detail=(
            f"{z_site}: relative error of the gradient along itself {worst:.2g} "
            f"(first-order change {float(first_order.max()):.1g}); the kept-cache gradient vs "
            f"the full pass's, relative {cache_rel:.2g}; the grad pass's logits vs a plain "
            f"forward |delta p| {dp:.2g}"
        ),
        tolerance=tolerance,
    )

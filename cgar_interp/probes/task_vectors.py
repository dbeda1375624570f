"""Task vectors (Hendel et al., 2023): does one residual vector carry the task?

Per layer l: the task vector ``theta^(l)`` is the mean over the *fit* queries of the ICL prompt's
residual at layer l, last position. For each held-out *eval* query it *replaces* the residual at
layer l, last position, of the query's zero-shot forward pass, and blocks l..L-1 run on
(prefix reuse). Accuracy and label mass per layer show where the task is encoded; the best layer
is marked. (Hendel et al. take the vector from one ICL prompt with a dummy query; the mean over
fit queries is the same estimator with less variance, as in function-vector work.)
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..capture import resume_variants
from ..layers import resolve_layers
from ..sites import site_names
from .base import ProbeContext, SharedRead, register_probe
from .protocol import ProbeConfig, ci_cell

KIND = "task_vectors"
TABLE = "task_vectors"  # the tidy table: per layer, metrics of the patched zero-shot pass


@dataclass(frozen=True)
class TaskVectorConfig(ProbeConfig):
    """Layers to patch (TOML ``kind = "task_vectors"``); default every block input 0..L-1."""

    layers: str | tuple[int, ...] = "all"

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        """Residual layers read at the last position (the probe contract)."""
        return resolve_layers(self.layers, n_layers, "layers")

    @property
    def resumes_zero_shot(self) -> bool:
        """Patches the last position of the eval queries' zero-shot prompts."""
        return True

    def shared_reads(self, inputs, n_layers: int) -> tuple[SharedRead, ...]:
        """The best layer is chosen on the fit queries: their zero-shot KV caches are kept."""
        if not len(inputs.fit):
            return ()
        sites = site_names("resid", self.needed_layers(n_layers))
        return (SharedRead.of("zero", inputs.fit, sites, keep_states=True),)

    def self_check_paths(self) -> frozenset[str]:
        """The resume paths, and a task vector at layer 0 (a no-op) vs the zero-shot logits."""
        return super().self_check_paths() | {"task_vector_layer0"}

    @classmethod
    def key_numbers(cls, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """The best layer per task by full-vocab accuracy."""
        tv = tables.get(TABLE)
        if tv is None or tv.empty:
            return {}
        acc = tv[tv.metric == "vocab_correct"]
        if "best_layer" in acc.columns:  # chosen on the fit queries (best_layer_selected_on)
            best = acc[acc.layer == acc.best_layer]
        else:
            best = acc.loc[acc.groupby("task").value.idxmax()]
        return {
            "Task vectors: best layer per task (chosen on the fit queries; eval accuracy)": pd.DataFrame(
                [
                    {"task": r.task, "layer": int(r.layer), "accuracy": ci_cell(r), "n": int(r.n)}
                    for r in best.itertuples()
                ]
            )
        }


def run_task_vectors(config: TaskVectorConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Patch the mean ICL residual into zero-shot forwards, per layer; tidy rows.

    The tidy rows score the eval queries; the best layer (``best_layer``) is chosen on the
    *fit* queries (full-vocab accuracy, then label mass; ties: the lowest layer), whose
    per-query values are kept in ``task_vectors_queries`` (``split = "fit"``), so the eval
    accuracy at that layer is not a maximum over layers of the same queries.
    """
    inputs = ctx.inputs
    layers = config.needed_layers(ctx.handle.n_layers)
    cap = ctx.captures()
    fit, ev = inputs.fit, inputs.eval
    theta = {layer: cap.resid["icl"][layer][fit].mean(0) for layer in layers}

    def variants(layer, h_last, idx):
        return theta[layer].to(h_last.dtype).expand_as(h_last)[None]  # [1, b, d]

    def patched(queries, states, what):
        tick = ctx.progress(f"{inputs.task}: {what}", len(queries)) if ctx.progress else None
        return resume_variants(
            ctx.handle,
            inputs.zero.select(queries),
            layers,
            variants,
            lambda logits, idx: ctx.score(logits.float(), queries[idx]),
            batch_size=ctx.batch_size,
            progress=tick,
            states=states,
        )

    out = patched(ev, ctx.zero_states(), "task vectors")
    rows = []
    base = {"task": inputs.task, "probe": KIND}
    for layer in layers:
        rows += ctx.rows(
            {m: v[0] for m, v in out[layer].items()},
            queries=ev,
            **base,
            layer=layer,
            theta_norm=float(theta[layer].norm()),
        )
    table = pd.DataFrame(rows)
    best, split = -1, "eval"
    if len(fit):
        sites = site_names("resid", layers)
        states = ctx.read("zero", fit, sites, keep_states=True).states
        on_fit = patched(fit, states, "task vectors (fit queries)")
        scores = []
        for layer in layers:
            per_query = {m: v[0] for m, v in on_fit[layer].items()}
            ctx.record_queries(
                per_query, fit, **base, layer=layer, theta_norm=float(theta[layer].norm())
            )
            acc = float(per_query["vocab_correct"].mean())
            mass = float(per_query["label_mass"].mean())
            scores.append((acc, mass, -layer))
        best, split = -max(scores)[2], "fit"
    elif len(table):  # no fit queries to choose on: the eval maximum, labelled as such
        acc = table[table.metric == "vocab_correct"]
        best = int(acc.loc[acc.value.idxmax(), "layer"])
    table["best_layer"] = best
    table["best_layer_selected_on"] = split
    return {TABLE: table}


register_probe(KIND, TaskVectorConfig)(run_task_vectors)

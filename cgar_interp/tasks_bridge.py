"""From a suite's task name to the aligned :class:`~cgar_interp.probes.TaskInputs` probes use.

Builds the prompts (:mod:`cgar_interp.data`), checks label tokens against the model's
tokenizer, tokenises every prompt once through the handle (its BOS choice), and returns the
tidy prompt table with token ids so any number can be recomputed outside the toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .data import CONTROL_KINDS, PromptConfig, build_prompts, label_tokens, load_task
from .models import ModelHandle
from .probes import TaskInputs
from .task_spec import TaskSpec


@dataclass(frozen=True)
class PreparedTask:
    inputs: TaskInputs
    prompts: pd.DataFrame
    info: dict


DEFAULT_DEMO_POOL = 8


def prompt_config(
    suite,
    label_controls=(),
    spec: TaskSpec | None = None,
    shots: int | None = None,
) -> PromptConfig:
    """How a task's prompts are built: the suite's settings, the label-control prompt kinds
    to build (``icl_flipped``, ``icl_random``, ``icl_permuted``: those the suite's probes ask
    for), the ``[[task]]`` table's overrides, and ``shots`` (one k of a sweep, whose prompts
    are nested in the largest k's)."""
    spec = spec or TaskSpec(name="?")
    k = shots if shots is not None else suite.shot_list[0]
    k_max = max(suite.shot_list) if suite.sweeps_shots else None
    pool = spec.demo_pool_per_class or max(DEFAULT_DEMO_POOL, k_max or k)
    return PromptConfig(
        k=k,
        n_fit=suite.n_fit if spec.n_fit is None else spec.n_fit,
        n_eval=suite.n_eval if spec.n_eval is None else spec.n_eval,
        seed=suite.seed,
        demo_pool_per_class=pool,
        label_controls=tuple(label_controls),
        pinned=suite.pinned_demos,
        k_max=k_max,
    )


def label_controls(suite) -> tuple[str, ...]:
    """The label-control prompt kinds some probe of ``suite`` reads (only those are built)."""
    wanted = suite.prompt_kinds()
    return tuple(kind for kind in CONTROL_KINDS if kind in wanted)


def load_spec(spec: TaskSpec, names: dict[str, int] | None = None):
    """The :class:`~cgar_interp.data.Task` a ``[[task]]`` table (or ``tasks`` string) names."""
    from .config import ConfigError

    options = spec.loader_options()
    if spec.is_file and names is not None and names.get(Path(spec.path).stem, 0) > 1:
        options.setdefault("name", spec.key())  # two data.jsonl: tell them apart in tables
    try:
        return load_task(spec.source, **options)
    except TypeError as err:  # an option the loader of this kind of task does not take
        raise ConfigError(f"task {spec.source!r}: {err}") from None


def prepare_task(
    handle: ModelHandle,
    suite,
    task_name: str | TaskSpec,
    shots: int | None = None,
    *,
    task=None,
) -> PreparedTask:
    """Prompts, label tokens and token batches of one task (at one k) for one model.

    ``task`` is the loaded task when the caller has it already (a sweep loads it once).
    """
    spec = task_name if isinstance(task_name, TaskSpec) else TaskSpec.parse(task_name, "tasks")
    task = task if task is not None else load_spec(spec)
    prompts = build_prompts(
        task,
        prompt_config(suite, label_controls(suite), spec, shots),
        tokenizer=handle.tokenizer,
        n_ctx=handle.arch.n_ctx,
        add_bos=handle.prepend_bos,
    )
    labels = label_tokens(task, handle.tokenizer)
    batches = {kind: handle.tokenize(prompts.texts(kind)) for kind in prompts.kinds}
    frame = prompts.to_frame()
    token_ids = []
    for kind in prompts.kinds:  # the frame is grouped by kind, each in query order
        batch = batches[kind]
        token_ids += [batch.ids[i, : batch.lengths[i]].tolist() for i in range(batch.batch_size)]
    if len(token_ids) != len(frame):
        raise RuntimeError("prompt table and token batches are misaligned")
    frame["token_ids"] = token_ids
    frame["prepend_bos"] = handle.prepend_bos
    split = prompts.split_indices()
    inputs = TaskInputs(
        task=task.name,
        classes=tuple(task.classes),
        label_ids=torch.tensor(labels.first_ids, dtype=torch.long),
        gold=torch.tensor(prompts.gold(), dtype=torch.long),
        fit=torch.tensor(split["fit"], dtype=torch.long),
        eval=torch.tensor(split["eval"], dtype=torch.long),
        zero=batches["zero"],
        icl=batches["icl"],
        **{kind: batches.get(kind) for kind in CONTROL_KINDS},
    )
    return PreparedTask(inputs, frame, {"prompts": prompts.manifest(), "labels": labels.manifest()})

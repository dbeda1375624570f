"""From a suite's task name to the aligned :class:`~cgar_interp.probes.TaskInputs` probes use.

Builds the prompts (:mod:`cgar_interp.data`), checks label tokens against the model's
tokenizer, tokenises every prompt once through the handle (its BOS choice), and returns the
tidy prompt table with token ids so any number can be recomputed outside the toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from .data import PromptConfig, build_prompts, label_tokens, load_task
from .models import ModelHandle
from .probes import TaskInputs


@dataclass(frozen=True)
class PreparedTask:
    inputs: TaskInputs
    prompts: pd.DataFrame
    info: dict


def prompt_config(suite, needs_shuffled: bool) -> PromptConfig:
    return PromptConfig(
        k=suite.shots,
        n_fit=suite.n_fit,
        n_eval=suite.n_eval,
        seed=suite.seed,
        shuffled_labels=needs_shuffled,
        pinned=suite.pinned_demos,
    )


def prepare_task(handle: ModelHandle, suite, task_name: str) -> PreparedTask:
    """Prompts, label tokens and token batches of one task for one model."""
    task = load_task(task_name)
    needs_shuffled = any("shuffled" in getattr(p.config, "vectors", ()) for p in suite.probes)
    prompts = build_prompts(
        task,
        prompt_config(suite, needs_shuffled),
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
        icl_shuffled=batches.get("icl_shuffled"),
    )
    return PreparedTask(inputs, frame, {"prompts": prompts.manifest(), "labels": labels.manifest()})

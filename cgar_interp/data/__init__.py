"""Tasks and prompts: loaders, shipped offline task sets, the k-shot prompt builder, label tokens.

>>> from cgar_interp.data import PromptConfig, build_prompts, load_task
>>> task = load_task("sst2-mini")
>>> prompts = build_prompts(task, PromptConfig(k=1, n_fit=8, n_eval=8, seed=0))
>>> len(prompts.get("zero")), len(prompts.get("icl", "eval"))
(16, 8)

Modules: :mod:`.tasks` (the task model and families), :mod:`.loaders` (hub datasets and local
files), :mod:`.shipped` (``sst2-mini``, ``trec-mini``, ``agnews-mini``), :mod:`.synthetic`,
:mod:`.prompts` (builder, splits, context length), :mod:`.labels` (label tokens),
:mod:`.evaluate` (zero-shot vs ICL read-out of a model on a task).
"""

from __future__ import annotations

from .catalog import available_tasks, describe_tasks, load_task
from .labels import LabelTokenError, LabelTokens, label_sequences, label_tokens
from .loaders import HUB_DATASETS, DatasetUnavailable, HubDataset, load_file, load_hub, read_table
from .prompts import (
    CONTROL_KINDS,
    KINDS,
    SPLITS,
    ContextLengthError,
    Prompt,
    PromptConfig,
    PromptSet,
    build_prompts,
    fit_context,
    prompt_lengths,
    prompts_frame,
)
from .shipped import SHIPPED, TASKS_DIR, load_shipped
from .synthetic import synthetic_task
from .tasks import (
    FAMILIES,
    Example,
    PromptTemplate,
    Task,
    TaskError,
    TaskFamily,
    get_family,
    make_task,
)

__all__ = [
    "CONTROL_KINDS",
    "FAMILIES",
    "HUB_DATASETS",
    "KINDS",
    "SHIPPED",
    "SPLITS",
    "TASKS_DIR",
    "ContextLengthError",
    "DatasetUnavailable",
    "Example",
    "HubDataset",
    "LabelTokenError",
    "LabelTokens",
    "Prompt",
    "PromptConfig",
    "PromptSet",
    "PromptTemplate",
    "Task",
    "TaskError",
    "TaskFamily",
    "available_tasks",
    "build_prompts",
    "describe_tasks",
    "fit_context",
    "get_family",
    "label_sequences",
    "label_tokens",
    "load_file",
    "load_hub",
    "load_shipped",
    "load_task",
    "make_task",
    "prompt_lengths",
    "prompts_frame",
    "read_table",
    "synthetic_task",
]

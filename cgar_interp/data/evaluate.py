"""Zero-shot vs ICL read-out of a model on a task: the behavioural baseline of every probe.

For each query of a :class:`~cgar_interp.data.prompts.PromptSet`, the logits at the last
position of its zero-shot and ICL prompts are scored with :func:`cgar_interp.metrics.query_metrics`
(full-vocabulary accuracy, label-restricted accuracy, label-token mass), in batches.

Run ``python -m cgar_interp.data.evaluate`` for the table on the shipped task sets and the
embedded model (CPU, well under a minute).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import pandas as pd
import torch

from ..metrics import bootstrap_ci, query_metrics
from .labels import label_tokens
from .prompts import PromptConfig, PromptSet, build_prompts

METRICS = ("vocab_correct", "label_correct", "label_mass", "gold_mass")


def last_logits(handle, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """``[n, vocab]`` float32 logits at each prompt's last token, ``batch_size`` prompts a pass."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = handle.tokenize(list(texts[start : start + batch_size]))
        with torch.no_grad():
            out.append(handle.logits(batch, positions=-1).float().cpu())
    return torch.cat(out)


def score_prompts(
    handle,
    prompts: PromptSet,
    *,
    kinds: Sequence[str] = ("zero", "icl"),
    split: str | None = "eval",
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per-query metrics of ``handle`` on the prompts of ``kinds`` (one row per query and kind).

    Columns: ``task, query_id, kind, split, gold, vocab_correct, label_correct, label_mass,
    gold_mass, top_token`` (``top_token``: the whole-vocabulary argmax, decoded).
    """
    labels = label_tokens(prompts.task, handle.tokenizer)
    label_ids = torch.tensor(labels.first_ids)
    rows = []
    for kind in kinds:
        chosen = prompts.get(kind, split)
        logits = last_logits(handle, [p.text for p in chosen], batch_size)
        gold = torch.tensor([p.gold for p in chosen])
        metrics = query_metrics(logits, label_ids, gold)
        top = logits.argmax(-1).tolist()
        for i, p in enumerate(chosen):
            rows.append(
                {
                    "task": prompts.task.name,
                    "query_id": p.query_id,
                    "kind": kind,
                    "split": p.split,
                    "gold": p.gold,
                    **{m: float(metrics[m][i]) for m in METRICS},
                    "top_token": handle.tokenizer.decode([top[i]]),
                }
            )
    return pd.DataFrame(rows)


def summarise_scores(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean of each metric per task and kind, with ``n`` and a bootstrap 95% interval."""
    rows = []
    for (task, kind), group in scores.groupby(["task", "kind"], sort=False):
        for metric in METRICS:
            values = group[metric].to_numpy()
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "task": task,
                    "kind": kind,
                    "metric": metric,
                    "value": float(values.mean()),
                    "n": len(values),
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


def icl_baseline(
    handle,
    tasks: Sequence[str] = ("sst2-mini", "trec-mini", "agnews-mini"),
    config: PromptConfig | None = None,
    *,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Per-query zero-shot and ICL scores of ``handle`` on ``tasks`` (eval split)."""
    from .catalog import load_task

    config = config or PromptConfig(k=1, n_fit=16, n_eval=48)
    frames = []
    for name in tasks:
        prompts = build_prompts(
            load_task(name),
            config,
            tokenizer=handle.tokenizer,
            n_ctx=handle.arch.n_ctx,
            add_bos=handle.prepend_bos,
        )
        frames.append(score_prompts(handle, prompts, batch_size=batch_size))
    return pd.concat(frames, ignore_index=True)


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Print zero-shot vs ICL accuracy and label mass of a model on the shipped task sets."""
    parser = argparse.ArgumentParser(prog="python -m cgar_interp.data.evaluate")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--tasks", nargs="+", default=["sst2-mini", "trec-mini", "agnews-mini"])
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--n-eval", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pinned", action="store_true")
    args = parser.parse_args(argv)
    from ..models import load_model

    handle = load_model(args.model, backend=args.backend)
    config = PromptConfig(k=args.k, n_fit=16, n_eval=args.n_eval, seed=args.seed,
                          pinned=args.pinned)  # fmt: skip
    summary = summarise_scores(icl_baseline(handle, args.tasks, config))
    table = summary.pivot_table(
        index=["task", "kind"], columns="metric", values="value", sort=False
    )
    print(f"{handle.name}, k={args.k} per class, eval n={args.n_eval}, seed={args.seed}")
    print(table[list(METRICS)].round(3).to_string())
    return summary


if __name__ == "__main__":
    main()

"""Synthetic task inputs on the tiny Llama: random-token prompts, no tokenizer needed."""

import torch

from cgar_interp.probes import TaskInputs
from cgar_interp.tokens import TokenBatch


def synthetic_inputs(
    n: int = 12, n_classes: int = 3, seed: int = 0, shuffled: bool = True
) -> TaskInputs:
    gen = torch.Generator().manual_seed(seed)
    label_ids = torch.tensor([10 + k for k in range(n_classes)])
    gold = torch.arange(n) % n_classes
    demo = torch.randint(20, 128, (9,), generator=gen).tolist()
    demo_shuffled = list(reversed(demo))
    zero, icl, shuf = [], [], []
    for i in range(n):
        query = torch.randint(20, 128, (3 + i % 4,), generator=gen).tolist()
        zero.append([1, *query])
        icl.append([1, *demo, *query])
        shuf.append([1, *demo_shuffled, *query])
    perm = torch.randperm(n, generator=gen)
    return TaskInputs(
        task="synthetic-tiny",
        classes=tuple(f"c{k}" for k in range(n_classes)),
        label_ids=label_ids,
        gold=gold,
        fit=perm[: n // 3].sort().values,
        eval=perm[n // 3 :].sort().values,
        zero=TokenBatch.from_sequences(zero),
        icl=TokenBatch.from_sequences(icl),
        icl_shuffled=TokenBatch.from_sequences(shuf) if shuffled else None,
    )

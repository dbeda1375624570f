"""Synthetic task inputs on the tiny Llama: random-token prompts, no tokenizer needed."""

import torch

from cgar_interp.probes import TaskInputs
from cgar_interp.tokens import TokenBatch


def synthetic_inputs(
    n: int = 12, n_classes: int = 3, seed: int = 0, controls: bool = True
) -> TaskInputs:
    """``controls``: also the three label-control batches (each its own reordering of the
    demonstration tokens, so their vectors differ)."""
    gen = torch.Generator().manual_seed(seed)
    label_ids = torch.tensor([10 + k for k in range(n_classes)])
    gold = torch.arange(n) % n_classes
    demo = torch.randint(20, 128, (9,), generator=gen).tolist()
    reordered = {  # icl_flipped keeps the reversed block the old icl_shuffled had
        "icl_flipped": list(reversed(demo)),
        "icl_random": demo[3:] + demo[:3],
        "icl_permuted": demo[::2] + demo[1::2],
    }
    zero, icl = [], []
    rows: dict[str, list[list[int]]] = {kind: [] for kind in reordered}
    for i in range(n):
        query = torch.randint(20, 128, (3 + i % 4,), generator=gen).tolist()
        zero.append([1, *query])
        icl.append([1, *demo, *query])
        for kind, block in reordered.items():
            rows[kind].append([1, *block, *query])
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
        **{
            kind: TokenBatch.from_sequences(seqs) if controls else None
            for kind, seqs in rows.items()
        },
    )

"""Token batches and positions: right padding, per-row positions, validation.

Variable-length prompts are batched with **right** padding. In a causal model a token never
attends to later ones, so every real position computes exactly what it computes unpadded: no
attention mask, no shifted RoPE positions, identical on every backend. Positions are then
resolved per row (``-1`` is each row's own last real token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Positions = int | Sequence[int] | Tensor | None


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded token ids.

    Attributes:
        ids: ``[batch, pos]`` long tensor, padded on the right with ``pad_id``.
        lengths: ``[batch]`` real lengths.
    """

    ids: Tensor
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[0])

    def select(self, indices) -> TokenBatch:
        """Rows ``indices`` (a list or 1-D tensor), trimmed to their own width."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        lengths = self.lengths[idx.to(self.lengths.device)]
        width = int(lengths.max()) if len(lengths) else 0
        return TokenBatch(self.ids[idx.to(self.ids.device), :width], lengths)

    def to(self, device) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.lengths.to(device))

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[int]], pad_id: int = 0) -> TokenBatch:
        """Pad ``sequences`` of token ids on the right into one batch."""
        if len(sequences) == 0:
            raise ValueError("empty batch: pass at least one sequence of token ids")
        lengths = [len(s) for s in sequences]
        if min(lengths) == 0:
            raise ValueError(f"sequence {lengths.index(0)} is empty; every prompt needs a token")
        ids = torch.full((len(sequences), max(lengths)), pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            ids[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        return cls(ids, torch.tensor(lengths, dtype=torch.long))


def as_batch(ids, pad_id: int = 0) -> TokenBatch:
    """Accept a TokenBatch, a ``[batch, pos]`` or ``[pos]`` tensor, or (lists of) id lists."""
    if isinstance(ids, TokenBatch):
        return ids
    if isinstance(ids, Tensor):
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"token ids must be an integer tensor [batch, pos] or [pos]; got dtype "
                f"{ids.dtype} and shape {tuple(ids.shape)}"
            )
        if ids.shape[1] == 0:
            raise ValueError("token ids have zero positions; every prompt needs a token")
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
        return TokenBatch(ids.long(), lengths)
    if isinstance(ids, Sequence) and len(ids) > 0 and isinstance(ids[0], int):
        return TokenBatch.from_sequences([ids], pad_id)
    if isinstance(ids, Sequence):
        return TokenBatch.from_sequences(ids, pad_id)
    raise TypeError(
        f"cannot read token ids from {type(ids).__name__}; pass a TokenBatch, a tensor, or lists "
        "of ints (use ModelHandle.tokenize for text)"
    )


def check_vocab(batch: TokenBatch, vocab_size: int) -> None:
    """Raise when a real (non-padding) token id is outside ``0..vocab_size-1``."""
    mask = torch.arange(batch.ids.shape[1]) < batch.lengths[:, None].cpu()
    real = batch.ids.cpu()[mask]
    bad = (real < 0) | (real >= vocab_size)
    if bad.any():
        value = int(real[bad][0])
        raise ValueError(f"token id {value} is out of range: valid ids are 0..{vocab_size - 1}")


def resolve_positions(positions: Positions, lengths: Tensor) -> tuple[Tensor, bool]:
    """Absolute per-row positions ``[batch, n_pos]`` and whether to squeeze the position axis.

    Args:
        positions: ``None`` (every position of the padded batch), an int (negative counts from
            each row's own end, so ``-1`` is every row's last real token), a sequence of ints, or
            a ``[batch, n_pos]`` tensor of per-row positions.
        lengths: ``[batch]`` real lengths.

    Raises:
        ValueError: a position outside ``-length .. length-1`` of some row, naming the row.
    """
    lengths = lengths.cpu()
    batch = lengths.shape[0]
    if positions is None:
        width = int(lengths.max())
        return torch.arange(width).expand(batch, width), False
    squeeze = isinstance(positions, int)
    if isinstance(positions, Tensor):
        rel = positions.cpu().long()
        if rel.dim() == 1:
            rel = rel.expand(batch, -1)
        if rel.dim() != 2 or rel.shape[0] != batch:
            raise ValueError(
                f"a position tensor must be [batch, n_pos] with batch={batch}; got "
                f"{tuple(positions.shape)}"
            )
    else:
        values = [positions] if squeeze else list(positions)
        if not values or not all(isinstance(p, int) for p in values):
            raise ValueError(f"positions must be ints; got {positions!r}")
        rel = torch.tensor(values, dtype=torch.long).expand(batch, -1)
    absolute = torch.where(rel < 0, rel + lengths[:, None], rel)
    bad = (absolute < 0) | (absolute >= lengths[:, None])
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        n = int(lengths[row])
        raise ValueError(
            f"position {int(rel[row, col])} is beyond the sequence of row {row} (length {n}); "
            f"valid positions are {-n}..{n - 1}"
        )
    return absolute, squeeze


def select_positions(x: Tensor, positions: Tensor, squeeze: bool) -> Tensor:
    """``x[b, positions[b, i], ...]`` -> ``[batch, n_pos, ...]`` (``[batch, ...]`` if squeezed).

    Always returns new memory, never a view of ``x``.
    """
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    out = x[rows, positions.to(x.device)]
    return out[:, 0] if squeeze else out

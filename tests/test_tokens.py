"""Right-padded batches and per-row positions (no model needed)."""

import pytest
import torch

from cgar_interp.tokens import (
    TokenBatch,
    as_batch,
    check_vocab,
    resolve_positions,
    select_positions,
)


def test_right_padding_and_lengths():
    batch = TokenBatch.from_sequences([[5, 6, 7], [8]], pad_id=0)
    assert batch.ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.lengths.tolist() == [3, 1]


def test_negative_positions_are_per_row():
    lengths = torch.tensor([3, 1, 5])
    idx, squeeze = resolve_positions(-1, lengths)
    assert squeeze and idx.tolist() == [[2], [0], [4]]
    idx, squeeze = resolve_positions([0, -1], lengths)
    assert not squeeze and idx.tolist() == [[0, 2], [0, 0], [0, 4]]


def test_position_beyond_a_row_names_row_and_range():
    with pytest.raises(
        ValueError,
        match=r"position 3 is beyond the sequence of row 1 \(length 2\); valid positions are -2\.\.1",
    ):
        resolve_positions(3, torch.tensor([5, 2]))
    with pytest.raises(ValueError, match=r"position -4 is beyond"):
        resolve_positions(-4, torch.tensor([3]))


def test_select_positions_gathers_rows_independently():
    x = torch.arange(2 * 4 * 3).reshape(2, 4, 3)
    idx = torch.tensor([[1], [3]])
    out = select_positions(x, idx, squeeze=True)
    assert torch.equal(out, torch.stack([x[0, 1], x[1, 3]]))
    assert out.data_ptr() != x.data_ptr()


def test_as_batch_accepts_lists_and_tensors_and_rejects_floats():
    assert as_batch([1, 2, 3]).ids.shape == (1, 3)
    assert as_batch(torch.tensor([[1, 2], [3, 4]])).lengths.tolist() == [2, 2]
    with pytest.raises(ValueError, match="integer tensor"):
        as_batch(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="empty"):
        as_batch([[1], []])


def test_vocab_check_ignores_padding_but_not_real_tokens():
    check_vocab(TokenBatch.from_sequences([[1, 2], [3]], pad_id=0), vocab_size=4)
    with pytest.raises(ValueError, match=r"token id 9 is out of range: valid ids are 0\.\.3"):
        check_vocab(TokenBatch.from_sequences([[1, 9]]), vocab_size=4)

"""ShiftedDecoder: the decode-mode grid from one unembedding per residual and per direction."""

import pytest
import torch

from cgar_interp.decoding import ShiftedDecoder


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_shifted_decoder_equals_norm_then_unembed(tiny_handles, backend):
    handle = tiny_handles[backend]
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(5, 64, generator=gen) * 2
    v = torch.randn(64, generator=gen) * 4
    lambdas = torch.tensor([0.0, 0.01, 0.5, 3.0, 100.0])
    decoder = ShiftedDecoder(handle, h)
    want = torch.stack([handle.decode_residual(h + lam * v) for lam in lambdas]).float()
    got = decoder(v, lambdas)
    assert got.shape == (5, 5, 128)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    rows = torch.tensor([4, 1])
    assert torch.equal(decoder(decoder.direction(v), lambdas, rows), got[:, rows])


def test_shifted_decoder_rejects_bad_shapes(tiny_handles):
    with pytest.raises(ValueError, match=r"needs residuals \[n, 64\]; got \(5, 63\)"):
        ShiftedDecoder(tiny_handles["hf"], torch.zeros(5, 63))


def test_gold_probability_equals_query_metrics_gold_mass():
    from cgar_interp.metrics import gold_probability, query_metrics

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 5, 300, generator=gen) * 6  # a grid axis, 5 queries
    label_ids = torch.tensor([7, 11, 250])
    gold = torch.tensor([0, 2, 1, 1, 0])
    expected = query_metrics(logits, label_ids, gold)["gold_mass"]
    got = gold_probability(logits, label_ids[gold])
    assert got.shape == expected.shape == (4, 5)
    assert (got - expected).abs().max() < 1e-7
    direct = torch.softmax(logits.double(), -1)[..., torch.arange(5), label_ids[gold]]
    assert (got - direct).abs().max() < 1e-7


@pytest.mark.parametrize("backend", ["hf", "transformer_lens", "nnsight"])
def test_decode_residuals_joins_small_inputs_and_equals_one_by_one(tiny_handles, backend):
    """The joined unembedding gives each input the logits decode_residual gives it alone, in
    order and shape, whether it shares a group, fills one, or is larger than one."""
    handle = tiny_handles[backend]
    gen = torch.Generator().manual_seed(5)
    shapes = [(3, 4, 64), (2, 64), (7, 64), (30, 64), (1, 1, 64), (5, 64)]
    inputs = [torch.randn(*s, generator=gen) * 3 for s in shapes]
    got = list(handle.decode_residuals(inputs, rows=16))
    assert len(got) == len(inputs)
    for h, logits in zip(inputs, got, strict=True):
        want = handle.decode_residual(h)
        assert logits.shape == (*h.shape[:-1], 128)
        assert (logits - want).abs().max() <= 1e-5 * want.abs().max()
    calls = []
    real = type(handle).decode_residual

    def counting(self, h):
        calls.append(h.shape[0])
        return real(self, h)

    type(handle).decode_residual = counting
    try:
        list(handle.decode_residuals(inputs, rows=16))
    finally:
        type(handle).decode_residual = real
    # 12 + 2 rows, then 7, then the 30-row input alone, then 1 + 5
    assert calls == [14, 7, 30, 6]

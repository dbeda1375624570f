"""KV-cache prefix reuse: shared demonstration prefixes and last-token suffix passes."""

import pytest
import torch

from cgar_interp.capture import capture_many, resume_variants
from cgar_interp.prefix import common_prefix_length, last_token_state, resume_last_token
from cgar_interp.tokens import TokenBatch

BACKENDS = ("hf", "transformer_lens", "nnsight")
SITES = ["resid.0", "resid.1", "resid.2", "attn_pattern.1", "q.1", "k_rep.0", "z.1", "head_out.0"]


@pytest.fixture(scope="module")
def shared_batch():
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 128, (20,), generator=gen).tolist()
    rows = [prefix + torch.randint(3, 128, (3 + i % 4,), generator=gen).tolist() for i in range(7)]
    return TokenBatch.from_sequences(rows)


def test_common_prefix_length():
    batch = TokenBatch.from_sequences([[1, 2, 3, 4], [1, 2, 3, 9, 9], [1, 2, 7]])
    assert common_prefix_length(batch.ids, batch.lengths) == 2
    same = TokenBatch.from_sequences([[1, 2, 3], [1, 2, 3]])
    assert common_prefix_length(same.ids, same.lengths) == 2  # one token left per row


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_prefix_capture_equals_full_prompts(tiny_handles, shared_batch, backend):
    handle = tiny_handles[backend]
    handle.stats.reset()
    full = capture_many(handle, shared_batch, SITES, -1, batch_size=3, shared_prefix=False)
    full_rows = handle.stats.forward_rows
    handle.stats.reset()
    reused = capture_many(handle, shared_batch, SITES, -1, batch_size=3, shared_prefix=True)
    assert handle.stats.forward_rows == full_rows  # every row once (its suffix) ...
    assert handle.stats.prefix_calls == 1  # ... and the shared prefix once
    assert (full.logits - reused.logits).abs().max() < 1e-5
    for site in SITES:
        assert (full[site] - reused[site]).abs().max() < 1e-5, site


def test_shared_prefix_is_off_for_absolute_positions(tiny_handles, shared_batch):
    handle = tiny_handles["hf"]
    out = capture_many(handle, shared_batch, ["resid.1"], [0], batch_size=4)
    direct = handle.capture(shared_batch, ["resid.1"], positions=[0])["resid.1"]
    assert torch.equal(out["resid.1"], direct)


@pytest.mark.parametrize("backend", BACKENDS)
def test_last_token_suffix_equals_full_resume(tiny_handles, backend):
    handle = tiny_handles[backend]
    ids = torch.randint(3, 128, (3, 9), generator=torch.Generator().manual_seed(1))
    state = last_token_state(handle, ids)
    direct = handle.capture(ids, [f"resid.{layer}" for layer in range(3)], positions=-1)
    for layer in range(3):
        assert (state.resid[layer] - direct[f"resid.{layer}"]).abs().max() < 1e-5
        shifts = torch.randn(4, 3, 64, generator=torch.Generator().manual_seed(layer))
        got = resume_last_token(handle, state, layer, state.resid[layer][None] + shifts)
        every = handle.capture(ids, [f"resid.{layer}"], positions=None)[f"resid.{layer}"]
        for k in range(4):
            patched = every.clone()
            patched[:, -1] += shifts[k]
            assert (got[k] - handle.resume(patched, layer, positions=-1)).abs().max() < 1e-5


def test_resume_variants_keeps_the_callers_row_order(tiny_handles):
    handle = tiny_handles["hf"]
    rows = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14], [15, 16, 17]]
    batch = TokenBatch.from_sequences(rows)
    out = resume_variants(
        handle,
        batch,
        [1],
        lambda layer, h, idx: h[None],
        lambda logits, idx: {
            "top": logits.argmax(-1).double(),
            "row": idx.double().expand(logits.shape[0], -1),
        },
        batch_size=2,
    )
    assert out[1]["row"][0].tolist() == [0.0, 1.0, 2.0, 3.0]
    expected = handle.logits(batch, positions=-1).argmax(-1)
    assert out[1]["top"][0].tolist() == expected.double().tolist()


@pytest.mark.parametrize("rows", [1, 14])
def test_resume_variants_decodes_many_variants_in_slices(tiny_handles, shared_batch, rows):
    """A layer's variants decoded and scored in slices of about DECODE_ROWS rows (so one
    slice's full-vocabulary logits exist at a time) give what one decode of them all gives."""
    import cgar_interp.capture as capture

    handle = tiny_handles["hf"]
    run = capture_many(handle, shared_batch, ["resid.1", "resid.2"], -1, keep_states=True)
    shifts = torch.randn(7, 64, generator=torch.Generator().manual_seed(4))

    def go():
        return resume_variants(
            handle,
            shared_batch,
            [1, 2],
            lambda layer, h, idx: h[None] + layer * shifts[:, None],
            lambda logits, idx: {"logits": logits.float(), "top": logits.argmax(-1).double()},
            states=run.states,
        )

    whole = go()
    old = capture.DECODE_ROWS
    capture.DECODE_ROWS = rows  # one variant a slice, or two
    try:
        sliced = go()
    finally:
        capture.DECODE_ROWS = old
    for layer in (1, 2):
        assert sliced[layer]["logits"].shape == whole[layer]["logits"].shape == (7, 7, 128)
        torch.testing.assert_close(sliced[layer]["logits"], whole[layer]["logits"])
        assert torch.equal(sliced[layer]["top"], whole[layer]["top"])


def test_capture_many_without_logits(tiny_handles, shared_batch):
    out = capture_many(tiny_handles["hf"], shared_batch, ["resid.1"], -1, with_logits=False)
    assert out.logits is None and tuple(out["resid.1"].shape) == (7, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kept_cache_suffix_passes_equal_full_patched_prompts(tiny_handles, shared_batch, backend):
    """The path of patch mode and task vectors, against the plain path on the same backend.

    The capture pass runs the shared prefix once and fills a KV cache through the backend's
    own engine (TransformerBridge, nnsight trace or HF hooks); one-token suffix passes then
    resume from it. Each result must equal a full forward of the whole prompt through the
    backend with the same patch. On transformers 5.24 the bridge never saw the cache
    (``cache=`` replaced ``past_key_values``): logits were 0.4 off with no error.
    """
    handle = tiny_handles[backend]
    layers = [0, 1, 2]
    run = capture_many(
        handle,
        shared_batch,
        [f"resid.{layer}" for layer in layers],
        -1,
        batch_size=3,
        shared_prefix=True,
        keep_states=True,
    )
    plain = handle.logits(shared_batch, positions=-1)  # full prompts, no cache
    assert (run.logits - plain).abs().max() < 1e-5
    shifts = torch.cat([torch.zeros(1, 64), torch.randn(2, 64, generator=torch.Generator())])
    out = resume_variants(
        handle,
        shared_batch,
        layers,
        lambda layer, h, idx: h[None] + shifts[:, None],
        lambda logits, idx: {f"v{j}": logits[..., j] for j in range(logits.shape[-1])},
        states=run.states,
    )
    for layer in layers:
        got = torch.stack([out[layer][f"v{j}"] for j in range(128)], dim=-1)  # [3, n, vocab]
        assert (got[0] - plain).abs().max() < 1e-5, f"lambda = 0 at layer {layer} != zero-shot"
        for k in range(1, len(shifts)):
            full = handle.run_with_patch(
                shared_batch, f"resid.{layer}", -1, shifts[k], logits_positions=-1
            ).logits
            assert (got[k] - full).abs().max() < 1e-5, (layer, k)


@pytest.mark.parametrize("backend", BACKENDS)
def test_suffix_patches_per_variant_equal_full_patched_forwards(tiny_handles, backend):
    """Variants as tokens of one row, each with its own heads' z replaced inside the suffix
    blocks (head ablation), against one full z-patched forward per variant."""
    from cgar_interp.models import Patch

    handle = tiny_handles[backend]
    gen = torch.Generator().manual_seed(1)
    rows = [[1, *torch.randint(3, 128, (10 + i,), generator=gen).tolist()] for i in range(4)]
    batch = TokenBatch.from_sequences(rows)  # unequal lengths: padded, masked in the suffix
    run = capture_many(handle, batch, ["resid.0"], -1, batch_size=3, keep_states=True)
    n_heads = handle.arch.n_heads
    mask = torch.zeros(3, n_heads, dtype=torch.bool)  # variant 0 unpatched
    mask[1, 0] = True
    mask[2, :2] = True
    value = torch.randn(n_heads, handle.arch.d_head, generator=gen)

    def suffix(z):  # [rows, 3 variants, n_heads, d_head]
        return torch.where(mask[None, :, :, None], value.to(z.dtype), z)

    got = resume_variants(
        handle,
        batch,
        [0],
        lambda _, h, idx: h[None].expand(3, *h.shape),
        lambda logits, idx: {"logits": logits.float()},
        states=run.states,
        patches=[Patch("z.1", -1, suffix)],
    )[0]["logits"]
    for v in range(3):

        def full(z, v=v):  # [batch, 1 position, n_heads, d_head]
            return torch.where(mask[v][None, None, :, None], value.to(z.dtype), z)

        expected = handle.run_with_patches(batch, [Patch("z.1", -1, full)], logits_positions=-1)
        assert (got[v] - expected.logits.float()).abs().max() < 1e-5, (backend, v)


def test_suffix_patches_refuse_other_sites_and_positions(tiny_handles):
    from cgar_interp.models import Patch

    handle = tiny_handles["hf"]
    state = last_token_state(handle, torch.tensor([[1, 5, 6, 7]]))
    h = state.resid[0][None]
    with pytest.raises(ValueError, match="suffix pass patches z, attn_out, mlp_out; got resid.1"):
        resume_last_token(handle, state, 0, h, [Patch("resid.1", -1, lambda x: x)])
    with pytest.raises(ValueError, match="positions 0 \\(valid: -1\\)"):
        resume_last_token(handle, state, 0, h, [Patch("z.1", 0, lambda x: x)])
    # the hooks are gone after an error: a plain suffix pass is the unpatched one again
    again = resume_last_token(handle, state, 0, h)
    assert (
        again[0] - handle.logits(TokenBatch.from_sequences([[1, 5, 6, 7]]), positions=-1)
    ).abs().max() < 1e-5


def _kept_state(handle, gen, first: int, step: int):
    """Three padded prompts of unequal length (BOS + random tokens), captured at layers 0, 1
    and n_layers with their KV cache kept: ``(batch, the state's row order, state)``."""
    rows = [
        [1, *torch.randint(3, 128, (first + step * i,), generator=gen).tolist()] for i in range(3)
    ]
    batch = TokenBatch.from_sequences(rows)
    sites = [f"resid.{layer}" for layer in (0, 1, handle.n_layers)]
    run = capture_many(handle, batch, sites, -1, batch_size=3, keep_states=True)
    ((idx, state),) = run.states
    return batch, idx, state


@pytest.mark.parametrize("backend", BACKENDS)
def test_staggered_entries_equal_full_patched_forwards(tiny_handles, backend):
    """Variants joining one pass at layers 0, 1 and n_layers (decode only), unequal counts,
    padded rows: each equals a full forward with that residual patch."""
    from cgar_interp.models import Patch
    from cgar_interp.prefix import resume_staggered

    handle = tiny_handles[backend]
    n_layers = handle.n_layers
    gen = torch.Generator().manual_seed(7)
    batch, idx, state = _kept_state(handle, gen, first=6, step=3)
    d = handle.arch.d_model
    shifts = {0: torch.randn(2, d, generator=gen), 1: torch.randn(3, d, generator=gen)}
    shifts[n_layers] = torch.randn(1, d, generator=gen)
    entries = {
        layer: state.resid[layer][None].float() + shift[:, None, :]
        for layer, shift in shifts.items()
    }
    final = resume_staggered(handle, state, entries)
    assert {k: tuple(v.shape) for k, v in final.items()} == {
        layer: (len(shift), 3, d) for layer, shift in shifts.items()
    }
    for layer, shift in shifts.items():
        logits = handle.decode_residual(final[layer])
        for v in range(len(shift)):
            value = shift[v].expand(3, d)
            full = handle.run_with_patch(batch, f"resid.{layer}", -1, value, logits_positions=-1)
            got = logits[v][torch.argsort(idx)]
            assert (got.float() - full.logits.float()).abs().max() < 1e-4, (backend, layer, v)
    with pytest.raises(ValueError, match="out of range"):
        resume_staggered(handle, state, {n_layers + 1: entries[0]})
    with pytest.raises(ValueError, match="single entry layer"):
        resume_staggered(handle, state, entries, [Patch("z.0", -1, lambda z: z)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_full_equals_the_staggered_cache_pass(tiny_handles, backend):
    """What a remote model runs (every variant a full forward of its prompt, resid patched at
    the last position) equals the KV-cache suffix pass: entries at several layers, chunked
    into requests of a few rows, and suffix patches seen per variant."""
    from cgar_interp.models import Patch
    from cgar_interp.prefix import resume_full, resume_staggered

    handle = tiny_handles[backend]
    n_layers = handle.n_layers
    gen = torch.Generator().manual_seed(11)
    batch, idx, state = _kept_state(handle, gen, first=4, step=2)
    ordered = batch.select(idx)  # the state's rows, in its order
    d = handle.arch.d_model
    entries = {
        layer: state.resid[layer][None].float() + torch.randn(k, 1, d, generator=gen)
        for layer, k in ((0, 2), (1, 3), (n_layers, 1))
    }
    want = resume_staggered(handle, state, entries)
    for max_rows in (None, 4):  # one forward pass, or chunks of one variant (3 rows) each
        got = resume_full(handle, ordered, entries, max_rows=max_rows)
        for layer in entries:
            assert (got[layer] - want[layer].float()).abs().max() < 1e-4, (backend, layer)

    mask = torch.tensor([[True, False, False, False], [False, True, True, False]])
    value = torch.randn(4, handle.arch.d_head, generator=gen)

    def ablate(z):  # [b, n_var, n_heads, d_head], as inside a suffix pass
        return torch.where(mask[None, :, :, None], value.to(z.dtype), z)

    single = {1: entries[1][:2]}
    patches = [Patch("z.1", -1, ablate)]
    want = resume_staggered(handle, state, single, patches)[1]
    got = resume_full(handle, ordered, single, patches, max_rows=3)[1]  # patches: one pass
    assert (got - want.float()).abs().max() < 1e-4, backend

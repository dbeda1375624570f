"""Attribution patching of head mediation: the grad pass on every backend, the estimate
against finite differences and against the exact AIE, and attribution+verify's bookkeeping."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from cgar_interp.capture import capture_many
from cgar_interp.metrics import GoldProbability, gold_probability
from cgar_interp.models import Patch
from cgar_interp.probes.head_mediation import (
    HeadMediationConfig,
    attribution_sites,
    head_attribution,
    top_k_recall,
    verify_heads,
)
from cgar_interp.tokens import TokenBatch
from tests.test_head_mediation import _run

BACKENDS = ("hf", "transformer_lens", "nnsight")


@pytest.fixture(scope="module")
def prompts():
    gen = torch.Generator().manual_seed(3)
    rows = [[1, *torch.randint(3, 128, (4 + i % 3,), generator=gen).tolist()] for i in range(5)]
    return TokenBatch.from_sequences(rows)


GOLD = torch.tensor([7, 9, 11, 13, 15])


objective = GoldProbability(GOLD)


def _prob_with(handle, prompts, layer, fn):
    logits = handle.run_with_patches(
        prompts, [Patch(f"z.{layer}", -1, fn)], logits_positions=-1
    ).logits
    return gold_probability(logits.float(), GOLD).double()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences(tiny_handles, prompts, backend):
    """dP(gold)/dz at the last position, from one grad pass (batch of 2, padded), against
    central differences of full forward passes, coordinate by coordinate."""
    handle = tiny_handles[backend]
    run = capture_many(
        handle, prompts, ["z.0"], -1, batch_size=2, grad_sites=["z.0", "z.1"], objective=objective
    )
    assert set(run.grads) == {"z.0", "z.1"} and run.grads["z.0"].shape == (5, 4, 16)
    eps = 1e-2
    gen = torch.Generator().manual_seed(0)
    for layer in (0, 1):
        for _ in range(4):
            head, k = (
                int(torch.randint(4, (1,), generator=gen)),
                int(torch.randint(16, (1,), generator=gen)),
            )

            def shift(s, head=head, k=k):
                def fn(z):
                    z = z.clone()
                    z[:, 0, head, k] += s
                    return z

                return fn

            fd = (
                _prob_with(handle, prompts, layer, shift(eps))
                - _prob_with(handle, prompts, layer, shift(-eps))
            ) / (2 * eps)
            got = run.grads[f"z.{layer}"][:, head, k].double()
            assert torch.allclose(got, fd, atol=2e-5, rtol=2e-2), (backend, layer, head, k)


def test_gradients_are_the_same_on_every_backend(tiny_handles, prompts):
    grads = {
        b: capture_many(
            tiny_handles[b], prompts, [], -1, grad_sites=["z.1"], objective=objective
        ).grads["z.1"]
        for b in BACKENDS
    }
    for b in BACKENDS:
        assert (grads[b] - grads["hf"]).abs().max() < 1e-6, b


def test_a_grad_pass_reads_and_keeps_what_a_plain_pass_does(tiny_handles, prompts):
    handle = tiny_handles["hf"]
    sites = ["resid_mid.1", "head_out.1", "z.1"]
    plain = capture_many(handle, prompts, sites, -1, batch_size=2, keep_states=True)
    grad = capture_many(
        handle,
        prompts,
        sites,
        -1,
        batch_size=2,
        keep_states=True,
        grad_sites=["z.1"],
        objective=objective,
    )
    assert (plain.logits - grad.logits).abs().max() < 1e-6
    for site in sites:
        assert (plain[site] - grad[site]).abs().max() < 1e-6
        assert not grad[site].requires_grad
    for (_, a), (_, b) in zip(plain.states, grad.states, strict=True):
        for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
            assert not lb.keys.requires_grad and (la.keys - lb.keys).abs().max() < 1e-6


def test_gradient_at_a_derived_site_is_refused(tiny_handles, prompts):
    with pytest.raises(ValueError, match="head_out.0.*patchable"):
        tiny_handles["hf"].gradients(prompts, ["head_out.0"], objective)


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimate_is_the_linearisation_of_the_exact_effect(tiny_handles, prompts, backend):
    """The estimate is exact to first order: for replacements t * (zbar - z) the exact effect
    divided by t tends to the estimate as t -> 0 (on every head), and the error shrinks as t^2."""
    handle = tiny_handles[backend]
    run = capture_many(
        handle,
        prompts,
        attribution_sites([0, 1]),
        -1,
        grad_sites=attribution_sites([0, 1]),
        objective=objective,
    )
    zbar = {b: run[f"z.{b}"].float().mean(0) for b in (0, 1)}
    estimate = head_attribution(run, [0, 1], zbar)
    base = _prob_with(handle, prompts, 0, lambda z: z)
    for b in (0, 1):
        for h in range(4):
            errors = []
            for t in (0.1, 0.05):

                def fn(z, h=h, b=b, t=t):
                    z = z.clone()
                    z[:, 0, h] = z[:, 0, h] + t * (zbar[b][h].to(z.dtype) - z[:, 0, h])
                    return z

                exact = (_prob_with(handle, prompts, b, fn) - base) / t
                errors.append((exact - estimate[b][h]).abs().max().item())
            scale = estimate[b][h].abs().max().item() + 1e-6
            assert errors[1] < 0.2 * scale + 1e-6, (backend, b, h, errors, scale)
            assert errors[1] < errors[0] * 0.75 + 1e-7, (backend, b, h, errors)


def test_verify_heads_and_recall():
    est = {
        0: torch.tensor([[0.5, 0.5], [0.1, 0.1], [0.0, 0.0]]),
        1: torch.tensor([[0.4], [0.3], [0.2]]),
    }
    est[1] = est[1].expand(3, 2)
    chosen = verify_heads(est, 2, 2, np.random.default_rng(0))
    assert [bh for bh, why in sorted(chosen.items()) if why == "top"] == [(0, 0), (1, 0)]
    assert sum(why == "random" for why in chosen.values()) == 2
    assert verify_heads(est, 2, 2, np.random.default_rng(0)) == chosen  # seeded
    assert len(verify_heads(est, 100, 5, np.random.default_rng(0))) == 6  # every head, once
    assert top_k_recall(np.arange(5.0), np.arange(5.0), 3) == 1.0
    assert top_k_recall(np.arange(5.0), -np.arange(5.0), 2) == 0.0


@pytest.fixture(scope="module")
def verified(tiny_handles):
    config = HeadMediationConfig(
        top_k=2,
        n_random=3,
        max_queries=6,
        n_permutations=200,
        method="attribution+verify",
        verify_top=3,
        verify_random=2,
    )
    exact = replace(config, method="exact")
    return _run(tiny_handles["hf"], config)[0], _run(tiny_handles["hf"], exact)[0]


def test_verified_heads_carry_the_exact_aie(verified):
    tables, exact = verified
    heads, ref = tables["head_mediation_heads"], exact["head_mediation_heads"]
    assert heads.verified.sum() == 5 and (heads.verified_as == "top").sum() == 3
    ver = heads[heads.verified]
    merged = ver.merge(ref, on=["layer", "head"], suffixes=("", "_ref"))
    assert np.allclose(merged.aie, merged.aie_ref, atol=1e-7)
    assert np.allclose(merged.aie_fit, merged.aie_fit_ref, atol=1e-7)
    assert heads[~heads.verified].aie.isna().all() and np.isfinite(heads.aie_estimate).all()
    # the top-AIE heads: the largest exact fit AIE among the verified heads
    want = ver.sort_values(["aie_fit", "layer", "head"], ascending=[False, True, True]).head(2)
    assert set(heads[heads.top_aie].name) == set(want.name)
    join = tables["head_mediation_join"].iloc[0]
    assert join.method == "attribution+verify" and join.n_verified == 5
    from scipy.stats import spearmanr

    assert join.attribution_spearman == pytest.approx(
        spearmanr(ver.aie_estimate, ver.aie).statistic
    )
    assert 0 <= join.attribution_top_k_recall <= 1 and "verified" in join.top_aie_selected_by
    assert join.spearman_aie == "aie_estimate"
    # the tidy table holds both metrics; the exact rows only for the verified heads
    aie = tables["head_mediation"]
    aie = aie[aie.part == "aie"]
    assert (aie.metric == "aie").sum() == 5 and (aie.metric == "aie_estimate").sum() == 8


def test_attribution_alone_chooses_by_the_estimate(tiny_handles):
    config = HeadMediationConfig(
        top_k=2, n_random=2, max_queries=6, n_permutations=100, method="attribution"
    )
    tables, _ = _run(tiny_handles["hf"], config)
    heads = tables["head_mediation_heads"]
    assert heads.aie.isna().all() and not heads.verified.any()
    want = heads.sort_values(["aie_estimate_fit", "layer", "head"], ascending=[False, True, True])
    assert set(heads[heads.top_aie].name) == set(want.head(2).name)
    assert set(heads.rank_aie_by) == {"aie_estimate_fit"}


def test_method_is_validated():
    with pytest.raises(ValueError, match="method='atp'.*exact, attribution, attribution\\+verify"):
        HeadMediationConfig(method="atp")
    with pytest.raises(ValueError, match="verify_top=0"):
        HeadMediationConfig(verify_top=0)


def test_patched_verification_equals_the_resumed_one(tiny_handles):
    """verify_patched (z patched in full passes: what a remote model runs) gives the exact
    AIEs head_effects gives by resuming the grad pass's KV caches."""
    from cgar_interp.probes import ProbeContext
    from cgar_interp.probes.head_mediation import effect_sites, head_effects, verify_patched
    from tests.test_head_mediation import labelled_inputs

    handle = tiny_handles["transformer_lens"]
    inputs = labelled_inputs(n=9)
    ctx = ProbeContext(handle, inputs, (), n_boot=0, batch_size=4, keep_states=True)
    queries = inputs.eval[:5]
    blocks = (0, 1)
    fit = inputs.icl.select(inputs.fit)
    zbar = {
        b: v.float().mean(0)
        for b, v in capture_many(handle, fit, attribution_sites(blocks), -1).captures.items()
    }
    zbar = {int(name.split(".")[1]): v for name, v in zbar.items()}
    a = handle.head_outputs(zbar)
    heads = {0: [1, 3], 1: [2]}
    run = ctx.read_gradients(
        "icl_permuted",
        queries,
        effect_sites(blocks) + attribution_sites(blocks),
        attribution_sites(blocks),
        keep_states=True,
    )
    resumed, _ = head_effects(
        handle,
        inputs.icl_permuted.select(queries),
        queries,
        blocks,
        a,
        ctx.gold_probability,
        4,
        run=run,
        heads=heads,
    )
    patched = verify_patched(ctx, "icl_permuted", queries, heads, zbar, blocks)
    for b in blocks:
        same = torch.isnan(resumed[b]) == torch.isnan(patched[b])
        assert same.all()
        ok = ~torch.isnan(resumed[b])
        assert (resumed[b][ok] - patched[b][ok]).abs().max() < 1e-5, b
    assert torch.isnan(patched[1][0]).all() and not torch.isnan(patched[1][2]).any()
    # a_lh as W_O of the mean z equals the mean head output
    head_out = capture_many(handle, fit, ["head_out.1"], -1)["head_out.1"].float().mean(0)
    assert (a[1] - head_out).abs().max() < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_gradients_equal_the_full_pass(tiny_handles, prompts, backend):
    """The local shortcut (the last token again over the kept cache, with a backward) gives
    the gradient of a full forward and backward pass, at every block, padded rows included."""
    from cgar_interp.capture import resume_gradients

    handle = tiny_handles[backend]
    full = capture_many(
        handle, prompts, [], -1, batch_size=2, grad_sites=["z.0", "z.1"], objective=objective
    ).grads
    kept = capture_many(handle, prompts, ["resid.0"], -1, batch_size=2, keep_states=True)
    cached = resume_gradients(handle, kept.states, [0, 1], objective)
    for site in ("z.0", "z.1"):
        scale = full[site].abs().max()
        assert (cached[site] - full[site]).abs().max() < 1e-5 * scale + 1e-9, (backend, site)


@pytest.mark.parametrize("slots", [1, 14])
def test_cache_gradients_in_row_chunks_equal_the_whole_batch(tiny_handles, prompts, slots):
    """Gradient suffix passes cut into row chunks (GRAD_PASS_SLOTS small: one row, or a few,
    each with its cache cut to its own widest row) give the gradients of the whole batch's
    pass, and of a full forward and backward pass."""
    import cgar_interp.capture as capture
    from cgar_interp.capture import resume_gradients

    handle = tiny_handles["hf"]
    kept = capture_many(handle, prompts, ["resid.0"], -1, batch_size=4, keep_states=True)
    assert any(len(rows) > 1 for rows, _ in kept.states)
    whole = resume_gradients(handle, kept.states, [0, 1], objective)
    full = capture_many(
        handle, prompts, [], -1, batch_size=4, grad_sites=["z.0", "z.1"], objective=objective
    ).grads
    old = capture.GRAD_PASS_SLOTS
    capture.GRAD_PASS_SLOTS = slots
    try:
        chunked = resume_gradients(handle, kept.states, [0, 1], objective)
    finally:
        capture.GRAD_PASS_SLOTS = old
    for site in ("z.0", "z.1"):
        scale = full[site].abs().max()
        assert (chunked[site] - whole[site]).abs().max() < 1e-6 * scale + 1e-9, (slots, site)
        assert (chunked[site] - full[site]).abs().max() < 1e-5 * scale + 1e-9, (slots, site)

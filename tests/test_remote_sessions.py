"""Fewer round trips: independent remote passes grouped into one NDIF request (an nnsight session).

``ModelHandle.run_many`` hands independent passes to ``Backend.forward_many``; on NDIF the
nnsight backend sends consecutive ones as one ``lm.session(remote=True)`` whose body opens a
trace per pass. Every request here goes through nnsight's serializer to the fake server of
``tests/test_remote.py``, which runs it as NDIF would, in a fresh-process environment:
``cgar_interp`` unimportable, its source files absent, nnsight's source caches empty. So:

- grouped results equal the ungrouped ones exactly, and the local model's within the
  tolerances of ``tests/test_remote_probes.py``;
- the number of requests drops by what the grouping predicts;
- each session payload deserializes with ``cgar_interp`` hidden (and only because it is
  shipped by value);
- nnsight's own local simulation (``remote="local"``) runs the same session;
- ``--dry-run`` reports the requests and bytes with and without grouping.

Sockets are disabled for every test in this file.
"""

import math
import warnings

import pytest
import torch

from cgar_interp.backends.base import PassRequest, session_groups
from cgar_interp.capture import capture_many, resume_variants
from cgar_interp.config import ConfigError
from cgar_interp.metrics import GoldProbability
from cgar_interp.models import Patch
from cgar_interp.runner import RemotePlan
from cgar_interp.suite import parse_suite
from cgar_interp.tokens import TokenBatch
from tests.test_remote import (  # noqa: F401  (fixtures)
    SITES,
    decode,
    ndif,
    ndif_env,
    no_network,
    remote,
    server_environment,
    weightless_dir,
)
from tests.test_remote_runner import server, weightless_embedded  # noqa: F401  (fixtures)

ATOL, RTOL = 1e-5, 5e-5  # tests/test_remote_probes.py


def prompts(n: int, seed: int = 1) -> TokenBatch:
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 128, (3 + (i % 4),), generator=gen).tolist() for i in range(n)]
    return TokenBatch.from_sequences(rows)


def kinds(sent) -> list[str]:
    """What each request was: a session (nnsight's plain ``Tracer`` around several traces)
    or a single trace."""
    out = []
    for item in sent:
        tracer, _ = decode(item["blob"], item["request"].compress)
        out.append("session" if type(tracer).__name__ == "Tracer" else "trace")
    return out


def assert_close(got, want):
    torch.testing.assert_close(got.float(), want.float(), atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------- capture batches
def test_capture_many_batches_go_as_one_session(remote, tiny_handles, ndif):
    batch = prompts(6)
    local = capture_many(tiny_handles["nnsight"], batch, SITES, -1, batch_size=2)
    reference = capture_many(tiny_handles["hf"], batch, SITES, -1, batch_size=2)

    ungrouped = capture_many(remote.with_options(remote_session_rows=0), batch, SITES, batch_size=2)
    assert kinds(ndif.sent) == ["trace"] * 3  # one request per batch
    ndif.sent.clear()
    grouped = capture_many(remote, batch, SITES, -1, batch_size=2)
    assert kinds(ndif.sent) == ["session"]  # the three batches in one request

    for site in SITES:
        assert torch.equal(grouped[site], ungrouped[site]), site
        assert torch.equal(grouped[site], local[site]), site  # the fake server's model is local's
        assert_close(grouped[site], reference[site])
    assert torch.equal(grouped.logits, ungrouped.logits)
    assert_close(grouped.logits, reference.logits)
    assert remote.stats.forward_calls == 6 and remote.stats.forward_rows == 12


def test_the_caps_bound_each_session(remote, tiny_handles, ndif):
    batch = prompts(6)
    want = capture_many(tiny_handles["nnsight"], batch, ["resid.1"], -1, batch_size=2)
    # 4 rows per session: batches of 2 rows go two by two; the third alone, as a plain trace
    capped = remote.with_options(remote_session_rows=4)
    got = capture_many(capped, batch, ["resid.1"], -1, batch_size=2)
    assert kinds(ndif.sent) == ["session", "trace"]
    assert torch.equal(got["resid.1"], want["resid.1"])
    # the byte cap: one batch's result (resid.1 and the last position's logits) and a little
    rows, d, vocab = 2, remote.arch.d_model, remote.arch.vocab_size
    one = rows * (d + vocab) * remote.dtype.itemsize
    ndif.sent.clear()
    got = capture_many(
        remote.with_options(remote_session_mb=1.5 * one / 1e6), batch, ["resid.1"], batch_size=2
    )
    assert kinds(ndif.sent) == ["trace"] * 3
    ndif.sent.clear()
    got = capture_many(
        remote.with_options(remote_session_mb=2.5 * one / 1e6), batch, ["resid.1"], batch_size=2
    )
    assert kinds(ndif.sent) == ["session", "trace"]
    assert torch.equal(got["resid.1"], want["resid.1"])


def test_grad_passes_go_as_one_session(remote, tiny_handles, ndif):
    """The backward inside each trace (its ``with`` in a function shipped by source) runs on
    the server too."""
    batch = prompts(6, seed=2)
    objective = GoldProbability(torch.tensor([5, 9, 11, 17, 23, 42]))
    args = dict(batch_size=2, grad_sites=["z.0", "resid.1"], objective=objective)
    local = capture_many(tiny_handles["nnsight"], batch, ["resid.1"], -1, **args)
    reference = capture_many(tiny_handles["hf"], batch, ["resid.1"], -1, **args)
    ungrouped = capture_many(remote.with_options(remote_session_rows=0), batch, ["resid.1"], **args)
    assert kinds(ndif.sent) == ["trace"] * 3
    ndif.sent.clear()
    grouped = capture_many(remote, batch, ["resid.1"], -1, **args)
    assert kinds(ndif.sent) == ["session"]
    for name in ("z.0", "resid.1"):
        assert grouped.grads[name].abs().sum() > 0, name
        assert torch.equal(grouped.grads[name], ungrouped.grads[name]), name
        assert torch.equal(grouped.grads[name], local.grads[name]), name
        assert_close(grouped.grads[name], reference.grads[name])
    assert torch.equal(grouped.logits, local.logits)


# ----------------------------------------------------------------------------- variant passes
@pytest.mark.parametrize("patched", [False, True])
def test_variant_passes_go_as_few_sessions(remote, tiny_handles, ndif, patched):
    """resume_variants on a remote model: every variant a patched full forward; the chunks
    of every batch's variants are one stream of independent passes."""
    batch = prompts(4, seed=3)
    layers = [0, 1, 2]
    gen = torch.Generator().manual_seed(4)
    shift = torch.randn(remote.arch.d_model, generator=gen)
    patches = [Patch("z.1", -1, lambda z: 0.5 * z)] if patched else []

    def variants(layer, h, idx):
        return torch.stack([h, h + shift, h - (layer + 1) * shift])  # [3, b, d]

    def score(logits, idx):
        return {"logits": logits.float()}

    def run(handle):  # as a probe runs it: from the capture pass's kept states
        states = capture_many(
            handle, batch, ["resid.0", "resid.1", "resid.2"], -1, batch_size=2, keep_states=True
        ).states  # a local model's hold their KV caches; a remote model's none
        return resume_variants(
            handle, batch, layers, variants, score, states=states, patches=patches
        )

    local = run(tiny_handles["nnsight"])  # KV-cache suffix passes
    # 2 prompt rows per batch, at most 4 copies per pass: 2 variants per pass
    small = remote.with_options(remote_rows=4)
    small.readout()  # fetched once per model (one request), before counting
    ndif.sent.clear()
    ungrouped = run(small.with_options(remote_session_rows=0))
    single = kinds(ndif.sent)
    ndif.sent.clear()
    grouped = run(small)
    sessions = kinds(ndif.sent)
    # 2 capture passes; variant passes per batch of 2 prompts: patched, one pass per layer
    # (its 3 variants at once); else 9 variants, 2 per pass
    per_batch = 3 if patched else 5
    assert single == ["trace"] * (2 + 2 * per_batch)
    # grouped: the capture batches in one session, every variant pass of both batches in one
    assert sessions == ["session"] * 2
    for layer in layers:
        got, want = grouped[layer]["logits"], local[layer]["logits"]
        assert torch.equal(got, ungrouped[layer]["logits"]), layer
        assert_close(got, want)
    # the unchanged variant entering at layer 0 is the plain forward, unless the patch acts
    plain = capture_many(tiny_handles["nnsight"], batch, [], -1, batch_size=4).logits.float()
    same = torch.allclose(grouped[0]["logits"][0], plain, atol=ATOL, rtol=RTOL)
    assert same != patched


# ----------------------------------------------------------------------------- payloads
def test_each_session_deserializes_without_cgar_interp(remote, ndif):
    """The fake server already ran every session with cgar_interp hidden; here each payload
    is decoded again in that environment, and without by-value shipping it cannot be."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    from nnsight.schema.request import RequestModel

    batch = prompts(6)
    capture_many(remote, batch, ["resid.1"], -1, batch_size=2)
    assert kinds(ndif.sent) == ["session"]
    objects = ndif.server_model._remoteable_persistent_objects()
    with server_environment():
        import linecache

        nnsight_file = remote.backend.forward.__code__.co_filename
        assert linecache.getlines(nnsight_file) == []  # the server has no cgar_interp files
        for item in ndif.sent:
            restored = RequestModel.deserialize(
                item["blob"], objects, compress=item["request"].compress
            )
            source = linecache.getlines(nnsight_file)  # what travelled: the session's body
            assert type(restored).__name__ == "Tracer"
            assert any("lm.trace(" in line for line in source)
            assert "traced_pass" in restored.info.frame.f_globals
    _PICKLE_BY_VALUE_MODULES.discard("cgar_interp")
    try:
        with pytest.raises(ModuleNotFoundError, match="cgar_interp"):
            capture_many(remote, batch, ["resid.1"], -1, batch_size=2)
    finally:
        _PICKLE_BY_VALUE_MODULES.add("cgar_interp")


def test_nnsight_local_simulation_runs_a_session(tiny_handles):
    """``lm.session(remote="local")``: nnsight serializes the session as for NDIF, deserializes
    it with modules that are not installed hidden, and runs it on the local model."""
    handle = tiny_handles["nnsight"]
    backend = handle.backend
    batch = prompts(4, seed=5)
    requests = []
    for rows in (slice(0, 2), slice(2, 4)):
        ids = batch.ids[rows]
        grad = rows.start == 2  # one plain pass and one grad pass
        requests.append(
            PassRequest(
                ids,
                {handle.site("resid.1"): lambda x: x[:, -1]},
                {},
                logits_index=torch.full((2, 1), ids.shape[1] - 1),
                grad_reads={handle.site("z.0"): lambda x: x[:, -1]} if grad else None,
                objective=(lambda logits: logits[:, 0, 7]) if grad else None,
            )
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simulated = backend._session(requests, remote="local")
    for request, got in zip(requests, simulated, strict=True):
        want = backend.run_pass(request)
        assert torch.equal(got.logits, want.logits)
        for site in request.reads:
            assert torch.equal(got.results[site], want.results[site])
        for site in request.grad_reads or {}:
            assert got.grads[site].abs().sum() > 0
            assert torch.equal(got.grads[site], want.grads[site])


# ----------------------------------------------------------------------------- settings
def test_session_groups_respect_both_caps():
    def request(rows, size):
        return PassRequest(torch.zeros(rows, 3, dtype=torch.long), {}, result_bytes=size)

    requests = [request(2, 10), request(2, 10), request(5, 1), request(1, 100), request(1, 1)]
    sizes = [[r.rows for r in g] for g in session_groups(requests, 4)]
    assert sizes == [[2, 2], [5], [1, 1]]  # a request over the cap goes alone
    sizes = [[r.rows for r in g] for g in session_groups(requests, 100, 25)]
    assert sizes == [[2, 2, 5], [1], [1]]
    assert [len(g) for g in session_groups(requests, 100, math.inf)] == [5]
    with pytest.raises(ValueError, match="max_rows"):
        next(session_groups(requests, 0))


def test_session_settings_are_checked(remote):
    with pytest.raises(ValueError, match="remote_session_rows must be an int >= 0"):
        remote.with_options(remote_session_rows=-1)
    with pytest.raises(ValueError, match="remote_session_mb must be a number > 0"):
        remote.with_options(remote_session_mb=0)
    with pytest.raises(ValueError, match="session_rows must be an int >= 0"):
        remote.backend.forward_many([], session_rows=1.5)
    assert remote.remote_session_rows == 2048 and remote.remote_session_mb == 256.0
    other = remote.with_options(remote_session_rows=0)
    assert other.remote_session_rows == 0 and remote.remote_session_rows == 2048

    suite = {"model": "x/y", "backend": "nnsight", "remote": True, "probe": [{"kind": "subspace"}]}
    for key, value, message in (
        ("remote_session_rows", -1, "'remote_session_rows' must be an int >= 0"),
        ("remote_session_mb", 0, "'remote_session_mb' must be a number > 0"),
        ("remote_session_mb", "big", "'remote_session_mb' in suite must be a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_suite({**suite, key: value})
    # how passes are grouped is transport: recorded with the suite, not in its config hash
    grouped = parse_suite(suite)
    single = parse_suite({**suite, "remote_session_rows": 0, "remote_session_mb": 8})
    assert single.to_dict()["remote_session_rows"] == 0
    assert single.config_hash() == grouped.config_hash()
    local = parse_suite({"model": "x/y", "probe": [{"kind": "subspace"}]})
    assert "remote_session_rows" not in local.to_dict()


def test_the_dry_run_report_shows_both_plans():
    units = {"setup (self-check)": {"requests": 3, "bytes_up": 2e6, "bytes_down": 1e6}}
    units["sst2-mini/task_vectors"] = {"requests": 2, "bytes_up": 4e6, "bytes_down": 3e6}
    single_units = {
        "setup (self-check)": {"requests": 9, "bytes_up": 5e6, "bytes_down": 1e6},
        "sst2-mini/task_vectors": {"requests": 12, "bytes_up": 6e6, "bytes_down": 3e6},
    }
    single = RemotePlan("x/y", 21, int(11e6), int(4e6), single_units, 100.0, 2.0)
    plan = RemotePlan("x/y", 5, int(6e6), int(4e6), units, 120.0, 3.0, 2048, 256.0, single)
    lines = plan.lines()
    assert lines[0].startswith("dry run for x/y on NDIF (nothing was sent): 5 requests, 6.0 MB up")
    assert lines[1] == (
        "  independent passes grouped into nnsight sessions of at most 2048 rows and about 256 "
        "MB of results; one request per pass instead: 21 requests, 11.0 MB up, 4.0 MB down"
    )
    assert lines[2].split()[:4] == ["setup", "(self-check)", "3", "requests"]
    assert "(ungrouped:      9 requests" in lines[2]
    assert "sst2-mini/task_vectors" in lines[3] and "(ungrouped:     12 requests" in lines[3]
    assert lines[-1].startswith("local memory while planning: 120 MiB peak (5.0 s)")
    off = RemotePlan("x/y", 21, int(11e6), int(4e6), single_units, 100.0, 2.0).lines()
    assert off[1] == "  one request per pass (remote_session_rows = 0: no sessions)"
    assert "ungrouped" not in "\n".join(off)


# ----------------------------------------------------------------------------- a whole suite
@pytest.mark.integration
def test_a_suite_groups_its_passes_and_the_dry_run_counts_both(
    tmp_path, server, weightless_embedded, monkeypatch, readout_cache
):
    """Two probes of the suite of ``tests/test_remote_runner.py`` (captures, keys at every
    position, variant passes) on the embedded model against the fake server, grouped and
    ungrouped: the same tables; the dry run's requests and bytes down are what each run
    records."""
    from dataclasses import replace

    from nnsight import CONFIG

    from cgar_interp.runner import plan_remote, run_suite
    from tests.test_remote_probes import assert_same_tables
    from tests.test_remote_runner import comparable, suite_for

    suite = suite_for(str(weightless_embedded), remote=True)
    probes = tuple(p for p in suite.probes if p.kind in ("task_vectors", "hopfield_heads"))
    suite = replace(suite, batch_size=4, probes=probes)
    plan = plan_remote(suite)
    assert not server.sent, "the dry run sent a request"
    single = plan.ungrouped
    assert single is not None and single.ungrouped is None
    assert plan.session_rows == 2048 and single.session_rows == 0
    assert plan.requests < single.requests
    assert plan.bytes_down == single.bytes_down  # the same tensors come back

    monkeypatch.setattr(CONFIG.API, "COMPRESS", False)  # the dry run measures uncompressed
    grouped = run_suite(suite, tmp_path / "grouped", report=False)
    sent_grouped = kinds(server.sent)
    server.sent.clear()
    for path in readout_cache.iterdir():  # a cold readout cache, as for the first run and the
        path.unlink()  # dry run: the readout is fetched by each
    ungrouped = run_suite(replace(suite, remote_session_rows=0), tmp_path / "single", report=False)
    sent_single = kinds(server.sent)
    assert_same_tables(comparable(grouped.tables), comparable(ungrouped.tables), atol=0, rtol=0)

    assert "session" in sent_grouped and "session" not in sent_single
    for run, sent, planned in ((grouped, sent_grouped, plan), (ungrouped, sent_single, single)):
        counted = run.manifest["remote"]
        assert counted["requests"] == len(sent) == planned.requests
        assert counted["bytes_down"] == planned.bytes_down
        for unit, figures in counted["units"].items():
            assert planned.units[unit]["requests"] == figures["requests"], unit
    text = "\n".join(plan.lines())
    assert f"{plan.requests} requests" in text and f"{single.requests} requests" in text

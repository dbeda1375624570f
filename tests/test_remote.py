"""nnsight remote execution (NDIF) builds the same intervention as a local run, offline.

``load_model(..., backend="nnsight", remote=True)`` makes every trace go through nnsight's
``RemoteBackend``: it serializes the traced block of ``NNsightBackend.forward`` (its source,
the globals and locals it reads, and the tracer holding the token ids) with
``RequestModel.serialize`` and would send that payload to NDIF. Here the one method that
opens the connection (``RemoteBackend.request``) is replaced by a fake server, so:

- the payload of a remote call is compared with the payload nnsight builds, with the same
  serializer, for the same probe call on a local model: same block source, same sites, same
  token ids, same reader/writer functions and patch values;
- the fake server runs the payload the way NDIF does (deserialize, execute against its own
  model, ``torch.save`` the saved values) with ``cgar_interp`` made unimportable, as on the
  server, and the probe-level results must equal the local ones.

Sockets are disabled for every test in this file: nothing may reach a network.
"""

import contextlib
import dataclasses
import importlib.abc
import io
import shutil
import socket
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import cgar_interp
from cgar_interp.capture import capture_many
from cgar_interp.models import load_model
from cgar_interp.prefix import last_token_state, shared_prefix_cache
from cgar_interp.remote import RemoteUnsupportedError
from cgar_interp.tokens import TokenBatch

FAKE_KEY = "offline-test-key-not-a-real-one"
SITES = ["resid.1", "q.1", "attn_pattern.1", "mlp_out.0"]


# ----------------------------------------------------------------------------- fixtures
def refuse_sockets(monkeypatch) -> None:
    """Make every attempt to open a network connection fail the test (any monkeypatch scope)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"an offline test tried to open a network connection: {args}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    refuse_sockets(monkeypatch)


@pytest.fixture
def weightless_dir(tiny_llama_dir, tmp_path):
    """The tiny Llama's config and tokenizer without any weight file."""
    for path in tiny_llama_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy(path, tmp_path / path.name)
    assert not list(tmp_path.glob("*.safetensors"))
    return tmp_path


@pytest.fixture
def ndif_env(monkeypatch, weightless_dir):
    """A fake API key, and the hub's canonical id for the model (nnsight asks the hub once)."""
    from nnsight import CONFIG
    from nnsight.modeling import huggingface

    monkeypatch.setenv("NDIF_API_KEY", FAKE_KEY)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)  # restored after the test
    model_id = str(weightless_dir.resolve())
    monkeypatch.setitem(huggingface._ID_CACHE, model_id, model_id)
    return model_id


@pytest.fixture
def remote(ndif_env, weightless_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(weightless_dir, backend="nnsight", remote=True)


class _Hidden(importlib.abc.MetaPathFinder):
    """Makes ``cgar_interp`` unimportable, as on an NDIF server."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "cgar_interp":
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on the server)")
        return None


@contextlib.contextmanager
def server_environment():
    """As on an NDIF server: ``cgar_interp`` is not installed (unimportable, and its files
    are not on disk, so a ``with`` block nnsight looks up in them is found only in source
    that travelled with the request), and nnsight has read no source yet (a fresh process).
    The client's source caches come back as they were after."""
    import linecache

    from nnsight.tracing.globals import BLOCKS, SOURCES

    package = str(Path(cgar_interp.__file__).parent)
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "cgar_interp"}
    finder = _Hidden()
    sys.meta_path.insert(0, finder)
    saved = {"lines": dict(linecache.cache), "sources": dict(SOURCES), "blocks": dict(BLOCKS)}
    read_file = linecache.updatecache

    def not_on_disk(filename, module_globals=None):
        if str(filename).startswith(package):
            return []
        return read_file(filename, module_globals)

    for name in [n for n in linecache.cache if str(n).startswith(package)]:
        del linecache.cache[name]
    SOURCES.clear()
    BLOCKS.clear()
    linecache.updatecache = not_on_disk
    try:
        yield
    finally:
        linecache.updatecache = read_file
        sys.meta_path.remove(finder)
        sys.modules.update(hidden)
        for cache, key in ((linecache.cache, "lines"), (SOURCES, "sources"), (BLOCKS, "blocks")):
            cache.clear()
            cache.update(saved[key])


@contextlib.contextmanager
def sandboxed_modules():
    """A request cannot read a module's tensors (weights, buffers) through the model's envoys,
    as in NDIF's sandbox: nnsight's ``Envoy.__getattr__`` (the fall-through to the wrapped
    module) refuses any tensor attribute; submodules and calls still work."""
    from nnsight.intervention.envoy import Envoy

    fall_through = Envoy.__getattr__

    def guarded(self, name):
        module = self.__dict__.get("_module")
        value = getattr(module, name, None) if module is not None else None
        if isinstance(value, torch.Tensor):
            raise AttributeError(
                f"sandbox: module attribute {name!r} of {type(module).__name__} is not "
                "available to a request"
            )
        return fall_through(self, name)

    Envoy.__getattr__ = guarded
    try:
        yield
    finally:
        Envoy.__getattr__ = fall_through


class FakeNDIF:
    """Stands in for ``RemoteBackend.request`` (the websocket + HTTP exchange with NDIF).

    Keeps what would have been sent, and answers like the server: the payload is
    deserialized against the server's model (``persistent_objects``), run, and the saved
    values come back through ``torch.save`` / ``torch.load``. ``sandbox``: the request also
    cannot read a module's weights (:func:`sandboxed_modules`).
    """

    def __init__(self, server_model, sandbox: bool = False):
        self.server_model = server_model
        self.sandbox = sandbox
        self.sent: list[dict] = []

    def __call__(self, backend, request, tracer):
        blob = backend._serialize(tracer)  # nnsight's own payload builder, as request() calls it
        self.sent.append({"request": request, "blob": blob, "api_key": backend.api_key})
        return self.run(request, blob)

    def run(self, request, blob) -> dict:
        from nnsight.schema.request import RequestModel
        from nnsight.tracing import tracer as tracing

        objects = self.server_model._remoteable_persistent_objects()
        sandbox = sandboxed_modules() if self.sandbox else contextlib.nullcontext()
        with server_environment(), sandbox:
            restored = RequestModel.deserialize(blob, objects, compress=request.compress)
            tracing.inc()  # the server runs it as an outermost trace: only saves come back
            try:
                restored.execute(restored.info.code)
                saved = tracing._saves()
                result = {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saved}
            finally:
                tracing.dec()
            buffer = io.BytesIO()
            torch.save(result, buffer)
        return torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=False)


@pytest.fixture
def ndif(monkeypatch, tiny_handles):
    from nnsight.intervention.backends.remote import RemoteBackend

    fake = FakeNDIF(tiny_handles["nnsight"].backend.engine)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, req, tr: fake(self, req, tr))
    return fake


@pytest.fixture
def local_payloads(monkeypatch):
    """Payloads ``RequestModel.serialize`` builds for *local* traces, just before they run."""
    from nnsight.schema.request import RequestModel
    from nnsight.tracing.backend import Backend

    payloads: list[bytes] = []
    run_here = Backend.__call__

    def serialize_then_run(self, tracer):
        payloads.append(RequestModel.serialize(tracer, compress=False))
        return run_here(self, tracer)

    monkeypatch.setattr(Backend, "__call__", serialize_then_run)
    return payloads


@pytest.fixture
def batch(tiny_handles):
    return tiny_handles["hf"].tokenize(["w1 w2 w3 w4 w5", "w6 w7", "w8 w9 w10"])


# ----------------------------------------------------------------------------- payloads
def uncompressed(blob: bytes, compressed: bool) -> bytes:
    if not compressed:
        return blob
    import zstandard

    return zstandard.ZstdDecompressor().decompress(blob)


def decode(blob: bytes, compressed: bool):
    """``(tracer, (source, globals, locals))`` of a payload; model objects stay as their ids."""
    from nnsight.intervention.serialization import CustomCloudUnpickler, loads

    class ById(CustomCloudUnpickler):
        def persistent_load(self, pid):
            return ("persistent", pid)

    return loads(uncompressed(blob, compressed), unpickler=ById)


def canonical(obj, seen=frozenset()):
    """A comparable form: tensors by value, functions by code and what they read, envoys by path."""
    from nnsight.intervention.envoy import Envoy

    if isinstance(obj, torch.Tensor):
        return ("tensor", str(obj.dtype), tuple(obj.shape), obj.tolist())
    if isinstance(obj, Envoy):
        return ("envoy", type(obj).__name__, obj.path)
    if isinstance(obj, types.MethodType):
        return ("method", obj.__func__.__qualname__, canonical(obj.__self__, seen))
    if isinstance(obj, types.ModuleType):
        return ("module", obj.__name__)
    if isinstance(obj, type):
        return ("type", obj.__module__, obj.__qualname__)
    if isinstance(obj, types.FunctionType):
        if id(obj) in seen:
            return ("function", obj.__name__, "recursion")
        seen = seen | {id(obj)}
        codes, names = [obj.__code__], set()
        for code in codes:  # nested code objects: comprehensions, inner functions
            names.update(code.co_names)
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        reads = {
            n: canonical(obj.__globals__[n], seen) for n in sorted(names) if n in obj.__globals__
        }
        consts = [c for code in codes for c in code.co_consts if not isinstance(c, types.CodeType)]
        return ("function", obj.__name__, [c.co_code for c in codes], repr(consts), reads)
    if dataclasses.is_dataclass(obj):
        return ("dataclass", type(obj).__name__, canonical(vars(obj), seen))
    if isinstance(obj, dict):
        return (
            "dict",
            sorted(((canonical(k, seen), canonical(v, seen)) for k, v in obj.items()), key=repr),
        )
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [canonical(v, seen) for v in obj])
    if obj is None or isinstance(obj, (str, int, float, bool, bytes)):
        return obj
    return ("object", type(obj).__qualname__, canonical(getattr(obj, "__dict__", repr(obj)), seen))


def intervention(blob: bytes, compressed: bool) -> dict:
    tracer, (source, used_globals, used_locals) = decode(blob, compressed)
    return {
        "source": source,
        "globals": canonical(used_globals),
        "locals": canonical(used_locals),
        "model call": canonical((tracer.fn, tracer.args, tracer.kwargs)),
        "traced function": (tracer.info.frame.f_code.co_filename, tracer.info.frame.f_code.co_name),
    }


def assert_same_intervention(local: dict, remote: dict) -> None:
    for part in local:  # part by part, so a failure names what differs
        assert remote[part] == local[part], f"remote request differs from the local trace: {part}"


# ----------------------------------------------------------------------------- tests
def test_remote_model_is_built_without_weights(remote, ndif_env):
    assert remote.remote and remote.device == "remote"
    assert remote.model_hash == f"remote:{ndif_env}"
    module = remote.backend.engine._module
    assert all(p.is_meta for p in module.parameters())
    assert remote.input_device == torch.device("cpu")
    assert remote.backend.engine.to_model_key().endswith(
        f'{{"repo_id": "{ndif_env}", "revision": null, "task": "text-generation"}}'
    )


def test_capture_builds_the_same_intervention_and_numbers(
    remote, tiny_handles, ndif, local_payloads, batch
):
    local = tiny_handles["nnsight"]
    want = local.capture(batch, SITES, -1, with_logits=True)
    got = remote.capture(batch, SITES, -1, with_logits=True)
    assert len(local_payloads) == 1 and len(ndif.sent) == 1

    sent = ndif.sent[0]
    assert sent["api_key"] == FAKE_KEY  # carried in a header by nnsight, not in the payload
    assert sent["request"].env == {"attn_implementation": "eager"}
    assert FAKE_KEY.encode() not in uncompressed(sent["blob"], sent["request"].compress)
    assert_same_intervention(
        intervention(local_payloads[0], False), intervention(sent["blob"], sent["request"].compress)
    )

    # the server's run of that payload gives the local numbers, which are the reference's
    for site in SITES:
        assert torch.equal(got[site], want[site]), site
    assert torch.equal(got.logits, want.logits)
    reference = tiny_handles["hf"].capture(batch, SITES, -1, with_logits=True)
    for site in SITES:
        torch.testing.assert_close(want[site], reference[site], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(want.logits, reference.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["vector", "function"])
def test_patch_builds_the_same_intervention_and_numbers(
    remote, tiny_handles, ndif, local_payloads, batch, kind
):
    local = tiny_handles["nnsight"]
    if kind == "vector":
        value = torch.randn(64, generator=torch.Generator().manual_seed(0))
        site = "resid.1"
    else:
        value, site = (lambda z: 2.0 * z), "z.1"
    args = (batch, site, [-2, -1], value)
    want = local.run_with_patch(*args, capture=["resid.2"], logits_positions=-1)
    got = remote.run_with_patch(*args, capture=["resid.2"], logits_positions=-1)
    sent = ndif.sent[0]
    assert_same_intervention(
        intervention(local_payloads[0], False), intervention(sent["blob"], sent["request"].compress)
    )

    assert torch.equal(got["resid.2"], want["resid.2"])
    assert torch.equal(got.logits, want.logits)  # [batch, vocab]: only position -1 came back
    reference = tiny_handles["hf"].run_with_patch(*args, capture=["resid.2"], logits_positions=-1)
    torch.testing.assert_close(want.logits, reference.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(want["resid.2"], reference["resid.2"], rtol=1e-5, atol=1e-5)


def test_a_different_intervention_is_told_apart(remote, tiny_handles, ndif, local_payloads, batch):
    """The comparison is sensitive: another patch value or position is another request."""
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    tiny_handles["nnsight"].run_with_patch(batch, "resid.1", -1, vector)
    remote.run_with_patch(batch, "resid.1", -1, vector + 1e-3)
    remote.run_with_patch(batch, "resid.1", -2, vector)
    local = intervention(local_payloads[0], False)
    for sent in ndif.sent:
        other = intervention(sent["blob"], sent["request"].compress)
        assert other["source"] == local["source"]  # same traced block ...
        assert other["locals"] != local["locals"]  # ... reading another writer


def test_the_payload_needs_no_cgar_interp_on_the_server(remote, tiny_handles, ndif, batch):
    """Without shipping cgar_interp by value, the server could not even read the request."""
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES

    remote.capture(batch, ["resid.1"], -1)  # shipped by value: fine
    _PICKLE_BY_VALUE_MODULES.discard("cgar_interp")
    try:
        with pytest.raises(ModuleNotFoundError, match="cgar_interp"):
            remote.capture(batch, ["resid.1"], -1)
    finally:
        _PICKLE_BY_VALUE_MODULES.add("cgar_interp")


def test_capture_many_runs_remotely_without_prefix_reuse(remote, tiny_handles, ndif):
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 128, (20,), generator=gen).tolist()
    rows = [prefix + torch.randint(3, 128, (2 + i,), generator=gen).tolist() for i in range(4)]
    batch = TokenBatch.from_sequences(rows)
    want = capture_many(
        tiny_handles["nnsight"], batch, SITES, -1, batch_size=2, shared_prefix=False
    )
    remote.stats.reset()
    # one request per batch (grouped into sessions: tests/test_remote_sessions.py)
    ungrouped = remote.with_options(remote_session_rows=0)
    got = capture_many(ungrouped, batch, SITES, -1, batch_size=2)  # default: prefix reuse off
    assert remote.stats.prefix_calls == 0 and len(ndif.sent) == 2
    for site in SITES:
        assert torch.equal(got[site], want[site]), site
    assert torch.equal(got.logits, want.logits)


def test_local_only_paths_refuse_a_remote_model(remote, batch):
    """Paths that need a KV cache or a block's weights in this process refuse; decoding and
    kept states work remotely (tests/test_remote_probes.py)."""
    resid = torch.zeros(1, 3, 64)
    refused = {
        "resume": lambda: remote.resume(resid, 1),
        "last_token_state": lambda: last_token_state(remote, batch.ids[:, :2]),
        "shared_prefix_cache": lambda: shared_prefix_cache(remote, batch.ids[0, :2]),
        "shared_prefix": lambda: capture_many(remote, batch, ["resid.1"], shared_prefix=True),
        "head_out": lambda: remote.capture(batch, ["head_out.1"]),
        "hf_model": lambda: remote.backend.hf_model,
    }
    for what, call in refused.items():
        with pytest.raises(RemoteUnsupportedError, match="remote=True") as err:
            call()
        assert "load the model locally" in str(err.value), what


def test_remote_options_are_checked(ndif_env, weightless_dir, tiny_llama_dir, monkeypatch):
    for backend in ("hf", "transformer_lens"):
        with pytest.raises(ValueError, match=f"backend '{backend}'"):
            load_model(tiny_llama_dir, backend=backend, remote=True)
    with pytest.raises(ValueError, match="device 'auto' with remote=True"):
        load_model(weightless_dir, backend="nnsight", device="auto", remote=True)
    with pytest.raises(ValueError, match="hub id"):
        load_model("embedded", backend="nnsight", remote=True)
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(ValueError, match="NDIF_API_KEY"):
        load_model(weightless_dir, backend="nnsight", remote=True)

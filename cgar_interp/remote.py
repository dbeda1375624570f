"""Remote execution on NDIF (nnsight's hosted models), behind the same probe API.

``load_model(hub_id, backend="nnsight", remote=True)`` builds the model on the meta device
from its config (no weights are downloaded) and sends every forward pass to NDIF: nnsight
serializes the traced block of :meth:`NNsightBackend.forward` (its source plus the variables
it reads: the sites, the reader and writer functions, the token ids) and the server runs it
against its own copy of the checkpoint. What stays local is what the client computes before
and after the trace (tokenization, positions, derived sites that need no weights).

Paths that run the model's modules in this process (KV-cache prefix reuse, ``resume``,
``decode_residual``, ``head_out``, probes that read weights) raise
:class:`RemoteUnsupportedError` under ``remote=True``. See ``docs/scale_out.md``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

API_KEY_ENV = "NDIF_API_KEY"

# What a remote handle can still do, for error messages.
REMOTE_SUPPORTED = (
    "capture, logits, run_with_patch(es), and capture_many without shared_prefix/keep_states"
)


class RemoteUnsupportedError(ValueError):
    """An operation needs the model's weights or modules in this process, which remote lacks."""


def remote_unsupported(what: str, model: str) -> RemoteUnsupportedError:
    return RemoteUnsupportedError(
        f"{what} runs the model's modules in this process, but model {model!r} was loaded "
        f"with remote=True (the weights live on the NDIF server). Remotely supported: "
        f"{REMOTE_SUPPORTED}. For {what}, load the model locally (remote=False, with "
        "device='auto' to spread it over several GPUs)."
    )


def ndif_api_key() -> str:
    """The NDIF API key: ``$NDIF_API_KEY``, else nnsight's config (``CONFIG.API.APIKEY``).

    nnsight reads ``NDIF_API_KEY`` once, at import; a key set in the environment later is
    copied into its config here, so the request nnsight builds carries it.

    Raises:
        ValueError: no key is configured, saying where to put one.
    """
    from nnsight import CONFIG

    key = os.environ.get(API_KEY_ENV) or CONFIG.API.APIKEY
    if not key:
        raise ValueError(
            f"remote=True needs an NDIF API key: set the {API_KEY_ENV} environment variable, "
            "or store one with nnsight.login() (it asks for the key and saves it in nnsight's "
            "config); keys are issued by NDIF (https://ndif.us)"
        )
    CONFIG.API.APIKEY = key  # what nnsight's RemoteBackend sends
    return key


def ship_by_value() -> None:
    """Make nnsight serialize ``cgar_interp`` functions and classes by value.

    The traced block calls cgar_interp code (site conversions, the reader and writer
    closures) and holds :class:`~cgar_interp.sites.Site` objects; NDIF's server does not
    have cgar_interp installed, so their source must travel with the request. nnsight only
    does this by itself for packages that are not pip-installed. The registration is
    cloudpickle's and process-wide: other cloudpickle users then also copy cgar_interp code.
    """
    import nnsight

    nnsight.register("cgar_interp")


@dataclass
class RemoteLedger:
    """What a run sent to NDIF and got back: requests, payload bytes up, result bytes down.

    ``bytes_up`` is each request's payload as nnsight sends it (zstd-compressed when nnsight's
    ``CONFIG.API.COMPRESS`` is on); ``bytes_down`` is the tensors of each result.
    """

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}


class RemoteRunError(RuntimeError):
    """An NDIF request failed; ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


FAILURE_KINDS = ("not_hosted", "queue", "timeout", "authentication", "connection")

# words of a server's error description, per failure kind (checked in this order)
_FAILURE_WORDS = (
    ("authentication", ("api key", "apikey", "unauthorized", "forbidden", "authenticat")),
    ("not_hosted", ("not hosted", "not found", "not deployed", "not available", "unknown model")),
    ("queue", ("queue", "capacity", "too many requests", "busy", "rate limit")),
    ("timeout", ("timeout", "timed out")),
)
_FAILURE_STATUS = {401: "authentication", 403: "authentication", 404: "not_hosted"}
_FAILURE_STATUS.update({408: "timeout", 504: "timeout", 429: "queue", 503: "queue"})


def failure_kind(err: BaseException) -> str | None:
    """The kind of an NDIF failure (:data:`FAILURE_KINDS`), or None for any other error."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in _FAILURE_STATUS:
        return _FAILURE_STATUS[status]
    text = str(err).lower()
    name = type(err).__name__.lower()
    if "timeout" in name:
        return "timeout"
    from_server = name in ("remoteerror", "httpstatuserror") or "websocket" in type(err).__module__
    if from_server or "timeout" in text:
        for kind, words in _FAILURE_WORDS:
            if any(w in text for w in words):
                return kind
    if isinstance(err, ConnectionError | OSError) or name in (
        "connecterror",
        "readerror",
        "remoteprotocolerror",
        "websocketconnectionclosedexception",
    ):
        return "connection"
    return None


def failure_message(kind: str, model: str, detail: str) -> str:
    """One line naming the model and saying what to do."""
    what = {
        "not_hosted": f"NDIF does not host model {model!r}: pick a model NDIF lists as running "
        "(https://nnsight.net/status), or run this one locally without --remote",
        "queue": f"NDIF's queue for model {model!r} is full: wait and rerun with --resume "
        "(finished units are kept)",
        "timeout": f"an NDIF request for model {model!r} timed out: rerun with --resume "
        "(finished units are kept), or lower batch_size / remote_rows / remote_session_rows",
        "authentication": f"NDIF refused the API key for model {model!r}: set a valid key in "
        f"${API_KEY_ENV} (keys are issued at https://ndif.us)",
        "connection": f"the connection to NDIF dropped during a request for model {model!r}: "
        "rerun with --resume (finished units are kept)",
    }[kind]
    detail = " ".join(str(detail).split())[:200]
    return f"{what} [{detail}]" if detail else what


def result_bytes(obj) -> int:
    """Bytes of every tensor in a (nested) result."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(result_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(result_bytes(v) for v in obj)
    return 0


@contextmanager
def remote_session(model: str, ledger: RemoteLedger | None = None):
    """Meter every NDIF request made inside (``ledger``), turn NDIF's failures into
    :class:`RemoteRunError` with a one-line message, and leave nnsight as it was found:
    its API key setting and cloudpickle's by-value registration are restored on exit.

    Yields:
        the :class:`RemoteLedger`.
    """
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend

    ledger = ledger if ledger is not None else RemoteLedger()
    saved_key = CONFIG.API.APIKEY
    shipped = "cgar_interp" in _PICKLE_BY_VALUE_MODULES
    send, serialize = RemoteBackend.request, RemoteBackend._serialize

    def metered_serialize(self, tracer):
        blob = serialize(self, tracer)
        ledger.bytes_up += len(blob)
        return blob

    def metered_request(self, request, tracer):
        ledger.requests += 1
        try:
            result = send(self, request, tracer)
        except Exception as err:
            kind = failure_kind(err)
            if kind is None:
                raise
            raise RemoteRunError(kind, failure_message(kind, model, str(err))) from err
        ledger.bytes_down += result_bytes(result)
        return result

    RemoteBackend.request, RemoteBackend._serialize = metered_request, metered_serialize
    try:
        yield ledger
    finally:
        RemoteBackend.request, RemoteBackend._serialize = send, serialize
        CONFIG.API.APIKEY = saved_key
        if not shipped:
            _PICKLE_BY_VALUE_MODULES.discard("cgar_interp")


class DryServer:
    """Answers NDIF requests without running the model: a dry run's server.

    Each request is serialized exactly as for NDIF (so its bytes are counted), then run against
    the model built on the meta device in this process (no weights and no arithmetic: shapes
    only), and answered with placeholders of the shapes and dtypes the server would send:
    ones, and attention patterns all on the first key. The probes'
    own code runs on them, so every request a real run makes is made, in the same order.
    """

    def __init__(self, meta_model=None):
        self.meta_model = None
        if meta_model is not None:
            self.attach(meta_model)

    def attach(self, meta_model) -> None:
        """Answer for ``meta_model`` (a remote handle's ``backend.engine``); its id is taken as
        canonical (a real run asks the hub once; a dry run looks nothing up)."""
        from nnsight.modeling import huggingface

        self.meta_model = meta_model
        huggingface._ID_CACHE.setdefault(meta_model.repo_id, meta_model.repo_id)

    def __call__(self, backend, request, tracer):
        import linecache

        from nnsight.schema.request import RequestModel
        from nnsight.tracing import tracer as tracing

        blob = backend._serialize(tracer)  # what NDIF would receive
        objects = self.meta_model._remoteable_persistent_objects()
        # deserializing registers the block's source in linecache under this process's file
        # name; the client's later payloads read functions' source from there (nnsight ships
        # them by source), so the server's entries are dropped after, as on a real server
        lines = dict(linecache.cache)
        restored = RequestModel.deserialize(blob, objects, compress=request.compress)
        tracing.inc()  # run as an outermost trace: only saved values come back
        try:
            restored.execute(restored.info.code)
            saved = tracing._saves()
            frame = restored.info.frame.f_locals
            result = {k: v for k, v in frame.items() if id(v) in saved}
        finally:
            tracing.dec()
            linecache.cache.clear()
            linecache.cache.update(lines)
        return {k: _placeholder(v, k) for k, v in result.items()}


def _placeholder(value, name: str = ""):
    """A CPU stand-in of a meta-device result of the same shape and dtype."""
    import torch

    if isinstance(value, dict):
        return {k: _placeholder(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_placeholder(v, name) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if name.startswith("attn_pattern."):  # a softmax: all on the first key (the sink)
        out = torch.zeros(value.shape, dtype=value.dtype)
        if out.numel():
            out[..., 0] = 1.0
        return out
    return torch.ones(value.shape, dtype=value.dtype)  # nonzero: norms and scales stay defined


@contextmanager
def dry_transport():
    """Every NDIF request made inside goes to a :class:`DryServer` (``attach`` the model
    once it is built). Nothing is sent, so no API key is needed (a placeholder stands
    in where none is set) and the model id is not looked up on the hub; payloads are measured
    uncompressed (a real run's are zstd-compressed when nnsight's ``COMPRESS`` is on, so they
    are at most this size). nnsight's settings are restored after."""
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.modeling import huggingface

    server = DryServer()
    send, saved_key, compress = RemoteBackend.request, CONFIG.API.APIKEY, CONFIG.API.COMPRESS
    ids = dict(huggingface._ID_CACHE)
    RemoteBackend.request = lambda self, request, tracer: server(self, request, tracer)
    if not (os.environ.get(API_KEY_ENV) or CONFIG.API.APIKEY):
        CONFIG.API.APIKEY = "dry-run-nothing-is-sent"
    CONFIG.API.COMPRESS = False
    try:
        yield server
    finally:
        RemoteBackend.request = send
        CONFIG.API.APIKEY, CONFIG.API.COMPRESS = saved_key, compress
        huggingface._ID_CACHE.clear()
        huggingface._ID_CACHE.update(ids)


__all__ = [
    "API_KEY_ENV",
    "DryServer",
    "FAILURE_KINDS",
    "dry_transport",
    "RemoteLedger",
    "RemoteRunError",
    "remote_session",
    "RemoteUnsupportedError",
    "ndif_api_key",
    "remote_unsupported",
    "ship_by_value",
]

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

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .remote_errors import (  # noqa: F401  (re-exported: the failure API lives there)
    API_KEY_ENV,
    FAILURE_KINDS,
    RemoteRunError,
    failure_kind,
    failure_message,
    remote_failure,
    scrub,
)
from .remote_jobs import result_bytes

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
    """The NDIF API key, read from ``$NDIF_API_KEY`` first, else from nnsight's saved config
    (``CONFIG.API.APIKEY``: the key ``nnsight.login()`` stored in
    ``$XDG_CONFIG_HOME/nnsight/config.yaml``, by default ``~/.config/nnsight/config.yaml``,
    or in the file ``$NNSIGHT_CONFIG`` names).

    nnsight reads ``NDIF_API_KEY`` once, at import; a key set in the environment later is
    copied into its config here, so the request nnsight builds carries it.

    Raises:
        ValueError: no key is configured, saying where to put one.
    """
    from nnsight import CONFIG

    key = configured_api_key()
    if not key:
        raise ValueError(
            f"remote=True needs an NDIF API key, read from the {API_KEY_ENV} environment "
            "variable first, else from nnsight's saved config: set the variable, or store the "
            "key once with nnsight.login() (it asks for the key and saves it in "
            "~/.config/nnsight/config.yaml); keys are issued at https://login.ndif.us"
        )
    CONFIG.API.APIKEY = key  # what nnsight's RemoteBackend sends
    return key


def configured_api_key() -> str | None:
    """The key :func:`ndif_api_key` would use, or None when none is configured (nothing is
    changed)."""
    from nnsight import CONFIG

    return os.environ.get(API_KEY_ENV) or CONFIG.API.APIKEY or None


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

    ``requests``, ``bytes_up`` and ``bytes_down`` are this session's. ``bytes_up`` is each
    request's payload as nnsight sends it (zstd-compressed when nnsight's
    ``CONFIG.API.COMPRESS`` is on); ``bytes_down`` is the tensors of each result. Kept in a
    run directory (:meth:`keep_in`), the counts of every session of the run so far are
    rewritten there, atomically, after each change; ``earlier`` holds the earlier sessions'
    and :meth:`totals` the sum.
    """

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    earlier: dict[str, int] = field(default_factory=dict)
    earlier_sessions: int = 0
    path: Path | None = field(default=None, repr=False)
    tmp_dir: Path | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, int]:
        """This session's counts."""
        return {"requests": self.requests, "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def totals(self) -> dict[str, int]:
        """Every session's counts so far (this one's alone until :meth:`keep_in`)."""
        return {k: v + int(self.earlier.get(k, 0)) for k, v in self.as_dict().items()}

    def add(self, requests: int = 0, bytes_up: int = 0, bytes_down: int = 0) -> None:
        """Count a request, its payload or its result (and write the file, if kept)."""
        self.requests += requests
        self.bytes_up += bytes_up
        self.bytes_down += bytes_down
        self.save()

    def keep_in(
        self,
        path: str | Path,
        tmp_dir: str | Path | None = None,
        earlier: dict[str, int] | None = None,
    ) -> None:
        """Continue the counts of ``path`` (a run's ``remote/ledger.json``) and keep them there
        from now on; where it holds none, continue ``earlier`` (a run begun before the file
        existed: its manifest's counts), or count from zero (a first session)."""
        path = Path(path)
        earlier = {k: int(v) for k, v in (earlier or {}).items() if v}
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError as err:
                raise ValueError(
                    f"{path} is not valid JSON ({err}); delete it to count the run's requests "
                    "from this session on"
                ) from err
            earlier = {k: int(stored.get(k, 0)) for k in ("requests", "bytes_up", "bytes_down")}
            self.earlier_sessions = int(stored.get("sessions", 0))
        self.earlier, self.path, self.tmp_dir = earlier, path, tmp_dir
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        from .results import atomic_write_json

        atomic_write_json(
            self.path,
            {
                **self.totals(),
                "sessions": self.earlier_sessions + 1,
                "this_session": self.as_dict(),
            },
            self.tmp_dir,
        )


def _is_nnsight_request(send) -> bool:
    """Is ``send`` nnsight's own ``RemoteBackend.request`` (not a transport put in its place)?"""
    from nnsight.intervention.backends.remote import RemoteBackend

    return (
        getattr(send, "__module__", None) == RemoteBackend.__module__
        and getattr(send, "__qualname__", None) == "RemoteBackend.request"
    )


@contextmanager
def remote_session(
    model: str,
    ledger: RemoteLedger | None = None,
    *,
    jobs=None,
    queue_timeout_s: float | None = None,
    log=None,
):
    """Send every NDIF request made inside as a stored job, meter it (``ledger``), turn NDIF's
    failures into :class:`RemoteRunError` with a one-line message, and leave nnsight as it was
    found: its transport, its API key setting and cloudpickle's by-value registration are
    restored on exit.

    Each request goes over nnsight's non-blocking HTTP path
    (:class:`~cgar_interp.remote_jobs.JobTransport`): submitted, its job id recorded in
    ``jobs`` (a :class:`~cgar_interp.remote_jobs.JobStore`; a run keeps it in its directory),
    then polled until answered; a job still queued after ``queue_timeout_s`` (default
    :data:`~cgar_interp.remote_jobs.DEFAULT_QUEUE_TIMEOUT_S`) stops the run with kind
    ``queue``, its id kept. A transport already in place of nnsight's ``RemoteBackend.request``
    when the session starts (a dry run's :class:`DryServer`, a test's fake server) is kept:
    each request goes to it, metered the same way.

    Yields:
        the :class:`RemoteLedger`.
    """
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend

    from .remote_jobs import DEFAULT_QUEUE_TIMEOUT_S, JobStore, JobTransport

    ledger = ledger if ledger is not None else RemoteLedger()
    saved_key = CONFIG.API.APIKEY
    shipped = "cgar_interp" in _PICKLE_BY_VALUE_MODULES
    send, serialize = RemoteBackend.request, RemoteBackend._serialize
    native = _is_nnsight_request(send)
    transport = JobTransport(
        model,
        ledger,
        jobs if jobs is not None else JobStore(),
        DEFAULT_QUEUE_TIMEOUT_S if queue_timeout_s is None else queue_timeout_s,
        log,
        queue_error=lambda message: RemoteRunError("queue", message),
    )

    def metered_serialize(self, tracer):  # a transport in place serializes by itself
        blob = serialize(self, tracer)
        ledger.add(bytes_up=len(blob))
        return blob

    def metered_request(self, request, tracer):
        try:
            if native:  # counted by the transport: at submission, and when answered
                return transport(self, request, serialize(self, tracer))
            ledger.add(requests=1)
            result = send(self, request, tracer)
        except RemoteRunError:
            raise
        except Exception as err:
            failure = remote_failure(err, model)
            if failure is None:
                raise
            raise failure from None  # the server's text may hold the key: failure.detail, scrubbed
        ledger.add(bytes_down=result_bytes(result))
        return result

    RemoteBackend.request = metered_request
    if not native:
        RemoteBackend._serialize = metered_serialize
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
        blob = backend._serialize(tracer)  # what NDIF would receive
        return self.answer(blob, request.compress)

    def answer(self, blob: bytes, compress: bool) -> dict:
        """Placeholders of the values a serialized request saves, run on the meta model."""
        import linecache

        from nnsight.schema.request import RequestModel
        from nnsight.tracing import tracer as tracing

        objects = self.meta_model._remoteable_persistent_objects()
        # deserializing registers the block's source in linecache under this process's file
        # name; the client's later payloads read functions' source from there (nnsight ships
        # them by source), so the server's entries are dropped after, as on a real server
        lines = dict(linecache.cache)
        restored = RequestModel.deserialize(blob, objects, compress=compress)
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
    "configured_api_key",
    "failure_kind",
    "failure_message",
    "remote_failure",
    "remote_session",
    "scrub",
    "RemoteUnsupportedError",
    "ndif_api_key",
    "remote_unsupported",
    "ship_by_value",
]

"""What a remote run keeps in its run directory so that ``--resume`` repeats no paid work.

A remote run (``cgar run SUITE --remote``) keeps, under ``<run>/remote/``:

``ledger.json``
    the requests, payload bytes up and result bytes down of every session of the run so far
    (:class:`~cgar_interp.remote.RemoteLedger`), rewritten atomically after each request.
``jobs.jsonl``
    the NDIF job id of every request submitted and not yet answered (:class:`JobStore`). Each
    request is submitted over nnsight's non-blocking HTTP path (``RemoteBackend._post``) and
    polled (``RemoteBackend.poll``: ``GET /response/{job_id}``) until it completes; its id is
    written (and flushed to disk) before the first poll. A run killed while a job is queued or
    running polls that job again when resumed, instead of sending the request a second time.
``self_check.json``
    the self-check's comparisons and the key they hold for
    (:func:`cgar_interp.selfcheck.self_check_key`); a resumed run with the same key reuses them.
``captures/<task>/shared.pt``
    a task's shared capture pass (:class:`SharedCaptureFile`), kept until the task's last unit
    has finished, so a resumed run does not request it again.

A request is known again in another process by :func:`request_key`: nnsight's payload is not
byte-identical across processes for the same call (torch writes memory addresses as storage
keys, and cloudpickle orders a function's globals by the string hash seed), so the key is a
digest of the *decoded* payload: the traced block's source, every global and local it reads
by value (tensors by dtype, shape and bytes, functions by their code, constants and the values
they read), the model call's arguments (the token ids), the model key and the request's env.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import io
import json
import os
import time
import types
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from pathlib import Path

REMOTE_DIR = "remote"
JOBS_FILE = "jobs.jsonl"
LEDGER_FILE = "ledger.json"
SELF_CHECK_FILE = "self_check.json"
CAPTURES_DIR = "captures"

# a stored job's lifecycle: "submitted" until its result was taken ("done"), the server
# reported an error ("error"), or the server no longer has it ("gone")
SUBMITTED = "submitted"

# polling: 1 s first, then 1.5x longer each time, at most 10 s
POLL_FIRST_S = 1.0
POLL_GROWTH = 1.5
POLL_MAX_S = 10.0
# statuses of a job still waiting for a worker (the queue timeout's); None: no status yet
QUEUE_STATUSES = (None, "RECEIVED", "QUEUED")
DEFAULT_QUEUE_TIMEOUT_S = 3600.0
# a job of an earlier session whose status the server no longer has after this many polls
# is sent again (results and statuses are not kept forever)
GONE_AFTER_POLLS = 3

# indirections the tests replace (no real waiting offline)
_sleep = time.sleep
_now = time.monotonic


# --------------------------------------------------------------------------- request keys
def request_key(blob: bytes, request) -> str:
    """A digest that names the same NDIF request in any process (see the module docs).

    Args:
        blob: the payload nnsight sends (``RemoteBackend._serialize``), compressed if
            ``request.compress``.
        request: its :class:`nnsight.schema.request.RequestModel` (model key, env).
    """
    from nnsight.intervention.serialization import CustomCloudUnpickler, loads

    if request.compress:
        import zstandard

        blob = zstandard.ZstdDecompressor().decompress(blob)

    class ById(CustomCloudUnpickler):  # the server's model objects stay as their ids
        def persistent_load(self, pid):
            return ("persistent", pid)

    import linecache

    # rebuilding functions shipped by source registers that source in linecache under this
    # process's own file names; the next payload would then ship them by bytecode (see
    # DryServer.__call__): restore the cache as it was
    lines = dict(linecache.cache)
    try:
        tracer, block = loads(blob, unpickler=ById)
    finally:
        linecache.cache.clear()
        linecache.cache.update(lines)
    digest = hashlib.sha256()
    _feed(digest, (request.model_key, request.env, block, tracer.args, tracer.kwargs), {})
    return digest.hexdigest()


def _feed(digest, obj, seen: dict) -> None:
    """Feed a canonical form of ``obj`` to ``digest``: equal values give equal bytes in every
    process (no addresses, no hash-seed orders)."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return
    if isinstance(obj, np.ndarray):
        digest.update(f"N{obj.dtype}{obj.shape}:".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
        return
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, torch.dtype | torch.device | torch.Size):
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, enum.Enum):
        digest.update(f"E{type(obj).__qualname__}.{obj.name};".encode())
        return
    if isinstance(obj, types.ModuleType):
        digest.update(f"M{obj.__name__};".encode())
        return
    if isinstance(obj, type):
        digest.update(f"C{obj.__module__}.{obj.__qualname__};".encode())
        return
    if id(obj) in seen:  # a cycle, or an object met before: its first position
        digest.update(f"R{seen[id(obj)][0]};".encode())
        return
    # the object is held too: a temporary (a state dict built here) freed later could hand its
    # id to another object, which would then pass for it
    seen[id(obj)] = (len(seen), obj)
    if isinstance(obj, types.MethodType):
        digest.update(b"B(")
        _feed(digest, obj.__func__, seen)
        _feed(digest, obj.__self__, seen)
        digest.update(b")")
    elif isinstance(obj, types.FunctionType):
        _feed_function(digest, obj, seen)
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key_digest, value in sorted(
            ((_digest_of(k), v) for k, v in obj.items()), key=lambda kv: kv[0]
        ):
            digest.update(key_digest)
            _feed(digest, value, seen)
        digest.update(b"}")
    elif isinstance(obj, list | tuple):
        digest.update(f"{type(obj).__name__}[".encode())
        for value in obj:
            _feed(digest, value, seen)
        digest.update(b"]")
    elif isinstance(obj, set | frozenset):
        digest.update(b"S[" + b"".join(sorted(_digest_of(v) for v in obj)) + b"]")
    else:
        _feed_object(digest, obj, seen)


def _feed_function(digest, func: types.FunctionType, seen: dict) -> None:
    """A function by its code (nested code too), constants, defaults, closure and the
    globals it names (a function nnsight ships by source is rebuilt with its closure folded
    into its globals)."""
    digest.update(f"F{func.__name__}(".encode())
    codes, names = [func.__code__], set()
    for code in codes:
        digest.update(code.co_code)
        consts = [c for c in code.co_consts if not isinstance(c, types.CodeType)]
        digest.update(repr(consts).encode())
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    for name in sorted(names):
        if name != "__builtins__" and name in func.__globals__:
            digest.update(f"g{name}=".encode())
            _feed(digest, func.__globals__[name], seen)
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
        digest.update(f"c{name}=".encode())
        try:
            _feed(digest, cell.cell_contents, seen)
        except ValueError:  # an empty cell
            digest.update(b"empty;")
    _feed(digest, func.__defaults__, seen)
    _feed(digest, func.__kwdefaults__, seen)
    digest.update(b")")


def _feed_object(digest, obj, seen: dict) -> None:
    """Any other object: its type and its state (fields, ``__dict__``, slots, or what
    ``__reduce_ex__`` gives), never its ``repr`` (which may hold an address)."""
    digest.update(f"O{type(obj).__module__}.{type(obj).__qualname__}(".encode())
    if is_dataclass(obj):
        state = {f.name: getattr(obj, f.name) for f in fields(obj)}
    elif hasattr(obj, "__dict__"):
        state = vars(obj)
    elif hasattr(type(obj), "__slots__"):
        slots = [s for k in type(obj).__mro__ for s in getattr(k, "__slots__", ())]
        state = {s: getattr(obj, s) for s in slots if hasattr(obj, s)}
    else:
        try:
            state = obj.__reduce_ex__(4)[1:]
        except Exception:  # noqa: BLE001 - no state to read: the type alone
            state = None
    _feed(digest, state, seen)
    digest.update(b")")


def _digest_of(obj) -> bytes:
    digest = hashlib.sha256()
    _feed(digest, obj, {})
    return digest.digest()


# --------------------------------------------------------------------------- the job store
class JobStore:
    """The NDIF jobs of a run that were submitted and not yet answered: ``jobs.jsonl``.

    One JSON line per event (``{"key", "job_id", "status", "time"}``): ``submitted`` before the
    first poll, then ``done`` / ``error`` / ``gone``. Lines are appended and flushed to disk at
    once, so a kill at any moment loses at most a line being written (a torn last line is
    skipped when read). :meth:`open` keeps only the jobs still waiting, rewriting the file.
    Unopened, the store keeps its jobs in memory only (a run without a run directory).
    """

    def __init__(self) -> None:
        self.path: Path | None = None
        self.pending: dict[str, dict] = {}

    def open(self, path: str | Path, tmp_dir: str | Path | None = None) -> None:
        """Read ``path`` (if any), keep the jobs still waiting, and write there from now on."""
        from .results import atomic_write_text

        path = Path(path)
        pending: dict[str, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    key, status = entry["key"], entry["status"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill
                if status == SUBMITTED:
                    pending[key] = entry
                elif pending.get(key, {}).get("job_id") == entry.get("job_id"):
                    pending.pop(key)
        pending.update(self.pending)  # jobs submitted in this session before the run opened
        self.path, self.pending = path, pending
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in pending.values())
        atomic_write_text(path, text, tmp_dir)

    def submitted(self, key: str, job_id: str) -> None:
        """Record a job just submitted (on disk before anything waits for it)."""
        entry = {"key": key, "job_id": job_id, "status": SUBMITTED, "time": _utc()}
        self.pending[key] = entry
        self._append(entry)

    def finished(self, key: str, job_id: str, status: str) -> None:
        """The job's result was taken (``done``), or it can never give one (``error``,
        ``gone``): it is not polled again."""
        if self.pending.get(key, {}).get("job_id") == job_id:
            self.pending.pop(key)
        self._append({"key": key, "job_id": job_id, "status": status, "time": _utc()})

    def _append(self, entry: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _utc() -> str:
    from .results import now_utc

    return now_utc()


# --------------------------------------------------------------------------- the transport
class JobTransport:
    """Runs each NDIF request as a stored job: submit over HTTP, poll until answered.

    Replaces nnsight's blocking websocket exchange (``RemoteBackend.request``) under
    :func:`cgar_interp.remote.remote_session`. nnsight's own methods do the HTTP:
    ``_post`` submits (a :class:`~nnsight.schema.request.RequestModel` without a session id,
    so the server stores each status), ``poll`` reads ``GET /response/{job_id}`` and hands a
    COMPLETED result to ``download_result`` (or raises ``RemoteError`` on ERROR).

    Args:
        model: the model id (named in messages).
        ledger: the run's :class:`~cgar_interp.remote.RemoteLedger`: a request is counted when
            submitted (with its payload bytes), its result bytes when taken.
        store: the run's :class:`JobStore`.
        queue_timeout_s: how long one job may wait for a worker (status RECEIVED or QUEUED,
            or none yet) in this session before the run stops with a ``queue``
            :class:`~cgar_interp.remote.RemoteRunError`; the job id stays stored and
            ``--resume`` polls it. A job past the queue (provisioning, running) is not timed
            out here: NDIF ends a job that runs too long with an ERROR.
        log: prints one line (a reused job, a job sent again).
        queue_error: builds the exception a queue timeout raises from its one-line message
            (:func:`~cgar_interp.remote.remote_session` makes a ``queue``
            :class:`~cgar_interp.remote.RemoteRunError`).
    """

    def __init__(
        self,
        model: str,
        ledger,
        store: JobStore,
        queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
        log: Callable[[str], None] | None = None,
        queue_error: Callable[[str], Exception] = TimeoutError,
    ) -> None:
        self.model = model
        self.ledger = ledger
        self.store = store
        self.queue_timeout_s = queue_timeout_s
        self.log = log or (lambda _msg: None)
        self.queue_error = queue_error
        self._unkeyed = False  # logged once: a request without a key across processes

    def __call__(self, backend, request, blob: bytes):
        """The result of ``request`` (payload ``blob``): from a stored job of an earlier session
        with the same :func:`request_key` if there is one, else from a job submitted now."""
        try:
            key = request_key(blob, request)
        except Exception as err:  # noqa: BLE001 - the run goes on; only its resume is lost
            key = "bytes:" + hashlib.sha256(blob).hexdigest()  # this process's only
            if not self._unkeyed:
                self._unkeyed = True
                self.log(
                    f"an NDIF request could not be keyed ({type(err).__name__}: {err}); a "
                    "resumed run sends such a request again instead of polling its job"
                )
        stored = self.store.pending.get(key)
        if stored is not None:
            self.log(
                f"NDIF job {stored['job_id']} (submitted {stored['time']}) was sent before: "
                "polling it instead of sending the request again"
            )
            result, answered = self._wait(backend, key, stored["job_id"], earlier=True)
            if answered:
                return result
            self.log(f"NDIF no longer has job {stored['job_id']}: sending its request again")
        response = backend._post(request, blob)
        self.ledger.add(requests=1, bytes_up=len(blob))
        self.store.submitted(key, response.id)
        backend.job_id, backend.status = response.id, response.status
        if response.status.value in ("COMPLETED", "ERROR"):  # answered at once
            return self._taken(backend, key, response.id, lambda: backend.handle(response))
        backend.display.update(response)
        result, _ = self._wait(backend, key, response.id, earlier=False)
        return result

    def _wait(self, backend, key: str, job_id: str, *, earlier: bool):
        """Poll ``job_id`` until it completes: ``(result, True)``; ``(None, False)`` when a job
        of an earlier session is gone from the server (not found, or its result no longer
        downloadable)."""
        import httpx

        backend.job_id, backend.status = job_id, None
        started, delay, misses, lifecycle = _now(), POLL_FIRST_S, 0, None
        while True:
            try:
                result = self._taken(backend, key, job_id, backend.poll)
            except httpx.HTTPStatusError:
                if not earlier:
                    raise
                self.store.finished(key, job_id, "gone")
                return None, False
            status = None if backend.status is None else backend.status.value
            if status == "COMPLETED":
                return result, True
            if status is not None and status != "LOG":  # LOG: a message, not a stage
                lifecycle = status
            if status is None:
                misses += 1
                if earlier and misses >= GONE_AFTER_POLLS:
                    self.store.finished(key, job_id, "gone")
                    return None, False
            waited = _now() - started
            if lifecycle in QUEUE_STATUSES and waited > self.queue_timeout_s:
                where = self.store.path or "this session's memory (no run directory)"
                raise self.queue_error(
                    f"NDIF job {job_id} for model {self.model!r} is still "
                    f"{'queued' if lifecycle == 'QUEUED' else 'waiting for the queue'} after "
                    f"{waited:.0f} s (the suite's "
                    f"remote_queue_timeout_s is {self.queue_timeout_s:g}); its id is kept in "
                    f"{where}: rerun with --resume to poll it instead of sending it again",
                )
            _sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX_S)

    def _taken(self, backend, key: str, job_id: str, answer: Callable):
        """``answer()`` (a poll, or the handling of a final response), with the job marked
        ``done`` once its result is here or ``error`` when the server reported one."""
        from nnsight.intervention.backends.remote import RemoteError

        try:
            result = answer()
        except RemoteError:
            self.store.finished(key, job_id, "error")
            raise
        if backend.status is not None and backend.status.value == "COMPLETED":
            self.ledger.add(bytes_down=result_bytes(result))
            self.store.finished(key, job_id, "done")
        return result


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


# --------------------------------------------------------------------------- shared captures
class SharedCaptureFile:
    """One task's shared capture pass in a remote run directory (``captures/<task>/shared.pt``).

    :class:`~cgar_interp.probes.ProbeContext` saves its shared pass here after each part of it
    and, in a resumed run, starts from what is here (:meth:`ProbeContext.shared_state`); the
    runner removes the file when the task's last unit has finished. Plain tensors and
    containers only (``torch.load(weights_only=True)``). Its size is about what the shared
    pass downloaded.
    """

    def __init__(
        self,
        path: str | Path,
        tmp_dir: str | Path | None = None,
        log=None,
        root: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.tmp_dir = tmp_dir
        self.log = log or (lambda _msg: None)
        # the highest directory :meth:`discard` removes when it is left empty
        self.root = Path(root) if root is not None else self.path.parent

    def load(self) -> dict | None:
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unreadable: computed again
            self.log(f"{self.path} is unreadable ({type(err).__name__}): capturing again")
            return None
        return state if isinstance(state, dict) else None

    def save(self, state: dict) -> None:
        import torch

        from .results import atomic_write_bytes

        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.path, buffer.getvalue(), self.tmp_dir)

    def discard(self) -> None:
        """Remove the file, and the directories up to :attr:`root` that it leaves empty."""
        self.path.unlink(missing_ok=True)
        directory = self.path.parent
        while directory == self.root or self.root in directory.parents:
            with contextlib.suppress(OSError):  # not empty (or gone): left as it is
                directory.rmdir()
            if directory == self.root:
                break
            directory = directory.parent


def remote_dir(run_path: str | Path) -> Path:
    """``<run>/remote``: what a remote run keeps for ``--resume``."""
    return Path(run_path) / REMOTE_DIR


__all__ = [
    "DEFAULT_QUEUE_TIMEOUT_S",
    "JobStore",
    "JobTransport",
    "SharedCaptureFile",
    "remote_dir",
    "request_key",
    "result_bytes",
]

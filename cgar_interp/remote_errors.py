"""NDIF failures as one line that says what happened and what to do, and the API key kept out
of every message.

nnsight 0.8 (``nnsight/intervention/backends/remote.py``) reports a failed request in one of
these forms, which :func:`failure_kind` reads in this order:

- a transport failure of the POST: ``RemoteError("Failed to send request: <detail>")`` whose
  ``__cause__`` is the httpx error: ``HTTPStatusError`` (``.response.status_code``, the server's
  ``{"detail": ...}`` in the message), ``ConnectError``, ``ReadTimeout``, ...;
- a failed job: ``RemoteError(<the ERROR status' description>)``, no cause; NDIF's descriptions
  are its own sentences ("Model deployment evicted. Please try again later. ...") or, for an
  exception raised while the job ran, the server's traceback followed by the exception's text;
- the ``/subscribe`` websocket: ``websocket`` exceptions (``WebSocketBadStatusException`` with
  ``.status_code``, ``WebSocketConnectionClosedException``, ...) or ``ConnectionRefusedError``;
- the result download: raw httpx errors (a presigned storage url, not NDIF's API).

The ``__cause__`` / ``__context__`` chain is unwrapped; HTTP status codes decide first, then
exception types, then the words of NDIF's messages (quoted from NDIF's server sources in
``tests/test_remote_errors.py``). An exception raised while the job ran (a traceback) is
``job_failed`` unless it is an out-of-memory error, a preemption or NDIF's execution timeout:
"KeyError: ... not found" from the code sent is not a missing model.

:func:`scrub` removes the configured API key (``$NDIF_API_KEY``, nnsight's
``CONFIG.API.APIKEY``, and any key configured earlier in this process) from a string; every
message built here is scrubbed, and so are the manifest and the CLI's lines about failures.
"""

from __future__ import annotations

import os
import re
import sys

API_KEY_ENV = "NDIF_API_KEY"

FAILURE_KINDS = (
    "not_hosted",
    "queue",
    "timeout",
    "authentication",
    "connection",
    "unavailable",
    "out_of_memory",
    "version",
    "download",
    "rejected",
    "job_failed",
)
"""What went wrong, one word each; :func:`failure_message` says what to do about each."""

RESUME = "rerun with --resume (finished units are kept)"

REDACTED = "<NDIF API key>"
_MIN_KEY = 4  # shorter strings are not keys; replacing them would mangle every message
_SEEN_KEYS: set[str] = set()


class RemoteRunError(RuntimeError):
    """An NDIF request failed; ``kind`` is one of :data:`FAILURE_KINDS`, the message is one
    line (scrubbed of the API key), ``detail`` the server's whole text (scrubbed too)."""

    def __init__(self, kind: str, message: str, detail: str = ""):
        super().__init__(scrub(message))
        self.kind = kind
        self.detail = scrub(detail)


# ----------------------------------------------------------------------------- the key
def api_keys() -> set[str]:
    """Every NDIF API key configured in this process so far: ``$NDIF_API_KEY``, nnsight's
    ``CONFIG.API.APIKEY`` (when nnsight is imported), and the ones seen by earlier calls."""
    candidates = [os.environ.get(API_KEY_ENV)]
    nnsight = sys.modules.get("nnsight")
    config = getattr(nnsight, "CONFIG", None)
    if config is not None:
        candidates.append(getattr(config.API, "APIKEY", None))
    for key in candidates:
        if isinstance(key, str) and len(key.strip()) >= _MIN_KEY:
            _SEEN_KEYS.add(key.strip())
    return set(_SEEN_KEYS)


def scrub(text: str) -> str:
    """``text`` with every configured API key (:func:`api_keys`) replaced by ``<NDIF API key>``."""
    text = str(text)
    for key in sorted(api_keys(), key=len, reverse=True):
        text = text.replace(key, REDACTED)
    return text


def scrub_data(obj):
    """A JSON-like value (dicts, lists, strings) with :func:`scrub` applied to every string."""
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, dict):
        return {scrub_data(k): scrub_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(scrub_data(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------- classifying
# NDIF's API endpoints; an HTTP error on any other url is the result download (storage)
_NDIF_PATHS = re.compile(r"/(request|response/[^/]*|subscribe|status|whoami|env|ping)/?$")

# words of NDIF's messages per kind, checked in this order (lower case)
_WORDS = (
    (
        "not_hosted",
        (
            "not dedicated and hotswapping is not supported",
            "is not hosted",
            "not hosted on",
            "not deployed",
            "unknown model",
            "currently unavailable for deployment",
            "no such model",
        ),
    ),
    (
        "authentication",
        (
            "api key",
            "apikey",
            "unauthorized",
            "forbidden",
            "authenticat",
            "does not have authorization",
        ),
    ),
    (
        "version",
        (
            "nnsight version",
            "python version",
            "pip install --upgrade nnsight",
            "incompatible with the server",
        ),
    ),
    ("out_of_memory", ("out of memory", "outofmemoryerror")),
    (
        "queue",
        (
            "queue is full",
            "max capacity",
            "too many requests",
            "rate limit",
            "rate-limit",
        ),
    ),
    (
        "unavailable",
        (
            "temporarily unavailable",
            "service unavailable",
            "bad gateway",
            "error provisioning",
            "error initializing model",
            "error submitting request to model deployment",
            "failed to initialize",
            "evicted",
            "preempted",
            "unloaded to make room",
            "cannot be accomodated",
            "cannot be accommodated",
            "critical server error",
            "terminated by the scheduler",
            "became unavailable",
            "encountered an unexpected error",
            "no replicas available",
            "not ready yet",
            "failed to look up actor",
            "request cancelled",
            "redeploying",
        ),
    ),
    ("timeout", ("timed out", "timeout", "took longer than")),
)
# a model named as not found / not running (not "KeyError: 'x' not found in ...": see below)
_MODEL_MISSING = re.compile(
    r"\bmodel\b(?!\.)[^\n]{0,120}?\bnot (found|deployed|hosted|running|available|supported)\b"
)
# an exception raised while the job ran: a traceback, or a line "SomeError: ..."
_TRACEBACK = re.compile(r"traceback \(most recent call last\)", re.I)
_EXCEPTION_LINE = re.compile(
    r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Interrupt|Exit)|Exception)(:|$)", re.M
)
# what a job's own exception may still be NDIF's doing
_JOB_WORDS = (
    ("out_of_memory", ("out of memory", "outofmemoryerror")),
    ("unavailable", ("preempted", "failed to look up actor", "device-side assert")),
    ("timeout", ("took longer than timeout",)),
)
_VERSION_STATUS = (400, 426)


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its ``__cause__`` / ``__context__`` chain, outermost first, each once."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo += [e.__cause__, e.__context__]
    return out


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _from_ndif(err: BaseException) -> bool:
    """nnsight's RemoteError, an httpx or a websocket-client error, or a refused or reset
    connection (websocket-client raises the socket's own ``ConnectionRefusedError``)."""
    module = type(err).__module__ or ""
    names = _names(err)
    return (
        "RemoteError" in names
        or module.split(".")[0] in ("httpx", "httpcore", "websocket")
        or bool(names & {"WebSocketException", "ConnectionError", "gaierror", "herror"})
    )


def _status(err: BaseException) -> int | None:
    code = getattr(getattr(err, "response", None), "status_code", None)
    if code is None:
        code = getattr(err, "status_code", None)  # websocket.WebSocketBadStatusException
    return code if isinstance(code, int) and 100 <= code < 600 else None


def _has_request(err: BaseException) -> bool:
    try:
        return err.request is not None  # httpx raises RuntimeError when it has none
    except (AttributeError, RuntimeError):
        return False


def _is_download(err: BaseException) -> bool:
    """An HTTP error on a url that is not one of NDIF's endpoints (the result download)."""
    if not _has_request(err):
        return False
    path = getattr(getattr(err.request, "url", None), "path", None)
    return isinstance(path, str) and not _NDIF_PATHS.search(path)


def _words(text: str) -> str | None:
    low = text.lower()
    if _MODEL_MISSING.search(low) and not _EXCEPTION_LINE.search(text):
        return "not_hosted"
    for kind, words in _WORDS:
        if any(w in low for w in words):
            return kind
    return None


def _is_job_exception(text: str) -> bool:
    return bool(_TRACEBACK.search(text) or _EXCEPTION_LINE.search(text))


def _by_status(code: int, text: str, download: bool) -> str:
    if download:
        return "download"
    if code in (401, 403):
        return "authentication"
    if code == 404:
        return "not_hosted"
    if code in (408, 504):
        return "timeout"
    if code == 429:
        return "queue"
    if code in _VERSION_STATUS:
        return "version" if _words(text) == "version" else "rejected"
    if code >= 500:
        return "queue" if _words(text) == "queue" else "unavailable"
    return "rejected"


def _by_type(err: BaseException) -> str | None:
    names = _names(err)
    if "ConnectTimeout" in names:  # the service did not answer the connection at all
        return "connection"
    if names & {"TimeoutException", "WebSocketTimeoutException", "TimeoutError"}:
        return "timeout"
    if names & {
        "NetworkError",
        "ProtocolError",
        "ProxyError",
        "UnsupportedProtocol",
        "TransportError",
        "WebSocketConnectionClosedException",
        "WebSocketAddressException",
        "WebSocketProxyException",
        "WebSocketProtocolException",
        "ConnectionError",
        "gaierror",
        "herror",
    }:
        return "connection"
    return None


def failure_kind(err: BaseException) -> str | None:
    """The kind of an NDIF failure (:data:`FAILURE_KINDS`), or None for any other error.

    Status codes first (anywhere in the chain), then exception types, then the words of the
    messages; an error with nothing from nnsight, httpx or websocket in its chain is None.
    """
    chain = _chain(err)
    if not any(_from_ndif(e) for e in chain):
        return None
    text = "\n".join(str(e) for e in chain)
    for e in chain:
        code = _status(e)
        if code is not None:
            return _by_status(code, text, _is_download(e))
    for e in chain:
        kind = _by_type(e)
        if kind is not None:
            return "download" if kind != "timeout" and _is_download(e) else kind
    if _is_job_exception(text):  # the job raised: the code sent, unless NDIF's doing
        low = text.lower()
        for kind, words in _JOB_WORDS:
            if any(w in low for w in words):
                return kind
        return "job_failed"
    kind = _words(text)
    if kind is not None:
        return kind
    return "rejected" if any("RemoteError" in _names(e) for e in chain) else None


def failure_detail(err: BaseException, limit: int = 240) -> str:
    """What the server or the transport said, on one line (scrubbed): the HTTP status and the
    server's reason, a job's exception line (not its traceback), or the error's own text."""
    chain = _chain(err)
    code = next((c for c in map(_status, chain) if c is not None), None)
    text = str(err)
    if _is_job_exception(text):
        lines = [m.group(0) for m in re.finditer(r"^.*$", text, re.M) if m.group(0).strip()]
        exceptions = [line for line in lines if _EXCEPTION_LINE.match(line)]
        text = exceptions[-1] if exceptions else lines[-1] if lines else text
    text = re.sub(r"^Failed to send request:\s*", "", text.strip())
    if code is not None and "RemoteError" not in _names(err):  # httpx's own, e.g. a download
        url = getattr(getattr(err, "request", None), "url", None) if _has_request(err) else None
        text = f"HTTP {code} from {url.copy_with(query=None)}" if url is not None else text
        text = text if str(code) in text else f"HTTP {code}: {text}"
    elif code is not None:
        text = text if str(code) in text else f"HTTP {code}: {text}"
    else:  # name the transport error: nnsight's RemoteError wraps it as its __cause__
        named = err
        if "RemoteError" in _names(err):
            named = next(
                (e for e in chain[1:] if _from_ndif(e) and "RemoteError" not in _names(e)), None
            )
        if named is not None:
            text = f"{type(named).__name__}: {text}" if text else type(named).__name__
    text = " ".join(scrub(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_message(kind: str, model: str | None, detail: str = "") -> str:
    """One line: what happened (naming the model) and what to do, then ``[detail]``."""
    if kind not in FAILURE_KINDS:
        raise ValueError(f"failure kind {kind!r} is not one of {', '.join(FAILURE_KINDS)}")
    of = f" model {model!r}" if model else " the model"
    what = {
        "not_hosted": f"NDIF does not run{of}: pick a model NDIF lists as running "
        "(`cgar info --remote`), or run this one locally without --remote",
        "queue": f"NDIF's queue for{of} is full or the key's rate limit was reached: wait a few "
        f"minutes, then {RESUME}",
        "timeout": f"a request for{of} timed out on NDIF: lower batch_size / remote_rows / "
        f"remote_session_rows so each request does less, then {RESUME}",
        "authentication": f"NDIF refused the API key for{of}: set a valid key in ${API_KEY_ENV} "
        "or store one with nnsight.login() (keys are issued at https://login.ndif.us), then "
        f"{RESUME}",
        "connection": f"could not reach NDIF, or the connection dropped, during a request for"
        f"{of}: check the network (and $NDIF_HOST if set), then {RESUME}",
        "unavailable": f"NDIF cannot serve{of} right now (provisioning, evicted or preempted, or "
        f"the service restarting): wait a few minutes (`cgar info --remote` lists what runs), "
        f"then {RESUME}",
        "out_of_memory": f"NDIF's GPU ran out of memory on a request for{of}: lower batch_size / "
        f"remote_rows / remote_session_rows in the suite, then {RESUME}",
        "version": f"NDIF refused this client's nnsight or Python version for{of}: install the "
        f"versions the server names (`cgar run --remote --dry-run` compares them), then {RESUME}",
        "download": f"downloading a result for{of} from NDIF's storage failed: {RESUME}",
        "rejected": f"NDIF rejected a request for{of} (its reason in brackets): fix that, then "
        f"{RESUME}",
        "job_failed": f"a request for{of} raised an error while running on NDIF (its last line "
        "in brackets): the code sent failed, not NDIF, so a rerun fails the same way; report it "
        "with the run directory",
    }[kind]
    detail = " ".join(scrub(str(detail)).split())
    return scrub(f"{what} [{detail}]" if detail else what)


def remote_failure(err: BaseException, model: str | None) -> RemoteRunError | None:
    """``err`` as a :class:`RemoteRunError` with its one-line message, or None when it is not
    an NDIF failure (:func:`failure_kind`). A RemoteRunError is returned as it is."""
    if isinstance(err, RemoteRunError):
        return err
    kind = failure_kind(err)
    if kind is None:
        return None
    whole = "\n".join(str(e) for e in _chain(err))
    return RemoteRunError(kind, failure_message(kind, model, failure_detail(err)), detail=whole)


__all__ = [
    "API_KEY_ENV",
    "FAILURE_KINDS",
    "REDACTED",
    "RemoteRunError",
    "api_keys",
    "failure_detail",
    "failure_kind",
    "failure_message",
    "remote_failure",
    "scrub",
    "scrub_data",
]

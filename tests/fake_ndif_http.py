"""NDIF's HTTP API and ``/subscribe`` websocket, faked below nnsight's real client code.

``NDIFService.install(monkeypatch)`` makes every ``httpx.Client`` (nnsight's ``_post``, the
result download, ``nnsight.ndif``'s GETs, the preflight's) use ``httpx.MockTransport`` with
:meth:`NDIFService.handle`, and ``websocket.create_connection`` return a :class:`FakeSocket`.
nnsight's ``RemoteBackend.request`` runs unchanged: subscribe, take the session id, POST the
serialized request as multipart form data, read status frames (``ResponseModel`` JSON) until
COMPLETED or ERROR, download the result. No socket is opened (the ``no_network`` fixture of
``tests/test_remote.py`` stays active).

A request is answered by ``on_request(meta, blob)``: an ``httpx.Response`` (the POST fails),
or a list of frames ``(status, description)`` sent after the RECEIVED reply, or a dict of saved
values, sent back as QUEUED, RUNNING, a LOG line and COMPLETED with a download url. A blocking
request (with a session id: nnsight's websocket path) reads the frames over its websocket; a
submitted one (no session id: nnsight's non-blocking path, which cgar_interp's job transport
uses) reads one per ``GET /response/{job}``.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import sys
from collections.abc import Callable
from importlib.metadata import version

import httpx

STORAGE = "https://storage.example.org/results"


def multipart(request: httpx.Request) -> dict[str, bytes]:
    """The parts of a multipart/form-data body, by field name."""
    boundary = request.headers["content-type"].split("boundary=", 1)[1].strip('"').encode()
    parts = {}
    for chunk in request.content.split(b"--" + boundary):
        if b"\r\n\r\n" not in chunk:
            continue
        head, body = chunk.split(b"\r\n\r\n", 1)
        name = re.search(rb'name="([^"]+)"', head)
        if name:
            parts[name.group(1).decode()] = body[:-2] if body.endswith(b"\r\n") else body
    return parts


class FakeSocket:
    """The ``/subscribe`` websocket: the session id first, then the frames a request queued."""

    def __init__(self, service: NDIFService, url: str, header: dict | None):
        self.service, self.url, self.header = service, url, header or {}
        self.frames: list[str | bytes] = [json.dumps({"session_id": "session-1"})]
        self.closed = False

    def recv(self):
        if not self.frames:
            import websocket

            raise websocket.WebSocketConnectionClosedException("fake NDIF: no frame left")
        frame = self.frames.pop(0)
        if isinstance(frame, BaseException):
            raise frame
        return frame

    def settimeout(self, seconds):
        pass

    def close(self):
        self.closed = True


def frame(job: str, status: str, description: str = "", data=None) -> str:
    from nnsight.schema.response import ResponseModel

    return ResponseModel(
        id=job, status=status, description=description, data=data
    ).model_dump_json()


class NDIFService:
    """A fake NDIF: ``/status``, ``/whoami``, ``/env``, ``/request``, ``/subscribe``, storage.

    Args:
        key: the one API key it knows (``/whoami`` answers its email, other keys None).
        running: repo ids it reports RUNNING (HOT).
        on_request: answers a POSTed request (see the module docstring); None: refuses.
    """

    def __init__(
        self,
        key: str,
        running: tuple[str, ...] = (),
        on_request: Callable | None = None,
        email: str = "researcher@example.org",
    ):
        self.key, self.email = key, email
        self.status = {
            "deployments": {
                f"{repo}:{i}": {
                    "repo_id": repo,
                    "model_key": f'nnsight.modeling.language.LanguageModel:{{"repo_id": "{repo}"}}',
                    "deployment_level": "HOT",
                    "application_state": "RUNNING",
                }
                for i, repo in enumerate(running)
            }
        }
        self.env = {
            "python_version": sys.version,
            "packages": {name: version(name) for name in ("nnsight", "torch", "transformers")},
        }
        self.whoami: dict | None = None  # None: by key
        self.routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.on_request = on_request
        self.sockets: list[FakeSocket] = []
        self.posted: list[dict] = []
        self.seen: list[httpx.Request] = []
        self.results: dict[str, bytes] = {}
        self.polls: dict[str, list] = {}  # a non-blocking job's statuses, one per GET
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ install
    def install(self, monkeypatch) -> NDIFService:
        import websocket

        service = self
        init = httpx.Client.__init__

        def client_init(client, *args, **kwargs):
            kwargs["transport"] = httpx.MockTransport(service.handle)
            kwargs["trust_env"] = False  # no proxy mounts: every url goes to the mock
            init(client, *args, **kwargs)

        monkeypatch.setattr(httpx.Client, "__init__", client_init)
        monkeypatch.setattr(websocket, "create_connection", self.connect)
        return self

    def connect(self, url, header=None, **kwargs):
        sock = FakeSocket(self, url, header)
        self.sockets.append(sock)
        return sock

    # ------------------------------------------------------------------ HTTP
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path in self.routes:
            return self.routes[path](request)
        if str(request.url).startswith(STORAGE):
            blob = self.results.get(path.rsplit("/", 1)[-1])
            return httpx.Response(200, content=blob) if blob else httpx.Response(404)
        if path == "/status":
            return httpx.Response(200, json=self.status)
        if path == "/whoami":
            if self.whoami is not None:
                return httpx.Response(200, json=self.whoami)
            known = request.headers.get("ndif-api-key") == self.key
            return httpx.Response(200, json={"email": self.email if known else None, "tags": []})
        if path == "/env":
            return httpx.Response(200, json=self.env)
        if path == "/request" and request.method == "POST":
            return self.request(request)
        if path.startswith("/response/") and request.method == "GET":
            return self.poll(path.rsplit("/", 1)[-1])
        return httpx.Response(404, json={"detail": "Not Found"})

    def request(self, request: httpx.Request) -> httpx.Response:
        parts = multipart(request)
        meta = json.loads(parts["data"])
        self.posted.append({"meta": meta, "blob": parts["blob"], "headers": dict(request.headers)})
        if self.on_request is None:
            return httpx.Response(500, json={"detail": "fake NDIF: no answer configured"})
        answer = self.on_request(meta, parts["blob"])
        if isinstance(answer, httpx.Response):
            return answer
        job = f"job-{next(self._ids)}"
        if isinstance(answer, dict):  # saved values: the job runs and its result is stored
            self.results[job] = self.result_blob(answer, meta.get("compress", False))
            answer = [
                ("QUEUED", "Moved to position 1 in Queue."),
                ("RUNNING", "Your job has started running."),
                ("LOG", "a line the job printed on the server"),
                ("COMPLETED", "Your job has been completed.", f"{STORAGE}/{job}"),
            ]
        frames = [item if isinstance(item, BaseException) else frame(job, *item) for item in answer]
        if meta.get("session_id"):  # a blocking request: the frames go over its websocket
            self.sockets[-1].frames.extend(frames)
        else:  # submitted without a websocket: each GET /response/{job} reads the next status
            self.polls[job] = frames
        received = frame(job, "RECEIVED", "Your job has been received and is waiting to be queued.")
        return httpx.Response(200, text=received)

    def poll(self, job: str) -> httpx.Response:
        """``GET /response/{job}``: the job's next status (the last one once all are read); an
        exception among them is raised, as a broken connection would be."""
        frames = self.polls.get(job)
        if not frames:
            return httpx.Response(404, json={"detail": "no status recorded yet"})
        item = frames.pop(0) if len(frames) > 1 else frames[0]
        if isinstance(item, BaseException):
            raise item
        return httpx.Response(200, text=item)

    @staticmethod
    def result_blob(saved: dict, compress: bool) -> bytes:
        import torch

        buffer = io.BytesIO()
        torch.save(saved, buffer)
        data = buffer.getvalue()
        if compress:
            import zstandard

            data = zstandard.ZstdCompressor(level=6).compress(data)
        return data


def executing(server_model) -> Callable:
    """``on_request`` that runs each payload against ``server_model`` with ``cgar_interp``
    unimportable (``tests.test_remote.FakeNDIF.run``) and answers its saved values."""
    from types import SimpleNamespace

    from tests.test_remote import FakeNDIF

    fake = FakeNDIF(server_model)

    def answer(meta: dict, blob: bytes) -> dict:
        return fake.run(SimpleNamespace(compress=meta.get("compress", False)), blob)

    return answer


def placeholders(meta_model) -> Callable:
    """``on_request`` that runs each payload on ``meta_model`` (a remote handle's meta-device
    model: shapes only, no arithmetic) and answers placeholders of the saved values' shapes,
    as :class:`cgar_interp.remote.DryServer` does: cheap, for tests of everything but values."""
    from cgar_interp.remote import DryServer

    server = DryServer()
    server.meta_model = meta_model  # not attach(): no hub-id cache entry is added

    def answer(meta: dict, blob: bytes) -> dict:
        return server.answer(blob, meta.get("compress", False))

    return answer

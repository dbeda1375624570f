"""NDIF failures through nnsight's real request code, one line each, and the API key nowhere.

Every failure here goes through ``RemoteBackend.request`` as nnsight 0.8 runs it: subscribe on
the websocket, POST the serialized request with httpx, read the status frames, download the
result. Only the far ends are fake (``tests/fake_ndif_http.py``: ``httpx.MockTransport`` and a
fake websocket), so the exceptions are the ones nnsight raises: ``RemoteError("Failed to send
request: ...")`` over an httpx error, ``RemoteError(<description>)`` for a failed job, websocket
errors, httpx errors of the download. The server texts are NDIF's own (ndif-team/ndif:
``src/services/api/src/dependencies.py``, ``queue/processor.py``, ``queue/dispatcher.py``,
``ray/deployments/modeling/base.py``, and the coordinator of its ``df-deployment`` branch).
No socket is opened (``no_network``).
"""

from __future__ import annotations

import json
import warnings

import httpx
import pytest

from cgar_interp.remote import (
    FAILURE_KINDS,
    RemoteRunError,
    failure_kind,
    failure_message,
    remote_session,
    scrub,
)
from cgar_interp.remote_errors import REDACTED, failure_detail
from tests.fake_ndif_http import STORAGE, NDIFService, executing, placeholders
from tests.test_remote import (  # noqa: F401  (fixtures)
    FAKE_KEY,
    ndif_env,
    no_network,
    remote,
    weightless_dir,
)
from tests.test_remote_runner import weightless_embedded  # noqa: F401  (fixture)


def server_traceback(exception_line: str, message: str) -> str:
    """An ERROR description as NDIF's model actor sends it: ``f"{traceback}\\n{exception}"``."""
    return (
        "Traceback (most recent call last):\n"
        '  File "/src/services/ray/src/ray/deployments/modeling/base.py", line 205, in __call__\n'
        "    result = await job_task\n"
        '  File "/src/services/ray/src/ray/nn/backend.py", line 41, in __call__\n'
        "    fn(model, *inputs)\n"
        f"{exception_line}\n\n{message}"
    )


OOM = (
    "CUDA out of memory. Tried to allocate 3.91 GiB. GPU 0 has a total capacity of 79.19 GiB of "
    "which 2.53 GiB is free. Including non-PyTorch memory, this process has 76.65 GiB memory in "
    "use."
)
SORRY = "Please try again later. Sorry for the inconvenience."


def post_answer(status: int, detail: str):
    return lambda meta, blob: httpx.Response(status, json={"detail": detail})


def job_error(description: str):
    return lambda meta, blob: [("QUEUED", "Moved to position 1 in Queue."), ("ERROR", description)]


def raising(error: BaseException):
    def answer(meta, blob):
        raise error

    return answer


# (case, on_request, kind, words the message must hold)
CASES = [
    (
        "401 with the key echoed",
        post_answer(
            401,
            f"Missing or invalid API key {FAKE_KEY}. Please visit https://login.ndif.us/ to "
            "create a new one.",
        ),
        "authentication",
        ["NDIF_API_KEY", "nnsight.login()", "HTTP 401"],
    ),
    ("404 on /request", post_answer(404, "Not Found"), "not_hosted", ["cgar info --remote"]),
    (
        "503 temporarily unavailable",
        post_answer(
            503,
            "Service temporarily unavailable: compute backend is reconnecting. Please try again "
            "in a few minutes.",
        ),
        "unavailable",
        ["--resume", "HTTP 503", "temporarily unavailable"],
    ),
    ("429", post_answer(429, "Too Many Requests"), "queue", ["--resume", "HTTP 429"]),
    (
        "400 nnsight version",
        post_answer(
            400,
            "Client nnsight version 0.8.1 is incompatible with the server nnsight version. The "
            "minimum supported version is 0.9.0. Please update nnsight to the latest version: "
            "`pip install --upgrade nnsight`",
        ),
        "version",
        ["minimum supported version is 0.9.0"],
    ),
    (
        "CUDA out of memory",
        job_error(server_traceback(f"torch.OutOfMemoryError: {OOM}", OOM)),
        "out_of_memory",
        ["batch_size / remote_rows", "--resume", "torch.OutOfMemoryError: CUDA out of memory"],
    ),
    (
        "Error provisioning model",
        job_error(f"Error provisioning model deployment. {SORRY}"),
        "unavailable",
        ["--resume", "Error provisioning model deployment"],
    ),
    (
        "eviction",
        job_error(f"Model deployment evicted. {SORRY}"),
        "unavailable",
        ["--resume", "evicted"],
    ),
    (
        "unloaded for another model",
        job_error(
            "Your request could not be processed because the model was unloaded to make room "
            "for another model. Please submit your request again to attempt redeployment."
        ),
        "unavailable",
        ["--resume"],
    ),
    (
        "preemption",
        job_error(
            server_traceback(
                "Exception: Your job was cancelled or preempted by the server.",
                "Your job was cancelled or preempted by the server.",
            )
        ),
        "unavailable",
        ["--resume", "preempted"],
    ),
    (
        "execution timeout",
        job_error(
            server_traceback(
                "Exception: Job took longer than timeout: 3600.0 seconds",
                "Job took longer than timeout: 3600.0 seconds",
            )
        ),
        "timeout",
        ["batch_size / remote_rows", "--resume"],
    ),
    (
        "queue at capacity",
        job_error("Queue has currently at max capacity of 64, please try again later."),
        "queue",
        ["--resume"],
    ),
    (
        "not dedicated, no hot-swapping",
        job_error(
            "Model is not dedicated and hotswapping is not supported for this API key. See "
            "https://nnsight.net/status/ for a list of scheduled models."
        ),
        "not_hosted",
        ["cgar info --remote"],
    ),
    (
        "user code KeyError saying not found",
        job_error(
            server_traceback(
                "KeyError: \"Envoy 'model.layers.99' not found in model.layers\"",
                "\"Envoy 'model.layers.99' not found in model.layers\"",
            )
        ),
        "job_failed",
        ["KeyError", "a rerun fails the same way"],
    ),
    (
        "connection refused on POST",
        raising(httpx.ConnectError("[Errno 111] Connection refused")),
        "connection",
        ["--resume", "Connection refused"],
    ),
    (
        "read timeout on POST",
        raising(httpx.ReadTimeout("The read operation timed out")),
        "timeout",
        ["--resume", "ReadTimeout"],
    ),
    (
        "websocket dropped mid-job",
        lambda meta, blob: [
            ("QUEUED", "Moved to position 2 in Queue."),
            __import__("websocket").WebSocketConnectionClosedException(
                "Connection to remote host was lost."
            ),
        ],
        "connection",
        ["--resume"],
    ),
    (
        "result url expired",
        lambda meta, blob: [("COMPLETED", "Your job has been completed.", f"{STORAGE}/gone")],
        "download",
        ["--resume", "HTTP 404"],
    ),
]


@pytest.fixture
def service(monkeypatch, ndif_env):
    return NDIFService(FAKE_KEY, running=(ndif_env,)).install(monkeypatch)


def capture_remotely(handle, model_id):
    """One remote capture through nnsight's request code, inside the failure wrapper."""
    batch = handle.tokenize(["w1 w2 w3 w4", "w5 w6"])
    with remote_session(model_id):
        return handle.capture(batch, ["resid.1"], positions=-1)


@pytest.mark.parametrize(("case", "answer", "kind", "words"), CASES, ids=[c[0] for c in CASES])
def test_each_ndif_failure_is_one_line_of_its_kind_without_the_key(
    case, answer, kind, words, service, remote, ndif_env
):
    service.on_request = answer
    with pytest.raises(RemoteRunError) as caught:
        capture_remotely(remote, ndif_env)
    err = caught.value
    assert service.posted, "the request did not reach the transport"
    assert service.posted[0]["headers"]["ndif-api-key"] == FAKE_KEY  # sent in the header only
    assert err.kind == kind, (case, str(err))
    message = str(err)
    assert "\n" not in message and repr(ndif_env) in message
    for word in words:
        assert word in message, (case, word, message)
    assert FAKE_KEY not in message and FAKE_KEY not in err.detail
    assert err.__cause__ is None and err.__suppress_context__  # no chained text with the key
    if "echoed" in case:
        assert REDACTED in message


def test_connection_refused_at_the_post_and_a_401_while_polling(service, remote, ndif_env):
    """The job transport (nnsight's non-blocking path: POST /request, then GET /response/{id})
    fails at either end with one line of the right kind, and never shows the key."""

    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    service.routes["/request"] = refuse
    with pytest.raises(RemoteRunError) as caught:
        capture_remotely(remote, ndif_env)
    assert caught.value.kind == "connection" and "--resume" in str(caught.value)

    del service.routes["/request"]
    service.on_request = lambda meta, blob: [("QUEUED", "Moved to position 1 in Queue.")]
    unauthorized = httpx.Response(401, json={"detail": f"invalid key {FAKE_KEY}"})
    service.routes["/response/job-1"] = lambda request: unauthorized
    with pytest.raises(RemoteRunError) as caught:
        capture_remotely(remote, ndif_env)
    assert caught.value.kind == "authentication"
    assert FAKE_KEY not in str(caught.value) and FAKE_KEY not in caught.value.detail
    assert len(service.posted) == 1  # submitted once, then the poll was refused


def test_the_fake_transport_answers_like_a_local_run(service, remote, ndif_env, tiny_handles):
    """Guard for the failures above: through the same transport, a request that succeeds gives
    the local model's values (the payload ran on the fake server with cgar_interp hidden)."""
    service.on_request = executing(tiny_handles["nnsight"].backend.engine)
    got = capture_remotely(remote, ndif_env)
    batch = tiny_handles["nnsight"].tokenize(["w1 w2 w3 w4", "w5 w6"])
    want = tiny_handles["nnsight"].capture(batch, ["resid.1"], positions=-1)
    assert len(service.posted) == 1 and service.posted[0]["meta"]["compress"] is True
    assert got["resid.1"].shape == want["resid.1"].shape
    assert (got["resid.1"] - want["resid.1"]).abs().max() < 1e-5


# ----------------------------------------------------------------------------- classifying
def remote_error(text: str, cause: BaseException | None = None):
    from nnsight.intervention.backends.remote import RemoteError

    err = RemoteError(text)
    err.__cause__ = cause
    return err


def status_error(code: int, url: str = "https://api.ndif.us/request", detail: str = "x"):
    request = httpx.Request("POST", url)
    response = httpx.Response(code, request=request, json={"detail": detail})
    return httpx.HTTPStatusError(f"{code}", request=request, response=response)


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (remote_error("KeyError: 'resid.99' not found in the model's sites"), "job_failed"),
        (remote_error("Model meta-llama/Llama-3.1-70B is not found on this server"), "not_hosted"),
        (remote_error("Model 'x/y' is not deployed"), "not_hosted"),
        (remote_error("Failed to send request: Not Found", status_error(404)), "not_hosted"),
        (remote_error("Failed to send request: x", status_error(502)), "unavailable"),
        (status_error(404, f"{STORAGE}/job-1"), "download"),
        (status_error(403, "https://bucket.s3.amazonaws.com/r?X-Amz-Signature=1"), "download"),
        (status_error(403), "authentication"),
        (
            remote_error(
                "Failed to send request: API key does not have authorization to access the "
                "requested model: meta-llama/Llama-3.1-405B."
            ),
            "authentication",
        ),
        (remote_error(f"Critical server error occurred. {SORRY}"), "unavailable"),
        (
            remote_error(
                "Queue service is not ready yet (waiting to connect to the ray backend). Please "
                "try again in a bit."
            ),
            "unavailable",
        ),
        (
            remote_error("Client python version 3.11 does not match server version: 3.12."),
            "version",
        ),
        (remote_error("something NDIF never says"), "rejected"),
        (httpx.ConnectTimeout("timed out"), "connection"),
        (httpx.WriteTimeout("timed out"), "timeout"),
        (ValueError("the model was not found"), None),  # not from NDIF at all
        (KeyError("not found"), None),
        (PermissionError(13, "Permission denied"), None),  # a local file, not the network
    ],
)
def test_failure_kinds_read_status_then_type_then_words(err, kind):
    assert failure_kind(err) == kind
    if kind is not None:
        message = failure_message(kind, "meta-llama/Llama-3.1-70B", failure_detail(err))
        assert "\n" not in message and "'meta-llama/Llama-3.1-70B'" in message


def test_a_cause_two_levels_down_decides():
    inner = status_error(401)
    middle = RuntimeError("wrapped")
    middle.__context__ = inner
    assert failure_kind(remote_error("Failed to send request: x", middle)) == "authentication"


def test_every_kind_has_a_message_and_the_resume_hint_where_a_rerun_helps():
    for kind in FAILURE_KINDS:
        message = failure_message(kind, "m/x", "d")
        assert message.endswith("[d]") and "\n" not in message
        assert ("--resume" in message) == (kind not in ("not_hosted", "job_failed")), kind
    with pytest.raises(ValueError, match="not one of"):
        failure_message("weather", "m/x")


def test_scrub_removes_the_key_from_the_environment_and_from_nnsights_config(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setenv("NDIF_API_KEY", FAKE_KEY)
    monkeypatch.setattr(CONFIG.API, "APIKEY", "saved-by-nnsight-login-0123")
    text = f"key {FAKE_KEY} and saved-by-nnsight-login-0123 and the word key"
    assert scrub(text) == f"key {REDACTED} and {REDACTED} and the word key"
    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    assert "saved-by-nnsight-login-0123" not in scrub("saved-by-nnsight-login-0123")  # seen once


# ----------------------------------------------------------------------------- the CLI
SUITE = """name = "tiny_remote"
model = "{model}"
backend = "nnsight"
dtype = "float32"
tasks = ["sst2-mini"]
n_fit = 4
n_eval = 4
n_boot = 10
[[probe]]
kind = "task_vectors"
layers = [10, 20]
"""


@pytest.fixture
def embedded_remote(monkeypatch, weightless_embedded, tmp_path):
    """A tiny suite on the weightless embedded model, a fake key, NDIF running that model."""
    from nnsight import CONFIG
    from nnsight.modeling import huggingface

    monkeypatch.setenv("NDIF_API_KEY", FAKE_KEY)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(CONFIG.APP, "REMOTE_LOGGING", True)  # nnsight's status line is on
    model_id = str(weightless_embedded.resolve())
    monkeypatch.setitem(huggingface._ID_CACHE, model_id, model_id)
    suite = tmp_path / "tiny_remote.toml"
    suite.write_text(SUITE.format(model=model_id))
    service = NDIFService(FAKE_KEY, running=(model_id,)).install(monkeypatch)
    return suite, service, model_id


def invoke(args):
    from typer.testing import CliRunner

    from cgar_interp.cli import app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(app, args)


@pytest.mark.integration
@pytest.mark.parametrize("reply", ["401 on the POST", "a job error quoting the key"])
def test_cgar_run_remote_prints_one_line_and_the_key_nowhere(
    reply, embedded_remote, tmp_path, capfd
):
    suite, service, model_id = embedded_remote
    if reply == "401 on the POST":
        service.on_request = post_answer(401, f"invalid key {FAKE_KEY}")
        kind = "authentication"
    else:
        service.on_request = job_error(
            server_traceback(f"ValueError: bad header ndif-api-key={FAKE_KEY}", "bad header")
        )
        kind = "job_failed"
    out = tmp_path / "run"
    done = invoke(["run", str(suite), "--remote", "--out", str(out)])
    assert done.exit_code == 3, done.output
    assert service.posted, "nothing reached the transport"
    lines = [line for line in done.stderr.splitlines() if "NDIF failure" in line]
    assert len(lines) == 1 and f"NDIF failure ({kind})" in lines[0]
    assert f"--out {out} --remote --resume" in lines[0]
    assert "Traceback" not in done.output
    captured = capfd.readouterr()
    for text in (done.stdout, done.stderr, captured.out, captured.err):
        assert FAKE_KEY not in text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files, "the run wrote nothing"
    for path in files:
        assert FAKE_KEY.encode() not in path.read_bytes(), path
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "remote_failed"
    assert manifest["remote"]["error"]["kind"] == kind


@pytest.mark.integration
def test_cgar_run_remote_catches_an_nnsight_error_outside_a_request(
    embedded_remote, tmp_path, monkeypatch
):
    """A RemoteError raised where no request wrapper sees it still ends in one line."""
    from nnsight.intervention.backends.remote import RemoteError

    import cgar_interp.runner as runner

    suite, service, model_id = embedded_remote

    def broken(*args, **kwargs):
        raise RemoteError(f"Model deployment evicted. {SORRY}")

    monkeypatch.setattr(runner, "_run_suite", broken)
    done = invoke(["run", str(suite), "--remote", "--out", str(tmp_path / "run")])
    assert done.exit_code == 3, done.output
    assert "NDIF failure (unavailable)" in done.stderr and "--resume" in done.stderr
    assert "Traceback" not in done.output


@pytest.mark.integration
def test_jsonl_stdout_stays_json_lines_while_nnsight_prints_its_status(embedded_remote, tmp_path):
    from cgar_interp.models import load_model

    suite, service, model_id = embedded_remote
    meta = load_model(model_id, backend="nnsight", remote=True, dtype="float32")
    service.on_request = placeholders(meta.backend.engine)  # shapes only: the run is cheap
    out = tmp_path / "run"
    args = ["run", str(suite), "--remote", "--jsonl", "--out", str(out)]
    done = invoke([*args, "--allow-self-check-failure"])  # placeholders disagree with a forward
    assert done.exit_code == 0, done.output
    assert len(service.posted) > 1
    records = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert records[-1]["event"] == "finished" and records[-1]["run_dir"] == str(out)
    assert any(r["event"] == "unit" and "NDIF preflight" in r["message"] for r in records)
    # nnsight's status lines went to stderr, not away
    assert "a line the job printed on the server" in done.stderr
    assert "COMPLETED" in done.stderr


@pytest.mark.integration
def test_jsonl_failure_is_a_json_error_event(embedded_remote, tmp_path):
    suite, service, model_id = embedded_remote
    service.on_request = job_error(server_traceback(f"torch.OutOfMemoryError: {OOM}", OOM))
    done = invoke(["run", str(suite), "--remote", "--jsonl", "--out", str(tmp_path / "r")])
    assert done.exit_code == 3
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[-1]["event"] == "error" and records[-1]["kind"] == "out_of_memory"
    assert records[-1]["resume"].endswith("--remote --resume")

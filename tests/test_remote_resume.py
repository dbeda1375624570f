"""A remote run's ``--resume`` repeats no paid work: kept request counts, job ids, self-check and
shared capture pass, and the client-side queue timeout.

The fake NDIF here speaks nnsight's non-blocking HTTP protocol at the httpx level
(``httpx.MockTransport`` behind every ``httpx.Client`` nnsight opens): ``POST /request`` takes the
multipart form nnsight's own ``RemoteBackend._post`` builds and answers RECEIVED with a job id;
``GET /response/{id}`` answers each job's scripted statuses, then COMPLETED with a result url;
``GET /results/{id}`` sends the ``torch.save`` of the saved values, zstd-compressed when the
request asked. nnsight's ``_post``, ``poll``, ``handle`` and ``download_result`` run unchanged.
Each payload runs against the local tiny model with ``cgar_interp`` unimportable, as on NDIF
(``tests/test_remote.py``'s ``FakeNDIF.run``). Polling waits on a fake clock (no real sleep).
Sockets are refused throughout (``no_network``).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import pandas as pd
import pytest
import torch

from cgar_interp import remote_jobs
from cgar_interp.remote import RemoteRunError
from cgar_interp.runner import INTERRUPTED_UNIT, plan_remote, run_suite
from cgar_interp.suite import parse_suite
from tests.test_remote import (  # noqa: F401  (fixtures)
    FAKE_KEY,
    FakeNDIF,
    ndif,
    ndif_env,
    no_network,
    remote,
    weightless_dir,
)

HOST = "https://fake-ndif.test"
SETUP = "setup (self-check)"


class Killed(Exception):
    """The client process dies here (raised inside nnsight's HTTP call, so nothing catches it)."""


class HTTPNDIF:
    """NDIF's HTTP job protocol, served from memory.

    Attributes:
        submits: every ``POST /request`` (job id, metadata, payload size), in order.
        polls: every ``GET /response/{id}`` job id, in order.
        statuses: ``statuses(n)`` -> the statuses job ``n`` (1-based) reports on its polls
            before COMPLETED (default: one QUEUED, one RUNNING); a status ``"HOLD:<S>"``
            repeats ``S`` while :attr:`held` contains ``n``.
        kill: ``kill(event, n, job)`` raises :class:`Killed` to stop the client; event is
            ``"submit"`` (before the job exists) or ``"poll"``.
    """

    def __init__(self, server_model):
        self.runner = FakeNDIF(server_model)
        self.jobs: dict[str, dict] = {}
        self.submits: list[dict] = []
        self.polls: list[str] = []
        self.statuses = lambda n: ["QUEUED", "RUNNING"]
        self.held: set[int] = set()
        self.kill = lambda event, n, job: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/request":
            return self.submit(request)
        if request.method == "GET" and path.startswith("/response/"):
            return self.poll(path.rsplit("/", 1)[1])
        if request.method == "GET" and path.startswith("/results/"):
            return httpx.Response(200, content=self.jobs[path.rsplit("/", 1)[1]]["result"])
        return httpx.Response(404, json={"detail": f"no route {request.method} {path}"})

    def submit(self, request: httpx.Request) -> httpx.Response:
        from nnsight.schema.request import RequestModel
        from nnsight.schema.response import ResponseModel

        n = len(self.submits) + 1
        self.kill("submit", n, None)
        form = multipart(request)
        meta = RequestModel.model_validate_json(form["data"])
        assert not meta.session_id, "a stored job is submitted without a websocket session"
        assert request.headers.get("ndif-api-key"), "nnsight sends the key in a header"
        job_id = f"job-{n:04d}"
        self.jobs[job_id] = {
            "n": n,
            "meta": meta,
            "blob": form["blob"],
            "script": list(self.statuses(n)),
            "result": None,
        }
        self.submits.append({"job_id": job_id, "bytes": len(form["blob"])})
        return httpx.Response(
            200, text=ResponseModel(id=job_id, status="RECEIVED").model_dump_json()
        )

    def poll(self, job_id: str) -> httpx.Response:
        from nnsight.schema.response import ResponseModel

        self.polls.append(job_id)
        job = self.jobs.get(job_id)
        if job is None:
            return httpx.Response(404, json={"detail": "no such job"})
        self.kill("poll", job["n"], job)
        if job["script"]:
            status = job["script"][0]
            if status.startswith("HOLD:"):
                if job["n"] in self.held:
                    return self.status(job_id, status.split(":", 1)[1])
                job["script"].pop(0)
                return self.poll_again(job_id)
            job["script"].pop(0)
            if status == "ERROR":
                return self.status(job_id, "ERROR", "the job ran out of memory on the server")
            return self.status(job_id, status)
        if job["result"] is None:
            saved = self.runner.run(job["meta"], job["blob"])
            from cgar_interp.remote_jobs import result_bytes

            self.submits[job["n"] - 1].update(saves=sorted(saved), down=result_bytes(saved))
            buffer = io.BytesIO()
            torch.save(saved, buffer)
            data = buffer.getvalue()
            if job["meta"].compress:
                import zstandard

                data = zstandard.ZstdCompressor().compress(data)
            job["result"] = data
        done = ResponseModel(id=job_id, status="COMPLETED", data=f"{HOST}/results/{job_id}")
        return httpx.Response(200, text=done.model_dump_json())

    def poll_again(self, job_id: str) -> httpx.Response:
        self.polls.pop()  # the same poll, past a released hold
        return self.poll(job_id)

    @staticmethod
    def status(job_id: str, status: str, description: str = "") -> httpx.Response:
        from nnsight.schema.response import ResponseModel

        response = ResponseModel(id=job_id, status=status, description=description)
        return httpx.Response(200, text=response.model_dump_json())


def multipart(request: httpx.Request) -> dict[str, bytes | str]:
    """The fields of a multipart/form-data request body."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        head + request.read()
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[name] = payload if part.get_filename() else payload.decode()
    return fields


class FakeClock:
    """``remote_jobs``' sleep and monotonic clock: sleeping moves the clock, instantly."""

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def install_clock(mp: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    mp.setattr(remote_jobs, "_sleep", fake.sleep)
    mp.setattr(remote_jobs, "_now", lambda: fake.now)
    return fake


def install_server(mp: pytest.MonkeyPatch, server_model) -> HTTPNDIF:
    """The HTTP fake behind every httpx client nnsight opens, at nnsight's configured host."""
    from nnsight import CONFIG

    fake = HTTPNDIF(server_model)
    transport = httpx.MockTransport(fake)
    real = httpx.Client

    class Routed(real):
        def __init__(self, *args, **kwargs):
            kwargs["transport"] = transport
            super().__init__(*args, **kwargs)

    mp.setattr(httpx, "Client", Routed)
    mp.setattr(CONFIG.API, "HOST", HOST)
    mp.setattr(CONFIG.APP, "REMOTE_LOGGING", False)
    return fake


def install_client(mp: pytest.MonkeyPatch, model_dir: Path) -> str:
    """A fake key, the hub's canonical id of the weightless model, and no socket: what
    ``tests/test_remote.py``'s ``model`` and ``no_network`` do, for any scope."""
    from nnsight import CONFIG
    from nnsight.modeling import huggingface

    from tests.test_remote import refuse_sockets

    refuse_sockets(mp)
    mp.setenv("NDIF_API_KEY", FAKE_KEY)
    mp.setattr(CONFIG.API, "APIKEY", None)
    model_id = str(model_dir.resolve())
    mp.setitem(huggingface._ID_CACHE, model_id, model_id)
    return model_id


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama's config and tokenizer without weights (what a client has)."""
    out = tmp_path_factory.mktemp("tiny-weightless")
    for path in tiny_llama_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy(path, out / path.name)
    return out


@pytest.fixture
def model(monkeypatch, model_dir) -> str:
    return install_client(monkeypatch, model_dir)


@pytest.fixture
def clock(monkeypatch):
    return install_clock(monkeypatch)


@pytest.fixture
def server(monkeypatch, model, tiny_handles, clock):
    return install_server(monkeypatch, tiny_handles["nnsight"].backend.engine)


@pytest.fixture(scope="module")
def task_file(tmp_path_factory) -> Path:
    """A two-class task in the tiny tokenizer's words (``w0`` .. ``w124``)."""
    rng = random.Random(0)
    rows = [
        {
            "text": " ".join(f"w{rng.randint(3, 90)}" for _ in range(3 + i % 3)),
            "label": ["w100", "w101"][i % 2],
        }
        for i in range(40)
    ]
    path = tmp_path_factory.mktemp("task") / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def tiny_suite(model: str, task_file: Path, **settings):
    return parse_suite(
        {
            "name": "tiny-remote",
            "model": model,
            "backend": "nnsight",
            "remote": True,
            "dtype": "float32",
            "n_fit": 6,
            "n_eval": 8,
            "batch_size": 8,
            "n_boot": 20,
            "tasks": [],
            "task": [
                {
                    "path": str(task_file),
                    "template": {"query": "{text} w120", "answer": " {label} w121 "},
                    "demo_pool_per_class": 2,
                }
            ],
            "probe": [
                {
                    "kind": "context_gate",
                    "context_layers": [0, 1],
                    "lambdas": [0, 1],
                    "modes": ["decode", "patch"],
                    "vectors": ["context", "random"],
                },
                {"kind": "task_vectors", "layers": [0, 1]},
                {"kind": "hopfield_heads", "layers": [0, 1], "max_queries": 4},
            ],
            **settings,
        }
    )


def run(suite, out, lines=None, **kwargs):
    """``run_suite`` without the preflight (tests/test_remote_preflight.py tests it; this fake
    NDIF speaks only the job protocol)."""
    kwargs.setdefault("preflight", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_suite(
            suite, out, report=False, log=(lines if lines is not None else []).append, **kwargs
        )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_dir, tiny_handles, task_file):
    """An uninterrupted run (once for the module): its directory, manifest, tables, and what
    the server saw. Tests copy the directory before changing anything in it."""
    with pytest.MonkeyPatch.context() as mp:
        suite = tiny_suite(install_client(mp, model_dir), task_file)
        install_clock(mp)
        server = install_server(mp, tiny_handles["nnsight"].backend.engine)
        out = tmp_path_factory.mktemp("reference") / "run"
        done = run(suite, out)
    return {
        "suite": suite,
        "out": out,
        "manifest": json.loads((out / "manifest.json").read_text()),
        "tables": done.tables,
        "seen": {"submits": len(server.submits), "bytes": sum(s["bytes"] for s in server.submits)},
    }


def unit_of(manifest: dict, kind: str) -> str:
    return next(u for u in manifest["remote"]["units"] if u.endswith(f"/{kind}"))


def first_request_of(suite, manifest: dict, kind: str) -> int:
    """The ordinal (1-based) of a unit's first request in an uninterrupted run."""
    units = manifest["remote"]["units"]
    order = [SETUP, *(unit_of(manifest, entry.kind) for entry in suite.probes)]  # run order
    unit = unit_of(manifest, kind)
    return 1 + sum(units[u]["requests"] for u in order[: order.index(unit)])


def readout_fetches(submits: list[dict]) -> list[dict]:
    """The requests among ``submits`` that fetched the readout weights through module calls
    (cgar_interp.remote_readout.server_readout saves ``fetched``). They are kept in the disk
    cache, so a resumed run sends none of them again."""
    return [s for s in submits if s["saves"] == ["fetched"]]


def clear(directory: Path) -> None:
    """Empty ``directory`` (a test's readout cache)."""
    import shutil

    for path in directory.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def kill_after(server, sent: int):
    """Kill the client when it is about to submit its request number ``sent + 1`` of this
    session."""
    base = len(server.submits)

    def kill(event, n, job):
        if event == "submit" and len(server.submits) - base == sent:
            raise Killed(f"killed before request {n}")

    return kill


def assert_same_tables(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, obj=name)


def pending_jobs(out: Path) -> list[dict]:
    path = out / "remote" / "jobs.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    finished = {(e["key"], e["job_id"]) for e in entries if e["status"] != "submitted"}
    return [
        e for e in entries if e["status"] == "submitted" and (e["key"], e["job_id"]) not in finished
    ]


# ----------------------------------------------------------------------------- (a) ledger
def test_the_ledger_persists_and_a_resumed_run_continues_its_counts(
    tmp_path, server, reference, model
):
    suite, want = reference["suite"], reference["manifest"]["remote"]
    assert want["requests"] == reference["seen"]["submits"] > 0
    assert want["bytes_up"] == reference["seen"]["bytes"]
    assert want["this_session"] == {k: want[k] for k in ("requests", "bytes_up", "bytes_down")}
    units = want["units"]
    assert set(units) == {SETUP} | {unit_of(reference["manifest"], e.kind) for e in suite.probes}
    assert len(units) == 4 and units[SETUP]["requests"] > 0
    assert sum(u["requests"] for u in units.values()) == want["requests"]
    stored = json.loads((reference["out"] / "remote" / "ledger.json").read_text())
    counts = ("requests", "bytes_up", "bytes_down")
    assert {k: stored[k] for k in counts} == {k: want[k] for k in counts}
    assert stored["sessions"] == 1
    assert not (reference["out"] / "remote" / "captures").exists()  # removed when done

    # the same run, killed when it is about to send the first request of task_vectors
    n_kill = first_request_of(suite, reference["manifest"], "task_vectors")
    server.kill = kill_after(server, n_kill - 1)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run(suite, out)
    first = json.loads((out / "remote" / "ledger.json").read_text())
    assert first["requests"] == n_kill - 1 == len(server.submits)
    assert first["bytes_up"] == sum(s["bytes"] for s in server.submits)
    assert list((out / "remote" / "captures").rglob("shared.pt"))  # the task's pass, kept
    server.kill = lambda event, n, job: None
    lines = []
    done = run(suite, out, lines, resume=True)

    got = json.loads((out / "manifest.json").read_text())["remote"]
    again = readout_fetches(server.submits[n_kill - 1 :])
    assert not again  # the disk cache answers the resumed run
    for k in ("requests", "bytes_down"):
        assert got[k] - sum(1 if k == "requests" else s["down"] for s in again) == want[k], k
    assert got["requests"] == len(server.submits)  # nothing else was sent twice
    assert got["bytes_up"] == sum(s["bytes"] for s in server.submits)
    assert got["this_session"]["requests"] == want["requests"] - (n_kill - 1) + len(again)
    assert got["units"][SETUP]["requests"] == units[SETUP]["requests"]  # not sent again
    assert sum(u["requests"] for u in got["units"].values()) == got["requests"]
    assert INTERRUPTED_UNIT not in got["units"]  # killed between units: nothing lost
    kept = json.loads((out / "remote" / "ledger.json").read_text())
    assert kept["sessions"] == 2 and kept["requests"] == got["requests"]
    assert any("reusing the result kept" in line for line in lines)
    assert_same_tables(reference["tables"], done.tables)


def test_requests_of_an_unfinished_unit_are_counted_as_interrupted(
    tmp_path, server, reference, model, readout_cache
):
    """Killed inside a unit: what that unit had sent is in the totals (it was paid for), and
    the units still add up to them."""
    clear(readout_cache)  # a cold readout cache, as the reference's run had
    suite, want = reference["suite"], reference["manifest"]["remote"]
    unit = unit_of(reference["manifest"], "context_gate")
    into = want["units"][unit]["requests"] - 1  # killed before the unit's last request
    assert into >= 1, "the unit needs two requests for this test"
    n_kill = first_request_of(suite, reference["manifest"], "context_gate") + into
    server.kill = kill_after(server, n_kill - 1)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run(suite, out)
    server.kill = lambda event, n, job: None
    done = run(suite, out, resume=True)
    got = done.manifest["remote"]
    again = readout_fetches(server.submits[n_kill - 1 :])
    assert not again  # the disk cache answers the resumed run
    # what the killed unit already received and kept (the task's shared capture pass, the
    # readout in the disk cache) is not sent again, so at most `into` requests are extra
    assert got["requests"] == len(server.submits)
    assert want["requests"] < got["requests"] <= want["requests"] + into
    assert got["units"][INTERRUPTED_UNIT]["requests"] == into
    assert sum(u["requests"] for u in got["units"].values()) == got["requests"]
    assert_same_tables(reference["tables"], done.tables)


# ----------------------------------------------------------------------------- (b) job ids
def test_a_job_killed_while_queued_is_polled_on_resume_not_sent_again(
    tmp_path, server, reference, model
):
    suite, want = reference["suite"], reference["manifest"]["remote"]
    n_held = first_request_of(suite, reference["manifest"], "hopfield_heads")
    held = f"job-{n_held:04d}"
    server.statuses = lambda n: ["HOLD:QUEUED"] if n == n_held else ["QUEUED", "RUNNING"]
    server.held = {n_held}

    def kill(event, n, job):  # the process dies at the third poll of the queued job
        if event == "poll" and n in server.held and server.polls.count(held) == 3:
            raise Killed

    server.kill = kill
    out = tmp_path / "queued"
    with pytest.raises(Killed):
        run(suite, out)
    assert len(server.submits) == n_held
    assert [e["job_id"] for e in pending_jobs(out)] == [held]  # on disk before the wait

    server.held.clear()  # NDIF gets to it
    polls_before = len(server.polls)
    lines = []
    done = run(suite, out, lines, resume=True)
    assert server.polls[polls_before] == held  # the resumed run's first poll
    assert len(server.submits) == want["requests"]  # the queued job was not sent again
    assert sum(1 for s in server.submits if s["job_id"] == held) == 1
    assert done.manifest["remote"]["requests"] == want["requests"]
    assert done.manifest["remote"]["bytes_down"] == want["bytes_down"]
    assert any(held in line and "polling it instead" in line for line in lines)
    assert pending_jobs(out) == []
    assert_same_tables(reference["tables"], done.tables)


def test_a_stored_job_the_server_no_longer_has_is_sent_again(tmp_path, server, reference, model):
    suite, want = reference["suite"], reference["manifest"]["remote"]
    n_held = first_request_of(suite, reference["manifest"], "hopfield_heads")
    held = f"job-{n_held:04d}"
    server.statuses = lambda n: ["HOLD:QUEUED"] if n == n_held else ["QUEUED", "RUNNING"]
    server.held = {n_held}

    def kill(event, n, job):
        if event == "poll" and n in server.held:
            raise Killed

    server.kill = kill
    out = tmp_path / "gone"
    with pytest.raises(Killed):
        run(suite, out)
    del server.jobs[held]  # NDIF dropped it (results and statuses are not kept forever)
    polls_before = len(server.polls)
    lines = []
    done = run(suite, out, lines, resume=True)
    assert server.polls[polls_before : polls_before + 3] == [held] * 3
    assert len(server.submits) == want["requests"] + 1  # the dropped one, once more
    assert any(held in line and "no longer has" in line for line in lines)
    assert pending_jobs(out) == []
    assert_same_tables(reference["tables"], done.tables)


def test_a_failed_job_is_not_polled_again(tmp_path, server, reference, model):
    """An ERROR status stops the run with the server's description; the job is marked failed,
    so the resumed run sends the request again (and gets the reference's numbers)."""
    suite, want = reference["suite"], reference["manifest"]["remote"]
    server.statuses = lambda n: ["RUNNING", "ERROR"] if n == 1 else []
    out = tmp_path / "failed"
    with pytest.raises(Exception, match="ran out of memory"):
        run(suite, out)
    assert pending_jobs(out) == []
    entries = [json.loads(line) for line in (out / "remote/jobs.jsonl").read_text().splitlines()]
    assert [e["status"] for e in entries if e["job_id"] == "job-0001"] == ["submitted", "error"]
    done = run(suite, out, resume=True)
    assert done.manifest["remote"]["requests"] == want["requests"] + 1  # the failed one again
    assert_same_tables(reference["tables"], done.tables)


# ----------------------------------------------------------------------------- (c) queue timeout
def test_a_job_queued_too_long_stops_the_run_and_resume_polls_it(
    tmp_path, server, model, task_file, clock
):
    suite = tiny_suite(model, task_file, remote_queue_timeout_s=30)
    server.statuses = lambda n: ["HOLD:QUEUED"] if n == 2 else ["QUEUED", "RUNNING"]
    server.held = {2}
    out = tmp_path / "queue"
    with pytest.raises(RemoteRunError) as err:
        run(suite, out)
    message = str(err.value)
    assert err.value.kind == "queue"
    assert "\n" not in message and "job-0002" in message and "--resume" in message
    assert "remote_queue_timeout_s" in message and model in message
    assert [e["job_id"] for e in pending_jobs(out)] == ["job-0002"]
    assert len(server.submits) == 2
    # it polled after 1 s, then 1.5x longer each time up to 10 s, until 30 s had passed
    assert clock.slept[-7:] == [1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0]

    server.held.clear()
    done = run(suite, out, resume=True)
    assert sum(1 for s in server.submits if s["job_id"] == "job-0002") == 1
    assert pending_jobs(out) == []
    assert done.manifest["remote"]["requests"] == len(server.submits)


def test_a_running_job_is_not_timed_out(tmp_path, server, model, task_file, clock, monkeypatch):
    suite = tiny_suite(model, task_file, remote_queue_timeout_s=5)
    # queued for 2.5 s, then running for ten minutes: the queue limit does not apply
    server.statuses = lambda n: ["QUEUED", "QUEUED", "HOLD:RUNNING"] if n == 1 else []
    server.held = {1}

    def sleep(seconds):
        clock.sleep(seconds)
        if clock.now > 600:
            server.held.clear()

    monkeypatch.setattr(remote_jobs, "_sleep", sleep)
    done = run(suite, tmp_path / "running")
    assert clock.now > 600 and done.manifest["status"] == "finished"
    assert server.polls.count("job-0001") > 60


def test_the_queue_timeout_is_a_checked_setting_outside_the_config_hash(task_file):
    from cgar_interp.config import ConfigError

    base = tiny_suite("x/y", task_file)
    assert base.remote_queue_timeout_s == 3600.0
    longer = tiny_suite("x/y", task_file, remote_queue_timeout_s=7200)
    assert longer.config_hash() == base.config_hash()  # a resume may change it
    assert longer.to_dict()["remote_queue_timeout_s"] == 7200.0
    for bad in (0, -1, float("inf"), True, "1h"):
        with pytest.raises(ConfigError, match="remote_queue_timeout_s"):
            tiny_suite("x/y", task_file, remote_queue_timeout_s=bad)
    local = parse_suite({"model": "x/y", "probe": [{"kind": "task_vectors"}]})
    assert "remote_queue_timeout_s" not in local.to_dict()


# ----------------------------------------------------------------------------- (d) self-check
def test_the_self_check_is_reused_on_resume_and_rerun_when_its_key_changes(
    tmp_path, server, reference, model, monkeypatch, readout_cache
):
    import cgar_interp.models as models

    clear(readout_cache)  # the first session fetches the readout, as the reference's did

    suite, want = reference["suite"], reference["manifest"]["remote"]
    checked = want["units"][SETUP]["requests"]
    assert checked == first_request_of(suite, reference["manifest"], "context_gate") - 1
    server.kill = kill_after(server, checked)  # at the first unit's first request
    out = tmp_path / "check"
    with pytest.raises(Killed):
        run(suite, out)
    assert len(server.submits) == checked
    kept = json.loads((out / "remote" / "self_check.json").read_text())
    assert kept["key"]["dtype"] == "float32" and kept["key"]["versions"]["nnsight"]

    # resumed with the same key: no self-check request
    server.kill = kill_after(server, 0)
    lines = []
    with pytest.raises(Killed):
        run(suite, out, lines, resume=True)
    assert len(server.submits) == checked  # killed again before the first unit's request
    assert any("reusing the result kept" in line for line in lines)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["self_check"]["passed"] and manifest["self_check_reused"]
    before_probes = [  # the reference's, without what its probes recorded later
        c for c in reference["manifest"]["self_check"]["checks"] if c["path"] != "recompute_err"
    ]
    assert manifest["self_check"]["checks"] == before_probes == kept["checks"]

    # another nnsight version on this machine: the check runs again
    versions = models._versions

    def patched():
        return {**versions(), "nnsight": "0.0.0-patched"}

    monkeypatch.setattr(models, "_versions", patched)
    cached = len(readout_fetches(server.submits[:checked]))  # the disk cache answers it now
    assert cached == 1
    server.kill = kill_after(server, checked - cached)
    lines = []
    with pytest.raises(Killed):
        run(suite, out, lines, resume=True)
    assert len(server.submits) == 2 * checked - cached
    assert not any("reusing the result kept" in line for line in lines)
    kept = json.loads((out / "remote" / "self_check.json").read_text())
    assert kept["key"]["versions"]["nnsight"] == "0.0.0-patched"

    server.kill = lambda event, n, job: None
    done = run(suite, out, lines, resume=True)
    assert done.manifest["remote"]["units"][SETUP]["requests"] == 2 * checked - cached
    assert_same_tables(reference["tables"], done.tables)


def test_a_stored_failed_check_still_stops_the_run(tmp_path, server, reference):
    """Reusing a kept self-check behaves as running it: a failed comparison stops the run
    unless failures are allowed."""
    from cgar_interp.selfcheck import SelfCheckFailed

    suite = reference["suite"]
    out = tmp_path / "copy"
    shutil.copytree(reference["out"], out)
    path = out / "remote" / "self_check.json"
    kept = json.loads(path.read_text())
    kept["checks"][0]["max_abs_diff"] = 0.5  # what a broken path would have measured
    path.write_text(json.dumps(kept))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["status"] = "running"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SelfCheckFailed, match=kept["checks"][0]["path"]):
        run(suite, out, resume=True)
    assert not server.submits  # decided from the kept result


# ----------------------------------------------------------------------------- the dry run
def test_the_dry_run_counts_what_the_job_transport_sends(tmp_path, server, reference):
    plan = plan_remote(reference["suite"])
    assert not server.submits and not server.polls
    want = reference["manifest"]["remote"]
    assert plan.requests == want["requests"]
    assert plan.bytes_down == want["bytes_down"]
    for unit, counts in want["units"].items():
        assert plan.units[unit]["requests"] == counts["requests"], unit


# ----------------------------------------------------------------------------- request keys
KEY_SCRIPT = """
import hashlib, json, os, shutil, sys, warnings
from pathlib import Path

weightless = Path(sys.argv[1])
os.environ["NDIF_API_KEY"] = "offline"
from nnsight import CONFIG
from nnsight.intervention.backends.remote import RemoteBackend
from nnsight.modeling import huggingface
import torch
from cgar_interp.models import load_model
from cgar_interp.remote_jobs import request_key

huggingface._ID_CACHE[str(weightless)] = str(weightless)
sent = []

class Stop(Exception):
    pass

def keep(self, request, tracer):
    blob = self._serialize(tracer)
    sent.append((hashlib.sha256(blob).hexdigest(), request_key(blob, request)))
    raise Stop

RemoteBackend.request = keep
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    handle = load_model(weightless, backend="nnsight", remote=True)
batch = handle.tokenize(["w1 w2 w3 w4 w5", "w6 w7", "w8 w9 w10"])
calls = [
    lambda: handle.capture(batch, ["resid.1", "attn_pattern.1"], -1, with_logits=True),
    lambda: handle.run_with_patch(batch, "resid.1", -1, torch.ones(64), logits_positions=-1),
    lambda: handle.run_with_patch(batch, "resid.1", -1, torch.ones(64) + 1e-3, logits_positions=-1),
    lambda: handle.run_with_patch(batch, "z.1", -1, lambda z: 2.0 * z, logits_positions=-1),
    lambda: handle.run_with_patch(batch, "z.1", -1, lambda z: 3.0 * z, logits_positions=-1),
]
for call in calls:
    try:
        call()
    except Stop:
        pass
print(json.dumps(sent))
"""


def test_request_keys_name_the_same_request_in_another_process(model_dir):
    """nnsight's payload differs byte for byte between two processes making the same call (its
    tensors' storage keys are addresses); :func:`request_key` is equal, and tells apart
    requests that differ in a patch value or a patch function's constant."""
    root = Path(__file__).resolve().parent.parent
    runs = [
        subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT, str(model_dir.resolve())],
            capture_output=True,
            text=True,
            cwd=root,
            env={**__import__("os").environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"},
            timeout=300,
            check=True,
        )
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
    assert len(first) == len(second) == 5
    assert [blob for blob, _ in first] != [blob for blob, _ in second]  # not byte-identical
    assert [key for _, key in first] == [key for _, key in second]
    assert len({key for _, key in first}) == 5


def test_the_job_store_keeps_only_waiting_jobs_and_skips_a_torn_line(tmp_path):
    path = tmp_path / "jobs.jsonl"
    store = remote_jobs.JobStore()
    store.open(path)
    store.submitted("a", "job-1")
    store.submitted("b", "job-2")
    store.finished("a", "job-1", "done")
    with open(path, "a") as fh:
        fh.write('{"key": "c", "job_id": "job-3", "sta')  # killed mid-line
    again = remote_jobs.JobStore()
    again.open(path)
    assert list(again.pending) == ["b"] and again.pending["b"]["job_id"] == "job-2"
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["b"]


# ----------------------------------------------------------------------------- shared pass
def test_a_kept_shared_pass_is_taken_only_for_the_same_prompts_layers_and_reads(
    tmp_path, remote, ndif
):
    """The engine's half of keeping a task's shared capture pass: a context that declares a
    subset of the reads of the one that ran it (a resumed run's: fewer probes left) starts from
    it and sends nothing; other layers, another read or other prompts capture anew."""
    from cgar_interp.probes import ProbeContext
    from cgar_interp.probes.context_gate import ContextGateConfig
    from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig
    from cgar_interp.remote_jobs import SharedCaptureFile
    from tests.test_head_mediation import labelled_inputs

    inputs = labelled_inputs(n=12)
    gate = ContextGateConfig(context_layers=[0, 1], modes=["patch"], vectors=["context"])
    hopfield = HopfieldHeadsConfig(layers=(0, 1), max_queries=4)
    store = SharedCaptureFile(tmp_path / "captures" / "t" / "shared.pt", root=tmp_path / "captures")

    def context(configs, layers=(0, 1, 2), task_inputs=inputs):
        return ProbeContext.for_probes(
            remote, task_inputs, configs, layers=layers, batch_size=4, shared_store=store
        )

    def reads(ctx):  # the shared residuals, and the Hopfield probe's read as it declares it
        first = ctx.captures()
        read = hopfield.shared_reads(inputs, remote.n_layers)[0]
        got = ctx.read(
            read.kind,
            torch.tensor(read.rows),
            read.sites,
            keep_states=read.keep_states,
            cache_reads=read.cache_reads,
        )
        return first, got

    first, read = reads(context([gate, hopfield]))
    sent = len(ndif.sent)
    assert sent > 0 and store.path.is_file()

    again, read_again = reads(context([hopfield]))  # the resumed run: the gate is done
    assert len(ndif.sent) == sent  # nothing sent
    for kind in first.resid:  # (rows a kind does not cover are NaN in both)
        for layer in first.resid[kind]:
            same = again.resid[kind][layer], first.resid[kind][layer]
            torch.testing.assert_close(*same, rtol=0, atol=0, equal_nan=True)
    assert read.captures and set(read_again.captures) == set(read.captures)
    assert all(torch.equal(read_again[s], read[s]) for s in read.captures)
    # the Hopfield read keeps no states (its key scores are a cache read, which a remote
    # model cannot make: the probe reads the keys in a pass of their own there)
    assert read.states is None and read_again.states is None

    context([hopfield], layers=(0, 1)).captures()  # other layers
    assert len(ndif.sent) > sent
    sent = len(ndif.sent)
    other = ContextGateConfig(context_layers=[0], modes=["patch"], vectors=["context"])
    context([other]).captures()  # a read the kept pass did not make
    assert len(ndif.sent) > sent
    sent = len(ndif.sent)
    context([hopfield], task_inputs=labelled_inputs(n=12, seed=1)).captures()  # other prompts
    assert len(ndif.sent) > sent

    store.discard()
    assert not (tmp_path / "captures").exists()

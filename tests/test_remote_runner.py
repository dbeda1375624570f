"""``cgar run SUITE --remote`` end to end against the fake NDIF server, on the embedded model.

The suite runs every paper-suite probe kind (context gate in decode and patch mode, task
vectors, Hopfield heads, subspace) and the theory comparison. The fake server of
``tests/test_remote.py`` executes each serialized request against the local nnsight model with
``cgar_interp`` unimportable, as NDIF would; the client holds no weights.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cgar_interp.remote import (
    FAILURE_KINDS,
    RemoteRunError,
    failure_kind,
    failure_message,
)
from cgar_interp.runner import plan_remote, run_suite
from cgar_interp.suite import parse_suite
from tests.fake_ndif_http import NDIFService
from tests.test_remote import FAKE_KEY, FakeNDIF, no_network  # noqa: F401  (fixture)
from tests.test_remote_probes import assert_same_tables

pytestmark = pytest.mark.integration

PROBES = [
    {
        "kind": "context_gate",
        "context_layers": [26, 30],
        "lambdas": [0, 1, 10],
        "modes": ["decode", "patch"],
        "vectors": ["context", "random", "flipped", "random_labels"],
    },
    {"kind": "task_vectors", "layers": [20, 30]},
    {"kind": "hopfield_heads", "layers": [20, 29], "max_queries": 4},
    {"kind": "subspace", "layers": [20, 30], "n_random": 20, "n_resamples": 20, "cv_folds": 2},
]


def suite_for(model: str, remote: bool):
    return parse_suite(
        {
            "name": "remote-mini",
            "model": model,
            "backend": "nnsight",
            "remote": remote,
            "remote_rows": 24,
            # the fake server holds the model in float32: a dry run sizes results by this
            "dtype": "float32",
            "tasks": ["sst2-mini"],
            "n_fit": 6,
            "n_eval": 8,
            "batch_size": 8,
            "n_boot": 50,
            "probe": PROBES,
        }
    )


@pytest.fixture(scope="module")
def weightless_embedded(tmp_path_factory):
    """The embedded model's config and tokenizer without its weights (what a client has)."""
    from cgar_interp.embedded import ensure_embedded

    source = ensure_embedded().path
    out = tmp_path_factory.mktemp("SmolLM2-weightless")
    for path in source.iterdir():
        if path.is_file() and path.suffix not in (".safetensors", ".bin"):
            shutil.copy(path, out / path.name)
    return out


@pytest.fixture
def server(monkeypatch, weightless_embedded, embedded_handles):
    """The fake NDIF, a fake key in the environment, and nnsight's settings as a user has them."""
    from nnsight import CONFIG
    from nnsight.intervention.backends.remote import RemoteBackend
    from nnsight.modeling import huggingface

    monkeypatch.setenv("NDIF_API_KEY", FAKE_KEY)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    model_id = str(weightless_embedded.resolve())
    monkeypatch.setitem(huggingface._ID_CACHE, model_id, model_id)
    fake = FakeNDIF(embedded_handles["nnsight"].backend.engine)
    monkeypatch.setattr(RemoteBackend, "request", lambda self, req, tr: fake(self, req, tr))
    NDIFService(FAKE_KEY, running=(model_id,)).install(monkeypatch)  # the preflight's GETs
    return fake


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, embedded_handles):
    out = tmp_path_factory.mktemp("runs") / "local"
    return run_suite(
        suite_for("embedded", remote=False), out, handle=embedded_handles["nnsight"], report=False
    )


def comparable(tables: dict) -> dict:
    """The tables a run writes, without the claims ledger (its notes name the model)."""
    return {k: v for k, v in tables.items() if k != "claims"}


def test_remote_run_gives_the_local_tables_and_records_its_requests(
    tmp_path, server, weightless_embedded, local_run
):
    from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES
    from nnsight import CONFIG

    shipped = "cgar_interp" in _PICKLE_BY_VALUE_MODULES
    out = tmp_path / "remote"
    got = run_suite(suite_for(str(weightless_embedded), remote=True), out, report=False)
    assert any(k.startswith("theory_") for k in got.tables), sorted(got.tables)
    assert_same_tables(comparable(local_run.tables), comparable(got.tables))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == "remote" and manifest["model_hash"].startswith("remote:")
    counted = manifest["remote"]
    assert counted["requests"] == len(server.sent) > 0
    assert counted["bytes_up"] == sum(len(s["blob"]) for s in server.sent)
    assert counted["bytes_down"] > 0
    units = counted["units"]
    assert sum(u["requests"] for u in units.values()) == counted["requests"]
    assert set(units) == {"setup (self-check)"} | {f"sst2-mini/{p['kind']}" for p in PROBES}
    # batched: a small multiple of the local run's forward and suffix passes
    stats = json.loads((local_run.path / "manifest.json").read_text())["forward_stats"]
    local_calls = stats["forward_calls"] + stats["resume_calls"]
    assert counted["requests"] <= 3 * local_calls, (counted["requests"], local_calls)

    # the key went in a header only: never into the run directory; nnsight is as it was
    for path in out.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path
    assert all(s["api_key"] == FAKE_KEY for s in server.sent)
    assert CONFIG.API.APIKEY is None
    assert ("cgar_interp" in _PICKLE_BY_VALUE_MODULES) == shipped


def test_dry_run_counts_what_a_run_sends_and_sends_nothing(
    tmp_path, server, weightless_embedded, monkeypatch
):
    from nnsight import CONFIG

    suite = suite_for(str(weightless_embedded), remote=True)
    plan = plan_remote(suite, ungrouped=False)  # grouped and ungrouped: test_remote_sessions
    assert not server.sent, "the dry run sent a request"
    assert CONFIG.API.COMPRESS is True  # restored

    monkeypatch.setattr(CONFIG.API, "COMPRESS", False)  # the dry run measures uncompressed
    run_suite(suite, tmp_path / "real", report=False)
    real = json.loads((tmp_path / "real" / "manifest.json").read_text())["remote"]
    assert plan.requests == real["requests"] == len(server.sent)
    assert plan.bytes_down == real["bytes_down"]
    # the same payloads; their size drifts up a little with the process's history (each run
    # in one process serializes a few KB more per request, in every unit alike: state nnsight
    # or cloudpickle accumulate, not the values), 2-3% after one earlier run here
    assert abs(plan.bytes_up - real["bytes_up"]) <= 0.05 * real["bytes_up"]
    for unit, figures in real["units"].items():
        assert plan.units[unit]["requests"] == figures["requests"], unit
    text = "\n".join(plan.lines())
    assert f"{plan.requests} requests" in text and "nothing was sent" in text


def test_a_failed_request_stops_with_one_line_and_resume_finishes(
    tmp_path, server, weightless_embedded, local_run, monkeypatch
):
    import httpx

    suite = suite_for(str(weightless_embedded), remote=True)
    out = tmp_path / "remote"
    answer, calls = server.__call__, {"n": 0}
    plan = plan_remote(suite, ungrouped=False)  # the requests a run sends, none sent
    sending = [unit for unit, figures in plan.units.items() if figures["requests"]]
    after = sum(plan.units[u]["requests"] for u in sending[sending.index(sending[-1]) :])
    drop = plan.requests - after + 1  # the first request of the last unit that sends any

    def drop_the_22nd(backend, request, tracer):
        calls["n"] += 1
        if calls["n"] == drop:  # within the last probe: the units before it are finished
            raise httpx.ConnectError("connection reset by peer")
        return answer(backend, request, tracer)

    from nnsight.intervention.backends.remote import RemoteBackend

    monkeypatch.setattr(
        RemoteBackend, "request", lambda self, req, tr: drop_the_22nd(self, req, tr)
    )
    with pytest.raises(RemoteRunError) as err:
        run_suite(suite, out, report=False)
    assert err.value.kind == "connection"
    message = str(err.value)
    assert "\n" not in message and suite.model in message
    assert "--resume" in message
    done_before = sorted(p.parent.name for p in out.glob("units/**/done.json"))
    assert done_before, "no unit finished before the failure"

    got = run_suite(suite, out, resume=True, report=False)
    assert_same_tables(comparable(local_run.tables), comparable(got.tables))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ("RemoteError:Model meta-llama/X is not hosted on this deployment", "not_hosted"),
        ("RemoteError:The queue is full, try again later", "queue"),
        ("RemoteError:Invalid API key", "authentication"),
        ("RemoteError:job timed out after 3600 s", "timeout"),
        ("status:401", "authentication"),
        ("status:404", "not_hosted"),
        ("status:503", "unavailable"),
        ("status:504", "timeout"),
        ("timeout", "timeout"),
        ("connect", "connection"),
        ("other", None),
    ],
)
def test_ndif_failures_get_a_kind_and_a_one_line_message(error, kind):
    import httpx
    from nnsight.intervention.backends.remote import RemoteError

    if error.startswith("RemoteError:"):
        err = RemoteError(error.split(":", 1)[1])
    elif error.startswith("status:"):
        code = int(error.split(":")[1])
        request = httpx.Request("POST", "https://api.ndif.us/request")
        err = httpx.HTTPStatusError(
            "server said no", request=request, response=httpx.Response(code, request=request)
        )
    elif error == "timeout":
        err = httpx.ReadTimeout("read timed out")
    elif error == "connect":
        err = httpx.ConnectError("connection refused")
    else:
        err = ValueError("a bug of ours, not NDIF's")
    assert failure_kind(err) == kind
    if kind is not None:
        assert kind in FAILURE_KINDS
        message = failure_message(kind, "meta-llama/Llama-3.1-70B", str(err))
        assert "\n" not in message and "meta-llama/Llama-3.1-70B" in message


def test_a_remote_suite_refuses_what_cannot_run_remotely():
    from cgar_interp.config import ConfigError

    with pytest.raises(ConfigError, match="backend 'transformer_lens' runs it here"):
        parse_suite(
            {
                "model": "x/y",
                "backend": "transformer_lens",
                "remote": True,
                "probe": [{"kind": "hopfield_heads"}],
            }
        )
    with pytest.raises(ConfigError, match="'head_mediation' cannot run remotely"):
        parse_suite(
            {
                "model": "x/y",
                "backend": "nnsight",
                "remote": True,
                "probe": [{"kind": "hopfield_heads"}, {"kind": "head_mediation"}],
            }
        )
    local = parse_suite({"model": "x/y", "probe": [{"kind": "hopfield_heads"}]})
    assert "remote" not in local.to_dict()  # hashes of local suites are unchanged


def test_remote_tables_are_numbers(local_run):
    """Guard for the comparisons above: the reference run has real, finite measurements."""
    gate = local_run.tables["context_gate"]
    assert np.isfinite(gate.value).all() and gate.value.abs().sum() > 0


def test_cli_dry_run_prints_the_cost_and_sends_nothing(tmp_path, server, weightless_embedded):
    from typer.testing import CliRunner

    from cgar_interp.cli import app

    suite = tmp_path / "tiny_remote.toml"
    suite.write_text(
        "\n".join(
            [
                'name = "tiny_remote"',
                f'model = "{weightless_embedded}"',
                'backend = "nnsight"',
                'tasks = ["sst2-mini"]',
                "n_fit = 4",
                "n_eval = 4",
                "n_boot = 10",
                "[[probe]]",
                'kind = "task_vectors"',
                "layers = [10, 20]",
            ]
        )
    )
    runner = CliRunner()
    done = runner.invoke(app, ["run", str(suite), "--dry-run"])
    assert done.exit_code == 2 and "add --remote" in done.output
    done = runner.invoke(app, ["run", str(suite), "--remote", "--dry-run", "--dtype", "float32"])
    assert done.exit_code == 0, done.output
    assert "nothing was sent" in done.output and "sst2-mini/task_vectors" in done.output
    assert not server.sent
    assert not Path("runs", "tiny_remote").exists()  # no run directory either


@pytest.mark.slow
def test_the_paper_suite_remotely_is_a_small_multiple_of_the_local_passes(
    tmp_path, weightless_embedded, embedded_handles
):
    """``probes/paper_ndif.toml`` (3 tasks x 64 queries) at the embedded model's shape: the
    dry run's requests against the forward and suffix passes of the same suite run here."""
    from dataclasses import replace

    from cgar_interp.suite import load_suite

    remote = load_suite("paper_ndif", model=str(weightless_embedded), dtype="float32")
    plan = plan_remote(remote, ungrouped=False)
    local = replace(remote, model="embedded", remote=False)
    done = run_suite(local, tmp_path / "local", handle=embedded_handles["nnsight"], report=False)
    stats = done.manifest["forward_stats"]
    calls = stats["forward_calls"] + stats["resume_calls"]
    print(f"paper_ndif: {plan.requests} requests remotely, {calls} passes locally")
    assert plan.requests <= 3 * calls
    assert all(plan.units[f"{t}/subspace"]["requests"] == 0 for t in local.tasks)

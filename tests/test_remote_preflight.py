"""The NDIF preflight (model running, key known, same nnsight) and ``cgar info --remote``,
against NDIF's ``/status``, ``/whoami`` and ``/env`` served by ``httpx.MockTransport``
(``tests/fake_ndif_http.py``); no socket is opened."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from cgar_interp.remote_preflight import (
    RemotePreflightError,
    deployments,
    preflight,
    running_models,
    similar_ids,
)
from tests.fake_ndif_http import NDIFService
from tests.test_remote import FAKE_KEY, no_network  # noqa: F401  (fixture)

MODEL = "meta-llama/Llama-3.1-70B"
RUNNING = ("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-8B", "openai-community/gpt2")


@pytest.fixture
def service(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setenv("NDIF_API_KEY", FAKE_KEY)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr(CONFIG.API, "HOST", "https://api.ndif.us")
    return NDIFService(FAKE_KEY, running=RUNNING).install(monkeypatch)


def test_a_running_model_a_known_key_and_the_same_nnsight_pass(service):
    report = preflight(MODEL, FAKE_KEY)
    assert report.deployment["repo_id"] == MODEL and report.deployment["state"] == "RUNNING"
    assert report.email == "researcher@example.org" and report.warnings == ()
    from importlib.metadata import version

    assert report.versions["nnsight"] == (version("nnsight"), version("nnsight"))
    (line,) = report.lines()
    assert MODEL in line and "RUNNING" in line and FAKE_KEY not in line
    paths = [r.url.path for r in service.seen]
    assert paths == ["/status", "/whoami", "/env"]  # nothing else, no /request
    assert all(r.headers.get("ndif-api-key") == FAKE_KEY for r in service.seen[:2])


def test_the_key_is_read_without_changing_nnsights_config(service, monkeypatch):
    from nnsight import CONFIG

    assert preflight(MODEL).email == "researcher@example.org"  # the key from $NDIF_API_KEY
    assert CONFIG.API.APIKEY is None
    monkeypatch.delenv("NDIF_API_KEY")
    with pytest.raises(ValueError, match="NDIF_API_KEY environment variable first"):
        preflight(MODEL)


def test_ids_compare_case_insensitively_without_asking_the_hub(service, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the preflight asked the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_hub)
    assert preflight("META-LLAMA/llama-3.1-70b", FAKE_KEY).deployment["repo_id"] == MODEL


def test_a_model_not_running_names_the_running_ids_like_it(service):
    with pytest.raises(RemotePreflightError) as err:
        preflight("meta-llama/Meta-Llama-3.1-70B", FAKE_KEY)
    assert err.value.kind == "not_hosted"
    message = str(err.value)
    assert "\n" not in message and "meta-llama/Meta-Llama-3.1-70B" in message
    assert "running ids like it: meta-llama/Llama-3.1-70B" in message
    assert "gpt2" not in message
    with pytest.raises(RemotePreflightError, match="cgar info --remote"):
        preflight("someone/unrelated-model-xyz", FAKE_KEY)  # nothing alike: how to list them


def test_an_unknown_key_is_an_authentication_failure(service, monkeypatch):
    monkeypatch.setenv("NDIF_API_KEY", "not-a-key-ndif-knows")
    with pytest.raises(RemotePreflightError) as err:
        preflight(MODEL, "not-a-key-ndif-knows")
    assert err.value.kind == "authentication"
    assert "$NDIF_API_KEY" in str(err.value) and "nnsight.login()" in str(err.value)
    assert "not-a-key-ndif-knows" not in str(err.value)


def test_an_unreachable_service_is_a_connection_failure(service):
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    service.routes["/status"] = refuse
    with pytest.raises(RemotePreflightError) as err:
        preflight(MODEL, FAKE_KEY)
    assert err.value.kind == "connection"
    assert "cannot reach NDIF at https://api.ndif.us" in str(err.value)
    assert "$NDIF_HOST" in str(err.value)


def test_another_nnsight_fails_and_another_torch_warns(service):
    service.env["packages"]["torch"] = "9.9.9"
    report = preflight(MODEL, FAKE_KEY)
    assert len(report.warnings) == 1 and "torch" in report.warnings[0]
    assert "9.9.9 on NDIF" in report.lines()[1]
    service.env["packages"]["nnsight"] = "0.9.0"
    with pytest.raises(RemotePreflightError) as err:
        preflight(MODEL, FAKE_KEY)
    assert err.value.kind == "version" and "nnsight==0.9.0" in str(err.value)


def test_deploying_models_hot_swapping_keys_and_an_older_service_are_warnings(service):
    entry = next(iter(service.status["deployments"].values()))
    entry["application_state"] = "DEPLOYING"
    assert "DEPLOYING" in preflight(MODEL, FAKE_KEY).warnings[0]
    entry["deployment_level"] = "COLD"
    entry["application_state"] = "NOT_STARTED"
    with pytest.raises(RemotePreflightError, match="not running"):
        preflight(MODEL, FAKE_KEY)
    service.whoami = {"email": "researcher@example.org", "tags": ["hotswapping"]}
    assert "hot-swapping access" in preflight(MODEL, FAKE_KEY).warnings[0]
    service.whoami = None
    service.routes["/whoami"] = lambda request: httpx.Response(404, json={"detail": "Not Found"})
    service.routes["/env"] = lambda request: httpx.Response(504, json={"detail": "timed out"})
    entry.update(deployment_level="HOT", application_state="RUNNING")
    report = preflight(MODEL, FAKE_KEY)
    assert report.email is None and len(report.warnings) == 2
    assert "/whoami" in report.warnings[0] and "not compared" in report.warnings[1]


def test_replicas_fold_into_one_model_the_healthiest_kept():
    status = {
        "deployments": {
            "a:0": {"repo_id": "x/A", "deployment_level": "WARM", "application_state": "DEPLOYING"},
            "a:1": {"repo_id": "x/A", "deployment_level": "HOT", "application_state": "RUNNING"},
            "b:0": {"repo_id": "x/B", "deployment_level": "COLD", "application_state": "RUNNING"},
        }
    }
    found = {d["repo_id"]: d for d in deployments(status)}
    assert found["x/A"] == {
        "repo_id": "x/A",
        "level": "HOT",
        "state": "RUNNING",
        "running": True,
        "replicas": 2,
    }
    assert not found["x/B"]["running"]  # COLD: downloaded, not serving
    assert similar_ids("x/a", ["x/A", "y/A", "z/zzz"]) == ["x/A", "y/A"]


def test_running_models_lists_only_what_serves(service):
    entry = service.status["deployments"]["openai-community/gpt2:2"]
    entry["application_state"] = "UNHEALTHY"
    assert [d["repo_id"] for d in running_models(FAKE_KEY)] == list(RUNNING[:2])


# ----------------------------------------------------------------------------- CLI
def invoke(args):
    from typer.testing import CliRunner

    from cgar_interp.cli import app

    return CliRunner().invoke(app, args)


def test_cgar_info_remote_lists_the_running_models(service):
    done = invoke(["info", "--remote", "--json"])
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)
    assert [d["repo_id"] for d in record["running"]] == list(RUNNING)
    assert record["host"] == "https://api.ndif.us"
    done = invoke(["info", "--remote"])
    assert done.exit_code == 0 and "openai-community/gpt2" in done.stdout
    done = invoke(["info", "meta-llama/Meta-Llama-3.1-70B", "--remote"])
    assert done.exit_code == 0 and "running ids like it: meta-llama/Llama-3.1-70B" in done.stderr


def test_cgar_info_remote_without_a_key_or_a_service_says_so(service, monkeypatch):
    from nnsight import CONFIG

    service.routes["/status"] = lambda request: httpx.Response(503, json={"detail": "down"})
    done = invoke(["info", "--remote"])
    assert done.exit_code == 2 and "NDIF at https://api.ndif.us could not answer" in done.stderr
    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    done = invoke(["info", "--remote"])
    assert done.exit_code == 2
    assert "needs an NDIF API key" in done.stderr and "nnsight.login()" in done.stderr


def test_a_remote_run_stops_at_the_preflight_before_loading_anything(service, tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\nmodel = "someone/not-on-ndif"\nbackend = "nnsight"\ntasks = ["sst2-mini"]\n'
        '[[probe]]\nkind = "task_vectors"\n'
    )
    done = invoke(["run", str(suite), "--remote", "--out", str(tmp_path / "run")])
    assert done.exit_code == 3, done.output
    assert "NDIF failure (not_hosted)" in done.stderr and "--remote --resume" in done.stderr
    assert not service.posted and not (tmp_path / "run").exists()
    done = invoke(["run", str(suite), "--remote", "--dry-run"])
    assert done.exit_code == 2 and "NDIF is not running model someone/not-on-ndif" in done.stderr


def test_a_dry_run_without_a_key_skips_the_preflight_in_one_line(service, monkeypatch, tmp_path):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY")
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    suite = tmp_path / "s.toml"
    suite.write_text('name = "s"\nmodel = "embedded"\n[[probe]]\nkind = "task_vectors"\n')
    done = invoke(["run", str(suite), "--remote", "--dry-run"])
    # the embedded model cannot run remotely: the dry run stops after the preflight line
    assert "NDIF preflight skipped: no API key" in done.stdout
    assert not service.seen


# ----------------------------------------------------------------------------- one model id
ROOT = Path(__file__).resolve().parent.parent
HUB_ID = re.compile(r"(?<![\w/.-])([\w.-]+)/([\w.-]*llama-?3\.1-70b[\w.-]*)", re.I)


def test_one_id_for_llama_3_1_70b_everywhere():
    """NDIF hosts ``meta-llama/Llama-3.1-70B`` (the hub's id; ``Meta-Llama-3.1-70B`` is the old
    name the hub redirects): no other spelling in the code, docs, README, suites, benchmarks."""
    files = [ROOT / "README.md"]
    for folder, pattern in (
        ("cgar_interp", "*.py"),
        ("docs", "*.md"),
        ("benchmarks", "*"),
        ("probes", "*.toml"),
    ):
        files += [p for p in (ROOT / folder).rglob(pattern) if p.is_file()]
    seen, wrong = 0, []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in HUB_ID.finditer(text):
            seen += 1
            if match.group(0) != "meta-llama/Llama-3.1-70B":
                wrong.append((str(path.relative_to(ROOT)), match.group(0)))
        wrong += [
            (str(path.relative_to(ROOT)), m.group(0))
            for m in re.finditer(r"meta-llama-3\.1-70b", text, re.I)
        ]
    assert not wrong, wrong
    assert seen >= 3  # the suite, the docs, the code name it

"""Before a remote run sends anything: is the model running on NDIF, is the API key valid, and
do this client's nnsight, torch and transformers match the server's?

Three GETs to NDIF's API (``CONFIG.API.HOST``, ``https://api.ndif.us`` unless ``$NDIF_HOST``):

- ``/status``: the deployments, one entry per replica (``repo_id``, ``deployment_level`` HOT,
  WARM or COLD, ``application_state`` RUNNING, DEPLOYING, NOT_STARTED or UNHEALTHY). A model
  runs when a HOT or WARM replica is RUNNING. Ids are compared here, case-insensitively (hub
  ids are case-insensitive; nnsight's ``is_model_running`` would ask the hub for the canonical
  spelling); a model not running is named with the running ids that look like it.
- ``/whoami`` (``nnsight.ndif.whoami``): the key's email, None for a key NDIF does not know.
- ``/env`` (``nnsight.ndif.get_remote_env``): the server's Python and packages. A different
  nnsight fails the preflight (requests are serialized by nnsight on both ends); a different
  torch, transformers or Python is a warning line.

Each failure is a :class:`RemotePreflightError` (a :class:`~cgar_interp.remote.RemoteRunError`)
with one line that says what to do; an unreachable service is a ``connection`` failure.
"""

from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field

from .remote_errors import API_KEY_ENV, RemoteRunError, failure_detail, failure_kind, scrub

# NDIF's deployment levels that serve requests (COLD: downloaded, not loaded)
DEPLOYED_LEVELS = ("HOT", "WARM")
_LEVEL_RANK = {"HOT": 0, "WARM": 1, "COLD": 2}
_STATE_RANK = {"RUNNING": 0, "DEPLOYING": 1, "NOT_STARTED": 2, "UNHEALTHY": 3}
CHECKED_PACKAGES = ("nnsight", "torch", "transformers")


class RemotePreflightError(RemoteRunError):
    """The preflight found a reason not to send anything; ``kind`` as for RemoteRunError."""


def ndif_host() -> str:
    from nnsight import CONFIG

    return CONFIG.API.HOST.rstrip("/")


def key_source() -> str:
    """Where the configured key was read from, for messages."""
    return f"${API_KEY_ENV}" if os.environ.get(API_KEY_ENV) else "nnsight's saved config"


def _unreachable(err: Exception, what: str) -> RemotePreflightError:
    kind = failure_kind(err) or "connection"
    detail = failure_detail(err)
    if kind == "connection":
        return RemotePreflightError(
            "connection",
            f"cannot reach NDIF at {ndif_host()} ({what}): check the network, and $NDIF_HOST if "
            f"set; nothing was sent [{detail}]",
        )
    if kind == "authentication":
        return RemotePreflightError(
            "authentication",
            f"NDIF refused the API key read from {key_source()} ({what}): set a valid key in "
            f"${API_KEY_ENV} or store one with nnsight.login() (keys are issued at "
            f"https://login.ndif.us) [{detail}]",
        )
    return RemotePreflightError(
        kind,
        f"NDIF at {ndif_host()} could not answer ({what}): wait a few minutes and try again; "
        f"nothing was sent [{detail}]",
    )


def ndif_status(api_key: str | None = None) -> dict:
    """NDIF's ``/status`` JSON. Raises :class:`RemotePreflightError` when it cannot be read."""
    import httpx

    headers = {"ndif-api-key": api_key} if api_key else None
    try:
        response = httpx.get(
            f"{ndif_host()}/status", headers=headers, timeout=httpx.Timeout(5.0, read=30.0)
        )
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise _unreachable(err, "reading /status") from None
    try:
        return response.json()
    except ValueError:
        raise RemotePreflightError(
            "unavailable", f"NDIF's /status at {ndif_host()} is not JSON: try again later"
        ) from None


def deployments(status: dict) -> list[dict]:
    """One entry per model of NDIF's ``/status`` (replicas folded, the healthiest kept):
    ``repo_id``, ``level``, ``state``, ``running`` (a HOT or WARM replica RUNNING),
    ``replicas`` (how many replicas the status lists), sorted by repo id."""
    models: dict[str, dict] = {}
    for name, value in (status.get("deployments") or {}).items():
        if not isinstance(value, dict):
            continue
        repo_id = str(value.get("repo_id") or name)
        entry = {
            "repo_id": repo_id,
            "level": str(value.get("deployment_level") or "?"),
            "state": str(value.get("application_state") or "UNHEALTHY"),
        }
        entry["running"] = entry["level"] in DEPLOYED_LEVELS and entry["state"] == "RUNNING"
        held = models.get(repo_id.lower())
        rank = (not entry["running"], _LEVEL_RANK.get(entry["level"], 9))
        rank += (_STATE_RANK.get(entry["state"], 9),)
        if held is None:
            models[repo_id.lower()] = {**entry, "replicas": 1, "_rank": rank}
            continue
        held["replicas"] += 1
        if rank < held["_rank"]:
            held.update(entry, _rank=rank)
    out = [{k: v for k, v in m.items() if k != "_rank"} for m in models.values()]
    return sorted(out, key=lambda m: m["repo_id"].lower())


def running_models(api_key: str | None = None) -> list[dict]:
    """The models NDIF reports as running (:func:`deployments` with ``running``)."""
    return [d for d in deployments(ndif_status(api_key)) if d["running"]]


def similar_ids(model: str, ids: list[str], n: int = 5) -> list[str]:
    """The ids of ``ids`` that look like ``model`` (same name after the owner, or close)."""
    low = {i.lower(): i for i in ids}
    name = model.lower().rsplit("/", 1)[-1]
    same_name = [i for k, i in low.items() if k.rsplit("/", 1)[-1] == name]
    close = difflib.get_close_matches(model.lower(), list(low), n=n, cutoff=0.6)
    close += difflib.get_close_matches(name, [k.rsplit("/", 1)[-1] for k in low], n=n, cutoff=0.6)
    by_name = {k.rsplit("/", 1)[-1]: i for k, i in low.items()}
    found = same_name + [low.get(c) or by_name[c] for c in close]
    return list(dict.fromkeys(found))[:n]


@dataclass(frozen=True)
class PreflightReport:
    """What the preflight found (nothing failed): the model's deployment, the key's email,
    the versions compared and the warnings."""

    model: str
    host: str
    deployment: dict | None
    email: str | None
    versions: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        if self.deployment is None:
            state = "is not running (hot-swapping key: NDIF will try to load it)"
        else:
            d = self.deployment
            state = f"is {d['state']} ({d['level']}, {d['replicas']} replica(s))"
        key = f"key of {self.email}" if self.email else "key not checked"
        nn = self.versions.get("nnsight")
        versions = f"nnsight {nn[0]} on both ends" if nn and nn[0] == nn[1] else "versions checked"
        out = [f"NDIF preflight ({self.host}): model {self.model} {state}; {key}; {versions}"]
        out += [f"NDIF preflight warning: {w}" for w in self.warnings]
        return [scrub(line) for line in out]


def _local_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in CHECKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "-"
    return out


def check_model(model: str, found: list[dict], hotswap: bool = False) -> tuple[dict | None, list]:
    """The deployment of ``model`` among :func:`deployments` ``found`` and the warnings, or a
    :class:`RemotePreflightError` when NDIF cannot serve it (a key with hot-swapping access
    may ask for a model that is not running: a warning then)."""
    mine = [d for d in found if d["repo_id"].lower() == model.lower()]
    running = [d for d in found if d["running"]]
    if mine and mine[0]["running"]:
        return mine[0], []
    if mine and mine[0]["state"] == "DEPLOYING":
        d = mine[0]
        return d, [
            f"model {model} is DEPLOYING on NDIF ({d['level']}): requests wait until it runs"
        ]
    if hotswap:
        return None, [
            f"NDIF is not running model {model}; the key has hot-swapping access, so NDIF will "
            "try to load it (the first request can wait minutes)"
        ]
    if mine:
        d = mine[0]
        raise RemotePreflightError(
            "unavailable" if d["level"] in DEPLOYED_LEVELS else "not_hosted",
            f"NDIF lists model {model} but it is not running ({d['level']}, {d['state']}): wait "
            "and check `cgar info --remote`, or pick a running model; nothing was sent",
        )
    like = similar_ids(model, [d["repo_id"] for d in running])
    hint = (
        f"running ids like it: {', '.join(like)}"
        if like
        else f"{len(running)} models run now: `cgar info --remote` lists them"
    )
    raise RemotePreflightError(
        "not_hosted",
        f"NDIF is not running model {model} (ids compared case-insensitively; {hint}): use a "
        "running id, or run this model locally without --remote; nothing was sent",
    )


def check_versions(remote_env: dict) -> tuple[dict, list[str]]:
    """``{package: (here, server)}`` and warnings; a different nnsight raises
    :class:`RemotePreflightError` (``version``)."""
    from nnsight.ndif import EnvComparison

    local = {"python_version": sys.version, "packages": _local_versions()}
    server = remote_env.get("packages") or {}
    compared = EnvComparison(local, {**remote_env, "packages": server})
    versions = {
        name: (local["packages"][name], server[name]) for name in CHECKED_PACKAGES if name in server
    }
    critical = compared.critical_mismatches
    if "nnsight" in critical:
        here, there = versions["nnsight"]
        raise RemotePreflightError(
            "version",
            f"this client has nnsight {here}, NDIF runs nnsight {there}: install the server's "
            f"(pip install 'nnsight=={there}'): requests are serialized by nnsight on both ends; "
            "nothing was sent",
        )
    warnings = [
        f"{name} {versions[name][0]} here, {versions[name][1]} on NDIF: results can differ in "
        "the last digits from a local run"
        for name in CHECKED_PACKAGES
        if name in critical
    ]
    if not compared.python_matches and "Unknown" not in (
        compared.local_python,
        compared.remote_python,
    ):
        here, there = compared.local_python, compared.remote_python
        if here.split(".")[:2] != there.split(".")[:2]:
            warnings.append(
                f"Python {here} here, {there} on NDIF: NDIF may refuse the requests ('Client "
                "python version ... does not match'); use the server's Python if it does"
            )
    return versions, warnings


def preflight(model: str, api_key: str | None = None) -> PreflightReport:
    """Check that NDIF runs ``model``, knows the key, and runs this client's nnsight.

    Args:
        model: the hub id the run names.
        api_key: the key (default: the configured one, see
            :func:`~cgar_interp.remote.ndif_api_key`; nnsight's config is left as it is).

    Raises:
        RemotePreflightError: one line naming the problem and what to do.
    """
    import httpx
    import nnsight.ndif as ndif

    if api_key is None:  # read without touching nnsight's config (ndif_api_key only raises here)
        from .remote import configured_api_key, ndif_api_key

        api_key = configured_api_key() or ndif_api_key()
    host = ndif_host()
    found = deployments(ndif_status(api_key))
    warnings: list[str] = []
    email, tags = None, []
    try:
        who = ndif.whoami(api_key)
    except httpx.HTTPStatusError as err:
        if err.response.status_code != 404:
            raise _unreachable(err, "checking the key at /whoami") from None
        who = None
        warnings.append(
            f"NDIF at {host} does not answer /whoami (an older service): key not checked"
        )
    except httpx.HTTPError as err:
        raise _unreachable(err, "checking the key at /whoami") from None
    if who is not None:
        email, tags = who.get("email"), who.get("tags") or []
        if not email:
            raise RemotePreflightError(
                "authentication",
                f"NDIF does not recognize the API key read from {key_source()}: set a valid key "
                f"in ${API_KEY_ENV} or store one with nnsight.login() (keys are issued at "
                "https://login.ndif.us); nothing was sent",
            )
    hotswap = any("hotswap" in str(t).lower() for t in tags)
    deployment, model_warnings = check_model(model, found, hotswap=hotswap)
    warnings += model_warnings
    versions: dict = {}
    try:
        remote_env = ndif.get_remote_env(force_refresh=True)
    except httpx.HTTPError as err:
        if failure_kind(err) == "connection":
            raise _unreachable(err, "reading /env") from None
        warnings.append(
            f"could not read NDIF's versions ({failure_detail(err)}): nnsight not compared"
        )
    else:
        versions, version_warnings = check_versions(remote_env)
        warnings += version_warnings
    return PreflightReport(model, host, deployment, email, versions, tuple(warnings))


__all__ = [
    "PreflightReport",
    "RemotePreflightError",
    "check_model",
    "check_versions",
    "deployments",
    "ndif_status",
    "preflight",
    "running_models",
    "similar_ids",
]

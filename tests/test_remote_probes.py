"""Every probe of the paper suite runs on a remote (NDIF) model and gives the local tables.

Three servers, each a parameter of the ``server`` fixture:

- ``trusted``: the remote handle is built without weights; each request goes to the fake
  server of ``tests/test_remote.py``, which runs nnsight's serialized payload against the
  local tiny model with ``cgar_interp`` made unimportable, as on NDIF;
- ``sandbox``: the same, and the request cannot read a module's weights or buffers (NDIF's
  sandbox does not hand a request the modules' attributes), so a parameter read anywhere in
  a traced block fails the test;
- ``local``: nnsight's own simulation (``remote="local"``, ``load_model(..., remote="local")``):
  the block is serialized and deserialized with every non-installed module hidden, then run.

The probes are the same code: the engine runs their interventions as full forward passes (no
KV cache lives on a server), decodes with the readout fetched once through module calls
(:mod:`cgar_interp.remote_readout`), and reads keys at every position instead of from a cache.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

from cgar_interp.probes import ProbeContext, get_probe
from cgar_interp.probes.context_gate import ContextGateConfig
from cgar_interp.probes.head_mediation import HeadMediationConfig
from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig
from cgar_interp.probes.subspace import SubspaceConfig
from cgar_interp.probes.task_vectors import TaskVectorConfig
from tests.test_head_mediation import labelled_inputs
from tests.test_remote import (  # noqa: F401  (fixtures)
    FakeNDIF,
    ndif_env,
    no_network,
    remote,
    weightless_dir,
)


class Sent:
    """What the local simulation ran (it bypasses ``RemoteBackend.request``)."""

    def __init__(self):
        self.sent: list = []


@pytest.fixture(params=["trusted", "sandbox", "local"])
def server(request, monkeypatch, tiny_handles, tiny_llama_dir, ndif_env):
    """``(remote handle, record of what the server ran)`` for each of the three servers."""
    if request.param == "local":
        from nnsight.intervention.backends.local import LocalSimulationBackend

        from cgar_interp.models import load_model

        record = Sent()
        simulate = LocalSimulationBackend.__call__

        def counted(self, tracer):
            record.sent.append(tracer)
            return simulate(self, tracer)

        monkeypatch.setattr(LocalSimulationBackend, "__call__", counted)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_model(tiny_llama_dir, backend="nnsight", remote="local"), record
    from nnsight.intervention.backends.remote import RemoteBackend

    fake = FakeNDIF(tiny_handles["nnsight"].backend.engine, sandbox=request.param == "sandbox")
    monkeypatch.setattr(RemoteBackend, "request", lambda self, req, tr: fake(self, req, tr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cgar_interp.models import load_model

        return load_model(ndif_env, backend="nnsight", remote=True), fake


PAPER_PROBES = {
    "context_gate": ContextGateConfig(
        query_layers="last",
        context_layers=[0, 1, 2],
        lambdas=[0.0, 0.5, 2.0],
        modes=["decode", "patch"],
        vectors=["context", "random", "flipped", "random_labels"],
    ),
    "task_vectors": TaskVectorConfig(layers="all"),
    "hopfield_heads": HopfieldHeadsConfig(max_queries=4),
    "subspace": SubspaceConfig(layers="all", n_random=20, n_resamples=20, cv_folds=2),
}
NUMERIC = {"value", "ci_low", "ci_high"}


def run_probes(handle, inputs, kinds) -> dict[str, pd.DataFrame]:
    configs = [PAPER_PROBES[k] for k in kinds]
    ctx = ProbeContext.for_probes(handle, inputs, configs, n_boot=20, batch_size=4)
    for kind, config in zip(kinds, configs, strict=True):
        out = get_probe(kind).run(config, ctx)
        ctx.tables.update(out if isinstance(out, dict) else {kind: out})
    return ctx.tables


def assert_same_tables(local: dict, remote: dict, atol: float = 1e-5, rtol: float = 5e-5) -> None:
    """Every column equal; numbers within ``atol`` (probabilities, accuracies), or ``rtol`` for
    metrics above 1 (``n_eff = exp(entropy)`` magnifies float32 rounding: a full forward and a
    KV-cache suffix pass add in different orders)."""
    assert set(local) == set(remote)
    for name, a in local.items():
        b = remote[name]
        assert list(a.columns) == list(b.columns) and len(a) == len(b), name
        for column in a.columns:
            left, right = a[column].to_numpy(), b[column].to_numpy()
            if column in NUMERIC or a[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    left.astype(float),
                    right.astype(float),
                    atol=atol,
                    rtol=rtol,
                    err_msg=f"{name}.{column}",
                )
            else:
                assert left.tolist() == right.tolist(), f"{name}.{column}"


@pytest.mark.parametrize(
    "kinds", [("context_gate",), ("task_vectors",), ("hopfield_heads",), ("subspace",)]
)
def test_each_paper_probe_gives_the_local_tables_remotely(server, tiny_handles, kinds):
    handle, ndif = server
    inputs = labelled_inputs(n=12)
    local = run_probes(tiny_handles["nnsight"], inputs, kinds)
    got = run_probes(handle, inputs, kinds)
    assert ndif.sent, "nothing went to the server"
    assert_same_tables(local, got)


ATTRIBUTION = {
    "hopfield_heads": HopfieldHeadsConfig(max_queries=4),
    "head_mediation": HeadMediationConfig(
        top_k=2,
        n_random=2,
        max_queries=4,
        n_permutations=50,
        method="attribution+verify",
        verify_top=3,
        verify_random=2,
    ),
}


def test_head_mediation_attribution_runs_remotely(server, tiny_handles):
    """attribution+verify on NDIF: the estimate's backward inside the trace, a_lh from the
    server's o_proj, the verified heads as z-patched forward passes; the tables equal the
    local run's (which resumes KV caches and reads W_O here)."""
    inputs = labelled_inputs(n=12)
    kinds = list(ATTRIBUTION)

    def run(handle):
        configs = [ATTRIBUTION[k] for k in kinds]
        ctx = ProbeContext.for_probes(handle, inputs, configs, n_boot=20, batch_size=4)
        for kind, config in zip(kinds, configs, strict=True):
            ctx.tables.update(get_probe(kind).run(config, ctx))
        return {k: v for k, v in ctx.tables.items() if k.startswith("head_mediation")}

    handle, ndif = server
    local = run(tiny_handles["nnsight"])
    got = run(handle)
    assert ndif.sent, "nothing went to the server"
    heads = got["head_mediation_heads"]
    assert heads.verified.sum() == 5 and np.isfinite(heads.aie_estimate).all()
    assert_same_tables(local, got, atol=2e-5)


def test_exact_head_mediation_is_refused_remotely():
    assert "attribution+verify" in HeadMediationConfig().remote_unsupported()
    assert HeadMediationConfig(method="attribution").remote_unsupported() is None

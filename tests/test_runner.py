"""A whole (small) suite on the embedded model: run directory, resume, independent recomputation."""

import json

import pandas as pd
import pytest
import torch

from cgar_interp.rundir import RunDirError
from cgar_interp.runner import RunResults, run_suite
from cgar_interp.suite import parse_suite

pytestmark = pytest.mark.integration

SUITE = {
    "name": "mini",
    "model": "embedded",
    "backend": "hf",
    "tasks": ["sst2-mini"],
    "n_fit": 6,
    "n_eval": 10,
    "batch_size": 8,
    "n_boot": 100,
    "probe": [
        {"kind": "context_gate", "context_layers": [28, 30], "lambdas": [0, 1, 10]},
        {"kind": "task_vectors", "layers": [20, 30]},
    ],
}


@pytest.fixture(scope="module")
def suite():
    return parse_suite(SUITE)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, suite, embedded_handles):
    out = tmp_path_factory.mktemp("runs") / "reference"
    return run_suite(suite, out, handle=embedded_handles["hf"], report=False)


def test_run_directory_layout_and_provenance(reference_run):
    path = reference_run.path
    for name in (
        "manifest.json",
        "prompts.parquet",
        "tables/context_gate.parquet",
        "tables/task_vectors.parquet",
        "tables/gate_terms.parquet",
    ):
        assert (path / name).is_file(), name
    manifest = json.loads((path / "manifest.json").read_text())
    for key in (
        "model",
        "model_hash",
        "dtype",
        "device",
        "backend",
        "prepend_bos",
        "versions",
        "allocator",
        "seed",
        "suite",
        "started",
        "finished",
    ):
        assert key in manifest, key
    assert manifest["status"] == "finished"
    from cgar_interp.heap import allocator

    assert manifest["allocator"] == allocator()  # this process's malloc
    assert manifest["tasks"]["sst2-mini"]["prompts"]["task"]["name"] == "sst2-mini"
    # two forward passes per query (zero-shot, ICL) and one per fit query for each label
    # control (flipped, random labels); patch mode and task vectors resume the zero-shot pass's
    # KV cache (no forward)
    n, fit = 16, 6
    assert manifest["forward_stats"]["forward_rows"] == 2 * n + 2 * fit
    assert manifest["forward_stats"]["resume_rows"] > 0
    no_temp = [p for p in path.rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert no_temp == []
    # the self-check ran before the probes, on the paths this suite uses, and passed
    checked = manifest["self_check"]
    assert checked["passed"] and not checked["overridden"] and checked["rows_per_task"] == 3
    assert {"kv_resume", "patch_lambda0", "task_vector_layer0", "decode_algebra"} <= set(
        checked["paths"]
    )
    assert max(p["max_abs_diff"] for p in checked["paths"].values()) < 1e-5
    # where the time and memory went, stage by stage in run order, and per unit
    stages = manifest["stages"]
    assert [s["stage"] for s in stages] == [
        "load_model",
        "prepare_tasks",
        "self_check",
        "probe:context_gate",
        "probe:task_vectors",
        "tables",
        "theory_compare",
        "claims",
    ]
    assert all(s["seconds"] >= 0 and s["peak_rss_mib"] > 0 for s in stages)
    peaks = [s["peak_rss_mib"] for s in stages]
    assert peaks == sorted(peaks)  # a high-water mark never falls
    units = sorted(path.glob("units/**/done.json"))
    assert len(units) == 2
    for done in units:
        info = json.loads(done.read_text())
        assert info["seconds"] > 0 and info["peak_rss_mib"] >= 0.99 * peaks[0]


def test_prompts_table_has_everything_to_recompute(reference_run):
    prompts = pd.read_parquet(reference_run.path / "prompts.parquet")
    assert set(prompts.kind) == {"zero", "icl", "icl_flipped", "icl_random"}
    assert set(prompts.split) == {"fit", "eval"}
    zero = prompts[prompts.kind == "zero"]
    assert not set(zero[zero.split == "fit"].query_id) & set(zero[zero.split == "eval"].query_id)
    assert all(len(ids) > 3 for ids in prompts.token_ids)


def test_tables_recomputed_by_plain_transformers(reference_run, embedded_handles):
    """Zero-shot, ICL and the lambda = 1 decode at c = 30, from prompts.parquet alone."""
    from transformers import AutoModelForCausalLM

    manifest = reference_run.manifest
    model = AutoModelForCausalLM.from_pretrained(manifest["model_path"]).eval()
    labels = torch.tensor(manifest["tasks"]["sst2-mini"]["labels"]["first_ids"])
    prompts = pd.read_parquet(reference_run.path / "prompts.parquet")

    def last(kind, split):
        rows = prompts[(prompts.kind == kind) & (prompts.split == split)]
        logits, resid = [], []
        for ids in rows.token_ids:
            store = {}
            hook = model.model.layers[-1].register_forward_hook(
                lambda m, a, o, s=store: s.setdefault("h", o)
            )
            with torch.no_grad():
                logits.append(model(torch.tensor([list(ids)])).logits[0, -1])
            hook.remove()
            resid.append(store["h"][0, -1])
        return torch.stack(logits), torch.stack(resid), torch.tensor(rows.gold.tolist())

    z_logits, z_resid, gold = last("zero", "eval")
    i_logits, _, _ = last("icl", "eval")
    _, zf, _ = last("zero", "fit")
    _, icf, _ = last("icl", "fit")
    cbar = (icf - zf).mean(0)
    with torch.no_grad():
        d_logits = model.lm_head(model.model.norm(z_resid + 1.0 * cbar))

    table = reference_run.tables["context_gate"]

    def measured(**keys):
        sel = table[table.metric == "label_mass"]
        for k, v in keys.items():
            sel = sel[sel[k] == v]
        assert len(sel) == 1
        return float(sel.value.iloc[0])

    def mass(logits):
        return logits.double().softmax(-1)[:, labels].sum(-1).mean().item()

    assert measured(mode="baseline", vector="zero_shot") == pytest.approx(mass(z_logits), abs=1e-4)
    assert measured(mode="baseline", vector="icl") == pytest.approx(mass(i_logits), abs=1e-4)
    got = measured(mode="decode", vector="context", c_layer=30, lam=1.0)
    assert got == pytest.approx(mass(d_logits), abs=1e-4)
    acc = table[
        (table.metric == "vocab_correct") & (table["mode"] == "baseline") & (table.vector == "icl")
    ]
    expected_acc = (i_logits.argmax(-1) == labels[gold]).double().mean().item()
    assert float(acc.value.iloc[0]) == pytest.approx(expected_acc, abs=1e-9)


def test_interrupted_run_resumes_to_identical_tables(
    tmp_path, suite, reference_run, embedded_handles, monkeypatch
):
    from cgar_interp.probes import base

    out = tmp_path / "interrupted"
    spec = base.PROBES["task_vectors"]

    def boom(config, ctx):
        raise KeyboardInterrupt

    monkeypatch.setitem(
        base.PROBES, "task_vectors", base.ProbeSpec(spec.kind, spec.config_cls, boom, spec.doc)
    )
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, handle=embedded_handles["hf"], report=False)
    assert (out / "units" / "sst2-mini" / "00-context_gate" / "done.json").is_file()
    assert not (out / "units" / "sst2-mini" / "01-task_vectors").exists()
    monkeypatch.setitem(base.PROBES, "task_vectors", spec)
    with pytest.raises(RunDirError, match=r"pass --resume to continue it or --force"):
        run_suite(suite, out, handle=embedded_handles["hf"], report=False)
    resumed = run_suite(suite, out, handle=embedded_handles["hf"], report=False, resume=True)
    assert resumed.manifest["resumed"] is True
    for name in ("context_gate", "task_vectors", "gate_terms"):
        a = (reference_run.path / "tables" / f"{name}.parquet").read_bytes()
        b = (out / "tables" / f"{name}.parquet").read_bytes()
        assert a == b, name
    assert (reference_run.path / "prompts.parquet").read_bytes() == (
        out / "prompts.parquet"
    ).read_bytes()


def test_a_different_config_is_refused(suite, reference_run, embedded_handles):
    other = parse_suite({**SUITE, "seed": 1})
    with pytest.raises(RunDirError, match=r"holds a run with a different config_hash"):
        run_suite(
            other, reference_run.path, handle=embedded_handles["hf"], report=False, resume=True
        )


def test_results_object_for_notebooks(reference_run):
    loaded = RunResults.load(reference_run.path)
    assert set(loaded.tables) >= {"context_gate", "task_vectors"}
    assert "context_gate-sst2-mini" in loaded.figure_names
    fig = loaded.figure("context_gate-sst2-mini")
    assert len(fig.data) > 4
    with pytest.raises(KeyError, match="available"):
        loaded.figure("nope")


def test_lambda_zero_is_zero_shot_in_both_modes_on_the_embedded_model(reference_run):
    table = reference_run.tables["context_gate"]
    zero = (
        table[(table["mode"] == "baseline") & (table.vector == "zero_shot")]
        .set_index("metric")
        .value
    )
    for mode in ("decode", "patch"):
        for c in (28, 30):
            sel = (
                table[
                    (table["mode"] == mode)
                    & (table.vector == "context")
                    & (table.c_layer == c)
                    & (table.lam == 0.0)
                ]
                .set_index("metric")
                .value
            )
            for metric in ("vocab_correct", "label_correct", "label_mass", "entropy"):
                assert sel[metric] == pytest.approx(zero[metric], rel=1e-5, abs=1e-6), (
                    mode,
                    c,
                    metric,
                )

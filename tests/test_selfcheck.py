"""The run-time self-check: each fast path against a plain forward, and what a failure does."""

import json
from pathlib import Path

import pytest
import torch

from cgar_interp.compat import bridge_attention_without_cache
from cgar_interp.probes import TaskInputs
from cgar_interp.selfcheck import (
    PATHS,
    PlannedPaths,
    SelfCheck,
    SelfCheckFailed,
    check_task,
    prob_diff,
    tolerance_for,
)
from cgar_interp.tokens import TokenBatch

from .probe_helpers import synthetic_inputs

BACKENDS = ("hf", "transformer_lens", "nnsight")
EVERY_PATH = PlannedPaths(
    shared_prefix=True,
    resume=True,
    task_vectors=True,
    decode=True,
    head_patterns=True,
    head_resume=True,
    grad_pass=True,
)
VERSIONS = {"transformers": "5.x", "transformer_lens": "4.x", "torch": "2.x"}


# The transformers 5.24 failure on any version: the bridge's attention gets no cache (on 5.24
# it arrived as ``cache=``, which TransformerLens 4.3 does not read).
bridge_blind_to_cache = bridge_attention_without_cache


def cue_inputs(n: int = 9) -> TaskInputs:
    """Synthetic prompts that all end in the same cue token (as real prompts end in ':')."""
    base = synthetic_inputs(n=n)

    def with_cue(batch: TokenBatch) -> TokenBatch:
        rows = [batch.ids[i, : batch.lengths[i]].tolist() + [7] for i in range(batch.batch_size)]
        return TokenBatch.from_sequences(rows)

    # a demonstration block of 20 tokens, so that the shared prefix is long
    demo = torch.randint(20, 128, (20,), generator=torch.Generator().manual_seed(3)).tolist()
    icl = TokenBatch.from_sequences(
        [[1, *demo, *base.zero.ids[i, 1 : base.zero.lengths[i]].tolist(), 7] for i in range(n)]
    )
    return TaskInputs(
        task="cue-tiny",
        classes=base.classes,
        label_ids=base.label_ids,
        gold=base.gold,
        fit=base.fit,
        eval=base.eval,
        zero=with_cue(base.zero),
        icl=icl,
    )


def test_prob_diff_is_the_largest_probability_difference():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    dp, dl = prob_diff(a, b)
    p = torch.sigmoid(torch.tensor(2.0))  # softmax([0, 2])[1]
    assert dp == pytest.approx(float(p - 0.5), abs=1e-7)
    assert dl == 2.0


def test_tolerance_by_dtype_and_unknown_dtype():
    assert tolerance_for(torch.float32) == 1e-4
    assert tolerance_for(torch.bfloat16) > tolerance_for(torch.float16) > 1e-4
    with pytest.raises(ValueError, match="int8"):
        tolerance_for(torch.int8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_path_agrees_with_the_plain_forward(tiny_handles, backend):
    handle = tiny_handles[backend]
    check = SelfCheck(backend, handle.dtype, VERSIONS)
    check_task(check, handle, cue_inputs(), EVERY_PATH, rows=3)
    paths = {c.path for c in check.checks}
    assert paths == set(PATHS) - {"recompute_err"}  # that one is the Hopfield probe's
    for c in check.checks:  # grad_pass: a relative error of a finite difference
        bound = 1e-2 if c.path == "grad_pass" else 1e-5
        assert c.passed and c.max_abs_diff < bound, (c.path, c.max_abs_diff)
    summary = check.summary()
    assert summary["passed"] and not summary["overridden"]
    assert set(summary["paths"]) == paths
    json.dumps(summary)  # goes into the manifest as it is


def test_the_transformers_524_bug_is_caught(tiny_handles, monkeypatch):
    """Stage the bug: the bridge's attention gets no KV cache (as on transformers 5.24)."""
    import cgar_interp.backends.transformer_lens as tl

    monkeypatch.setattr(tl, "bridge_attention_sees_cache", bridge_blind_to_cache)
    handle = tiny_handles["transformer_lens"]
    check = SelfCheck("transformer_lens", handle.dtype, VERSIONS)
    with pytest.raises(SelfCheckFailed) as info:
        check_task(check, handle, cue_inputs(), EVERY_PATH, rows=3)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("self-check failed: shared_prefix")
    for part in ("transformer_lens", "transformers 5.x", "tolerance 0.0001 for float32"):
        assert part in message
    # with the opt-out every path is measured and the failures are recorded
    check = SelfCheck("transformer_lens", handle.dtype, VERSIONS, allow_failure=True)
    check_task(check, handle, cue_inputs(), EVERY_PATH, rows=3)
    failed = {c.path for c in check.checks if not c.passed}
    assert {
        "shared_prefix",
        "kv_resume",
        "patch_lambda0",
        "task_vector_layer0",
        "head_resume",
        "suffix_patch",
    } <= failed
    assert "decode_algebra" not in failed  # no cache there: decode mode was unaffected
    assert check.summary()["overridden"]


def test_broken_decode_algebra_is_caught(tiny_handles, monkeypatch):
    from cgar_interp.decoding import ShiftedDecoder

    original = ShiftedDecoder.__call__

    def off_by_a_bit(self, v, lambdas, rows=slice(None)):
        out = original(self, v, lambdas, rows)
        return out + 0.05 * torch.arange(out.shape[-1]) / out.shape[-1]

    monkeypatch.setattr(ShiftedDecoder, "__call__", off_by_a_bit)
    handle = tiny_handles["hf"]
    plan = PlannedPaths(False, False, False, True, False)
    with pytest.raises(SelfCheckFailed, match="decode_algebra"):
        check_task(SelfCheck("hf", handle.dtype, VERSIONS), handle, cue_inputs(), plan)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrong_gradient_is_caught(tiny_handles, monkeypatch, backend):
    """A grad pass whose gradient is off by a factor (what a hook dropping one of a
    tensor's uses would give) fails grad_pass; the true one passes on every backend."""
    handle = tiny_handles[backend]
    plan = PlannedPaths(False, False, False, False, False, False, grad_pass=True)
    check = SelfCheck(backend, handle.dtype, VERSIONS)
    check_task(check, handle, cue_inputs(), plan)
    (ok,) = check.checks
    assert ok.path == "grad_pass" and ok.passed and ok.max_abs_diff < 0.01, ok
    original = type(handle.backend).forward_grad

    def halved(self, *args, **kwargs):
        logits, reads, grads = original(self, *args, **kwargs)
        return logits, reads, {s: g * 0.5 for s, g in grads.items()}

    monkeypatch.setattr(type(handle.backend), "forward_grad", halved)
    with pytest.raises(SelfCheckFailed, match="grad_pass"):
        check_task(SelfCheck(backend, handle.dtype, VERSIONS), handle, cue_inputs(), plan)


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="unknown self-check path 'prefix'"):
        SelfCheck("hf", torch.float32).record("prefix", "t", 0.0, rows=1)


def test_hopfield_recompute_err_is_never_silent(tiny_handles, monkeypatch):
    """The Hopfield probe records its recompute_err; a pattern off by 0.01 stops it."""
    import cgar_interp.probes.hopfield_heads as hh
    from cgar_interp.probes import ProbeContext
    from cgar_interp.probes.hopfield_heads import HopfieldHeadsConfig, run_hopfield_heads

    handle = tiny_handles["hf"]
    inputs = synthetic_inputs(n=6)
    config = HopfieldHeadsConfig(layers="all")
    check = SelfCheck("hf", handle.dtype, VERSIONS)
    ctx = ProbeContext(handle, inputs, (0, 1, 2), n_boot=20, self_check=check)
    run_hopfield_heads(config, ctx)
    recorded = [c for c in check.checks if c.path == "recompute_err"]
    assert len(recorded) == 1 and recorded[0].passed and recorded[0].max_abs_diff < 1e-5

    original = hh.read_heads

    def skewed(*args, **kwargs):
        reads = original(*args, **kwargs)
        for r in reads.values():
            r.pattern[..., 0] += 0.01
        return reads

    monkeypatch.setattr(hh, "read_heads", skewed)
    ctx = ProbeContext(
        handle, inputs, (0, 1, 2), n_boot=20, self_check=SelfCheck("hf", handle.dtype)
    )
    with pytest.raises(SelfCheckFailed, match="recompute_err"):
        run_hopfield_heads(config, ctx)


SMALL_SUITE = {
    "name": "selfcheck-mini",
    "model": "embedded",
    "backend": "transformer_lens",
    "tasks": ["sst2-mini"],
    "n_fit": 4,
    "n_eval": 6,
    "batch_size": 8,
    "n_boot": 50,
    "probe": [
        {"kind": "context_gate", "context_layers": [28], "lambdas": [0, 1], "vectors": ["context"]},
        {"kind": "task_vectors", "layers": [0, 20]},
    ],
}


@pytest.mark.integration
def test_a_run_refuses_a_broken_fast_path_and_the_opt_out_shows_a_banner(
    tmp_path, embedded_handles, monkeypatch
):
    """The demo's failure, staged: the TransformerLens bridge stops seeing the KV cache."""
    import cgar_interp.backends.transformer_lens as tl
    from cgar_interp.runner import run_suite
    from cgar_interp.suite import parse_suite

    suite = parse_suite(SMALL_SUITE)
    handle = embedded_handles["transformer_lens"]
    monkeypatch.setattr(tl, "bridge_attention_sees_cache", bridge_blind_to_cache)
    out = tmp_path / "broken"
    with pytest.raises(SelfCheckFailed, match="kv_resume") as info:
        run_suite(suite, out, handle=handle)
    assert "\n" not in str(info.value) and "transformer_lens" in str(info.value)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "self_check_failed"
    assert not manifest["self_check"]["passed"]
    assert not (out / "units").exists()  # no probe ran on the broken path

    went_on = run_suite(suite, out, handle=handle, resume=True, allow_self_check_failure=True)
    summary = went_on.manifest["self_check"]
    assert summary["overridden"] and not summary["paths"]["kv_resume"]["passed"]
    page = (out / "report.html").read_text()
    banner = page.index('id="self-check-banner"')
    assert banner < page.index('class="prov"')  # at the top, before everything else
    assert "kv_resume" in page[banner : banner + 400]
    # and the numbers it warns about are indeed wrong: lambda = 0 in patch mode != zero-shot
    gate = went_on.tables["context_gate"]
    mass = gate[gate.metric == "label_mass"]
    zero = mass[mass.vector == "zero_shot"].value.iloc[0]
    patched = mass[(mass["mode"] == "patch") & (mass.lam == 0)].value.iloc[0]
    assert abs(patched - zero) > 1e-3


@pytest.mark.integration
def test_cli_stops_with_one_line_and_the_flag_goes_on(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cgar_interp.backends.transformer_lens as tl
    from cgar_interp.cli import app

    suite = tmp_path / "mini.toml"
    suite.write_text(
        'name = "mini"\nmodel = "embedded"\nbackend = "transformer_lens"\n'
        'tasks = ["sst2-mini"]\nn_fit = 4\nn_eval = 4\nn_boot = 20\n'
        '[[probe]]\nkind = "task_vectors"\nlayers = [0, 10]\n'
    )
    monkeypatch.setattr(tl, "bridge_attention_sees_cache", bridge_blind_to_cache)
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(suite), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert "self-check failed: kv_resume" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app,
        ["run", str(suite), "--out", str(out), "--quiet", "--resume", "--allow-self-check-failure"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["self_check"]["overridden"]


def test_report_section_and_banner():
    from cgar_interp.report import self_check_html

    check = SelfCheck("hf", torch.float32, VERSIONS, allow_failure=True)
    check.record("kv_resume", "t", 2e-7, rows=3, logit_diff=1e-5)
    ok = self_check_html({"self_check": {**check.summary(), "rows_per_task": 3}})
    assert 'id="self-check"' in ok and "banner" not in ok and "2.00e-07" in ok
    check.record("decode_algebra", "t", 0.3, rows=3)
    bad = self_check_html({"self_check": {**check.summary(), "rows_per_task": 3}})
    assert bad.index('id="self-check-banner"') < bad.index('id="self-check"')
    assert "failed: decode_algebra" in bad and 'class="l fail">FAIL' in bad
    old = self_check_html({})  # a run made before the check existed says so
    assert 'id="self-check-banner"' in old and "never compared" in old


def test_report_opens_with_the_check_and_names_the_environment(tmp_path):
    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    check = SelfCheck("hf", torch.float32, VERSIONS, allow_failure=True)
    check.record("patch_lambda0", "t", 0.2, rows=3)
    environment = {
        "lock_file": "requirements.lock",
        "lock_sha256": "ab" * 32,
        "installed_matches_lock": False,
        "mismatches": ["transformers: installed 5.25.0, lock 5.24.0"],
    }
    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest(
            {
                "identity": {"config_hash": "x"},
                "suite": {"name": "s", "tasks": []},
                "self_check": {**check.summary(), "rows_per_task": 3},
                "environment": environment,
            }
        )
    page = build_report(tmp_path / "run").read_text()
    body = page[page.index("<body>") :]
    assert body.index('id="self-check-banner"') < body.index('id="self-check"') < body.index("prov")
    assert "failed: patch_lambda0" in body
    assert "installed packages differ: transformers: installed 5.25.0, lock 5.24.0" in body


def test_bfloat16_passes_within_its_tolerance_and_still_catches_the_bug(
    tiny_llama_dir, monkeypatch
):
    import cgar_interp.backends.transformer_lens as tl
    from cgar_interp import load_model

    handle = load_model(str(tiny_llama_dir), backend="transformer_lens", dtype="bfloat16")
    check = SelfCheck("transformer_lens", handle.dtype, VERSIONS)
    check_task(check, handle, cue_inputs(), EVERY_PATH, rows=3)
    assert check.passed and check.tolerance == 0.1
    monkeypatch.setattr(tl, "bridge_attention_sees_cache", bridge_blind_to_cache)
    with pytest.raises(SelfCheckFailed, match="tolerance 0.1 for bfloat16"):
        check_task(SelfCheck("transformer_lens", handle.dtype), handle, cue_inputs(), EVERY_PATH)


def test_report_keeps_its_temp_file_beside_the_run(tmp_path, monkeypatch):
    """A kill while report.html is written leaves no partial file inside the run directory."""
    import tempfile

    from cgar_interp.report import build_report
    from cgar_interp.rundir import RunDir

    with RunDir.open(tmp_path / "run", {"config_hash": "x"}) as run:
        run.write_manifest({"identity": {"config_hash": "x"}, "suite": {"name": "s", "tasks": []}})
    seen = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        seen.append(Path(kwargs["dir"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    build_report(tmp_path / "run")
    assert seen and all(d == tmp_path / ".run.tmp" for d in seen)
    assert not list((tmp_path / "run").rglob("*.part"))

"""The probe protocol: every probe config declares what the engine asks, and the engine asks
only through those declarations (no attribute probing, no probe kind named in the engine)."""

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cgar_interp.probes import PROBES, ProbeConfig, register_probe
from cgar_interp.probes.protocol import (
    BASE_PROMPT_KINDS,
    FLIPPED,
    PERMUTED,
    RANDOM_LABELS,
    RESUME_PATHS,
)
from cgar_interp.selfcheck import PATHS, PlannedPaths, planned_paths
from cgar_interp.sites import Site, site_name, site_names
from cgar_interp.suite import load_suite, shipped_suites
from cgar_interp.tokens import TokenBatch

PACKAGE = Path(__file__).resolve().parent.parent / "cgar_interp"
ENGINE = ("suite.py", "selfcheck.py", "runner.py", "report.py", "tasks_bridge.py")


def test_every_registered_config_inherits_the_protocol():
    for spec in PROBES.values():
        assert issubclass(spec.config_cls, ProbeConfig), spec.kind
        config = spec.config_cls()
        assert isinstance(config.prompt_kinds(), frozenset)
        assert config.prompt_kinds() >= BASE_PROMPT_KINDS
        assert config.self_check_paths() <= set(PATHS)


def test_a_config_outside_the_protocol_is_refused():
    @dataclass(frozen=True)
    class Loose:
        layers: str = "all"

    with pytest.raises(TypeError, match="must inherit"):
        register_probe("loose_probe", Loose)(lambda config, ctx: {})
    assert "loose_probe" not in PROBES


def test_protocol_defaults():
    config = ProbeConfig()
    assert config.needed_layers(4) == ()
    assert config.shared_reads(None, 4) == ()
    assert config.resumes_zero_shot is False
    assert config.prompt_kinds() == BASE_PROMPT_KINDS
    assert config.self_check_paths() == frozenset()
    assert config.remote_unsupported() is None
    assert config.check_suite(0, ()) is None
    assert config.compares_with_theory() is False
    assert ProbeConfig.key_numbers({}) == {}

    @dataclass(frozen=True)
    class Resuming(ProbeConfig):
        @property
        def resumes_zero_shot(self) -> bool:
            return True

    assert Resuming().self_check_paths() == RESUME_PATHS


def test_label_control_prompts_only_where_a_probe_asks():
    gate = PROBES["context_gate"].config_cls
    assert gate().prompt_kinds() == BASE_PROMPT_KINDS | {FLIPPED, RANDOM_LABELS}
    assert gate(vectors=("context", "random")).prompt_kinds() == BASE_PROMPT_KINDS
    assert gate(vectors=("context", "flipped")).prompt_kinds() == BASE_PROMPT_KINDS | {FLIPPED}
    assert gate(vectors=("context", "random_labels")).prompt_kinds() == BASE_PROMPT_KINDS | {
        RANDOM_LABELS
    }
    mediation = PROBES["head_mediation"].config_cls
    assert mediation().prompt_kinds() == BASE_PROMPT_KINDS | {PERMUTED}
    assert mediation(corrupted="flipped").prompt_kinds() == BASE_PROMPT_KINDS | {FLIPPED}
    # the Hopfield probe's length-matched control (random labels), unless switched off
    hopfield = PROBES["hopfield_heads"].config_cls
    assert hopfield().prompt_kinds() == BASE_PROMPT_KINDS | {RANDOM_LABELS}
    assert hopfield(length_control=False).prompt_kinds() == BASE_PROMPT_KINDS
    assert PROBES["task_vectors"].config_cls().prompt_kinds() == BASE_PROMPT_KINDS
    subspace = PROBES["subspace"].config_cls  # claim 4b's random-label shift
    assert subspace().prompt_kinds() == BASE_PROMPT_KINDS | {RANDOM_LABELS}
    assert subspace(random_labels=False).prompt_kinds() == BASE_PROMPT_KINDS


# what the self-check plans per shipped suite (probe kinds looked up by name): (resume,
# task_vectors, decode, head_patterns, head_resume, grad_pass); head_resume is never planned
# for a remote model (its head mediation verifies heads by z-patched full forwards)
PLANNED = {
    "heads": (True, True, False, True, True, False),
    "heads_attribution": (True, True, False, True, True, True),
    "hopfield": (False, False, False, True, False, False),
    "layers": (True, False, True, False, False, False),
    "own_data_example": (True, True, True, False, False, False),
    "paper": (True, True, True, True, True, True),
    "paper_seeds": (True, True, True, True, True, True),
    "paper_ndif": (True, True, True, True, True, True),
    "shots": (False, False, True, False, False, False),
    "subspace": (False, False, False, False, False, False),
}


@pytest.mark.parametrize("path", shipped_suites(), ids=lambda p: p.stem)
def test_planned_paths_of_the_shipped_suites(path):
    suite = load_suite(path)
    prefix = TokenBatch(torch.zeros(2, 20, dtype=torch.long), torch.tensor([20, 20]))
    for remote in (False, True):
        plan = planned_paths(suite, prefix, remote=remote)
        resume, tv, decode, patterns, head_resume, grad = PLANNED[path.stem]
        want = (resume, tv, decode, patterns, head_resume and not remote, grad)
        assert plan == PlannedPaths(not remote, *want)


def test_planned_paths_refuse_an_unknown_path():
    with pytest.raises(ValueError, match="unknown self-check paths"):
        PlannedPaths.of(frozenset({"warp_drive"}), shared_prefix=False)


def test_key_numbers_come_from_the_probes():
    import pandas as pd

    from cgar_interp.report import key_numbers, key_numbers_by_probe

    tv = pd.DataFrame(
        {
            "task": ["a", "a", "b"],
            "layer": [1, 2, 1],
            "metric": ["vocab_correct"] * 3,
            "value": [0.5, 0.75, 0.25],
            "ci_low": [0.4, 0.6, 0.1],
            "ci_high": [0.6, 0.9, 0.4],
            "n": [8, 8, 8],
        }
    )
    by_probe = key_numbers_by_probe({"task_vectors": tv})
    assert list(by_probe) == ["task_vectors"]
    (frame,) = key_numbers({"task_vectors": tv})["task_vectors"].values()
    assert frame.to_dict("records") == [
        {"task": "a", "layer": 2, "accuracy": "0.750 [0.600, 0.900]", "n": 8},
        {"task": "b", "layer": 1, "accuracy": "0.250 [0.100, 0.400]", "n": 8},
    ]


def test_site_names_are_the_sites_one_name():
    assert site_name("resid", 12) == "resid.12" == str(Site("resid", 12))
    assert site_names("head_out", (0, 3)) == ("head_out.0", "head_out.3")
    with pytest.raises(ValueError, match="unknown site kind"):
        site_name("residual", 1)


def _engine_sources():
    """The engine modules' sources; of report.py its key-number functions only (its section
    ordering is the figures' part)."""
    sources = {name: (PACKAGE / name).read_text() for name in ENGINE}
    report = ast.parse(sources.pop("report.py"))
    sources["report.py"] = "\n".join(
        ast.unparse(node)
        for node in report.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("key_numbers")
    )
    return sources


def test_the_engine_probes_no_config_attributes():
    """No getattr/hasattr on a probe config: the protocol declares every hook."""
    for name, text in _engine_sources().items():
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
            ):
                target = ast.unparse(node.args[0])
                assert "config" not in target, f"{name}: {ast.unparse(node)}"


def test_the_engine_names_no_probe_kind():
    """Probe kinds (and their table names) appear as literals only in their own modules."""
    kinds = set(PROBES)
    assert _engine_sources()["report.py"]
    for name, text in _engine_sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in kinds, f"{name} names probe kind {node.value!r}"

"""Suite files: strict parsing, shipped suites, layer specs (no model needed)."""

import pytest

from cgar_interp.config import ConfigError
from cgar_interp.layers import resolve_layers
from cgar_interp.suite import load_suite, parse_suite, shipped_suites

GOOD = """
name = "t"
tasks = ["sst2-mini"]
[[probe]]
kind = "context_gate"
lambdas = [0, 1]
"""


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_every_shipped_suite_parses():
    names = {p.stem for p in shipped_suites()}
    assert {"paper", "layers"} <= names
    for path in shipped_suites():
        suite = load_suite(path)
        assert suite.probes, path


def test_paper_suite_is_the_papers_grid():
    suite = load_suite("paper")
    gate = next(p.config for p in suite.probes if p.kind == "context_gate")
    assert gate.lambdas == (0.0, 0.01, 0.1, 1.0, 10.0)
    assert suite.shots == 1 and set(suite.tasks) == {"sst2-mini", "trec-mini", "agnews-mini"}
    # the paper's c = 20, 24, 28, 32 of 32 layers, on Llama-3-8B and on the 30-layer model
    assert resolve_layers(gate.context_layers, 32) == (20, 24, 28, 32)
    assert resolve_layers(gate.context_layers, 30) == (19, 22, 26, 30)
    assert resolve_layers(gate.query_layers, 30) == (30,)


def test_overrides_and_hash(tmp_path):
    a = load_suite(write(tmp_path, GOOD))
    b = load_suite(write(tmp_path, GOOD), seed=3)
    assert b.seed == 3 and a.config_hash() != b.config_hash()
    assert load_suite(write(tmp_path, GOOD)).config_hash() == a.config_hash()


@pytest.mark.parametrize(
    "text,match",
    [
        (
            'name = "t"\ntasks = ["x"]\nshot = 1\n[[probe]]\nkind = "context_gate"\n',
            r"unknown key 'shot' in suite s.toml \(did you mean 'shots'\?\)",
        ),
        (
            'tasks = ["x"]\nshots = "one"\n[[probe]]\nkind = "context_gate"\n',
            r"key 'shots' in suite s.toml must be int or tuple\[int, ...\]; got 'one'",
        ),
        (
            'tasks = ["x"]\nshots = 0\n[[probe]]\nkind = "context_gate"\n',
            r"key 'shots' must be >= 1; got 0",
        ),
        (
            'tasks = ["x"]\n[[probe]]\nkind = "context_gat"\n',
            r"unknown probe kind 'context_gat'; valid kinds: .*context_gate",
        ),
        (
            'tasks = ["x"]\n[[probe]]\nlambdas = [1]\n',
            r"\[\[probe\]\] 1 in suite s.toml needs a 'kind' key",
        ),
        (
            'tasks = ["x"]\n[[probe]]\nkind = "context_gate"\nlambdas = [-1]\n',
            r"lambda -1.0 is not valid",
        ),
        ('tasks = ["x"]\n', r"has no \[\[probe\]\] tables"),
        ('tasks = ["x"\n', r"is not valid TOML"),
        (
            'tasks = []\n[[probe]]\nkind = "task_vectors"\n',
            r"no tasks: name at least one in 'tasks'",
        ),
    ],
)
def test_bad_suites_name_the_offending_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_suite(write(tmp_path, text))


def test_missing_suite_file_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"does not exist; shipped suites: .*paper"):
        load_suite("no_such_suite.toml")


def test_parse_suite_from_python_dict():
    suite = parse_suite(
        {"tasks": ["sst2-mini"], "probe": [{"kind": "task_vectors", "layers": [1, -1]}]}
    )
    assert resolve_layers(suite.probes[0].config.layers, 30) == (1, 30)


def test_layer_specs():
    assert resolve_layers("all", 2) == (0, 1, 2)
    assert resolve_layers("upper_half", 30)[0] == 15
    assert resolve_layers([-1, 0], 30) == (0, 30)
    with pytest.raises(
        ValueError, match=r"entry 31 is out of range .*valid residual layers are 0\.\.30"
    ):
        resolve_layers([31], 30)
    with pytest.raises(ValueError, match=r"unknown layers spec 'mid'"):
        resolve_layers("mid", 30)

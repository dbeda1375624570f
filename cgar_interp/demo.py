"""``make demo``: a first look at in-context learning inside the embedded model.

It loads the model, measures label-token mass at the query's last position zero-shot and with
one demonstration per class, and checks that the final residual decodes to the model's own
logits. It writes ``manifest.json`` (full provenance) and ``tables/demo.parquet`` into the run
directory. The probe suites of later issues grow this into the paper's full experiment.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from .results import atomic_write_bytes, atomic_write_json, now_utc
from .sites import site_name

DEMOS = (
    ("a moving, beautifully acted film", "positive"),
    ("dull, predictable and far too long", "negative"),
)
QUERIES = (
    ("an absolute delight from start to finish", "positive"),
    ("a tedious, lifeless mess", "negative"),
    ("the best performance of the year", "positive"),
    ("I want those two hours of my life back", "negative"),
    ("warm, funny and surprisingly wise", "positive"),
    ("the jokes fall flat and the plot goes nowhere", "negative"),
)
TEMPLATE = "Review: {text}\nSentiment:"


def run_demo(
    out: Path,
    *,
    model="embedded",
    backend="transformer_lens",
    device="cpu",
    dtype=None,
    console=None,
):
    """Run the demo and write its run directory; returns the directory."""
    from .models import load_model

    started = now_utc()
    t0 = time.perf_counter()
    handle = load_model(model, backend=backend, device=device, dtype=dtype)
    if console:
        console.print(f"loaded {handle!r} in {time.perf_counter() - t0:.1f}s")
    labels = ["negative", "positive"]
    label_ids = [
        handle.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in labels
    ]
    demo_block = "".join(TEMPLATE.format(text=t) + f" {y}\n" for t, y in DEMOS)
    rows = []
    for kind, prefix in (("zero_shot", ""), ("icl_1shot", demo_block)):
        batch = handle.tokenize([prefix + TEMPLATE.format(text=t) for t, _ in QUERIES])
        run = handle.capture(
            batch,
            [site_name("resid", handle.n_layers)],
            positions=-1,
            with_logits=True,
            logits_positions=-1,
        )
        probs = run.logits.float().softmax(-1)
        decoded = handle.decode_residual(run[site_name("resid", handle.n_layers)])
        for i, (text, gold) in enumerate(QUERIES):
            label_probs = probs[i, label_ids]
            rows.append(
                {
                    "prompt_kind": kind,
                    "query": text,
                    "gold": gold,
                    "label_mass": float(label_probs.sum()),
                    "label_correct": labels[int(label_probs.argmax())] == gold,
                    "vocab_correct": int(probs[i].argmax()) == label_ids[labels.index(gold)],
                    "decode_max_abs_diff": float((decoded[i] - run.logits[i]).abs().max()),
                }
            )
    table = pd.DataFrame(rows)
    out = Path(out)
    atomic_write_bytes(out / "tables" / "demo.parquet", table.to_parquet(index=False))
    summary = table.groupby("prompt_kind")[["label_mass", "label_correct", "vocab_correct"]].mean()
    manifest = {
        "kind": "demo",
        "started": started,
        "finished": now_utc(),
        "seed": None,
        "config": {"template": TEMPLATE, "demos": DEMOS, "queries": QUERIES, "labels": labels},
        "label_token_ids": label_ids,
        **handle.provenance(),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(out / "manifest.json", manifest)
    if console:
        console.print(summary.round(3).to_string())
    return out

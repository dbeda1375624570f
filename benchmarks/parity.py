"""Print backend parity on the embedded model: max |difference| to plain transformers (fp32).

Run: ``.venv/bin/python benchmarks/parity.py`` (or ``make bench``).
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from cgar_interp import all_sites, load_model  # noqa: E402

PROMPTS = [
    "Review: a moving, beautifully acted film\nSentiment: positive\n"
    "Review: dull and far too long\nSentiment: negative\n"
    "Review: I loved every minute of it\nSentiment:",
    "Question: Who wrote Hamlet?\nAnswer type:",
    "Article: Stocks rallied on Tuesday after the central bank held rates.\nTopic:",
]


def main() -> None:
    handles = {b: load_model("embedded", backend=b) for b in ("hf", "transformer_lens", "nnsight")}
    batch = handles["hf"].tokenize(PROMPTS)
    sites = [str(s) for s in all_sites(30)]
    runs = {
        b: h.capture(batch, sites, positions=None, with_logits=True) for b, h in handles.items()
    }
    ref = runs["hf"]
    print(f"embedded model, {len(PROMPTS)} prompts, {batch.ids.shape[1]} positions, fp32, CPU")
    print(
        f"{'backend':18s} {'logits':>10s} {'resid.* max':>12s} {'all sites max':>14s} {'decode(resid.30)':>17s}"
    )
    for name in ("hf", "transformer_lens", "nnsight"):
        run = runs[name]
        logits = (run.logits - ref.logits).abs().max().item()
        resid = max((run[s] - ref[s]).abs().max().item() for s in sites if s.startswith("resid."))
        every = max((run[s] - ref[s]).abs().max().item() for s in sites)
        decode = (handles[name].decode_residual(run["resid.30"]) - run.logits).abs().max().item()
        print(f"{name:18s} {logits:10.2e} {resid:12.2e} {every:14.2e} {decode:17.2e}")
    # The backends all run eager attention (patterns need it). For scale: the same checkpoint in
    # plain transformers with its default SDPA kernel, no hooks, against the eager reference.
    import torch
    from transformers import AutoModelForCausalLM

    sdpa = AutoModelForCausalLM.from_pretrained(handles["hf"].path, attn_implementation="sdpa")
    with torch.no_grad():
        logits = sdpa(batch.ids, use_cache=False).logits
    rows = torch.arange(batch.batch_size)
    last = batch.lengths - 1
    diff = (logits[rows, last] - ref.logits[rows, last]).abs().max().item()
    print(f"{'hf sdpa, no hooks':18s} {diff:10.2e}  (last-position logits vs eager reference)")


if __name__ == "__main__":
    main()

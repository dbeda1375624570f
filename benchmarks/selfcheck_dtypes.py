"""The self-check's differences per dtype on the embedded model, with and without the
transformers 5.24 bug staged (the TransformerBridge's attention gets no KV cache).

This is how the half-precision tolerances in ``cgar_interp/selfcheck.py`` were set:
``python benchmarks/selfcheck_dtypes.py float32 bfloat16 float16`` prints, per dtype, the
largest |delta p| of each path on 3 eval queries of each paper-suite task, for the correct
engine and for the broken one. Re-run it on a GPU (``--device cuda``) when one is lent.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(dtype: str, device: str, broken: bool) -> dict[str, float]:
    import cgar_interp.backends.transformer_lens as tl
    from cgar_interp import load_model
    from cgar_interp.compat import bridge_attention_without_cache
    from cgar_interp.selfcheck import SelfCheck, check_task, planned_paths
    from cgar_interp.suite import load_suite
    from cgar_interp.tasks_bridge import prepare_task

    original = tl.bridge_attention_sees_cache
    tl.bridge_attention_sees_cache = bridge_attention_without_cache if broken else original
    try:
        suite = load_suite("paper")
        handle = load_model("embedded", backend="transformer_lens", dtype=dtype, device=device)
        check = SelfCheck(handle.backend_name, handle.dtype, allow_failure=True)
        for task in suite.tasks:
            inputs = prepare_task(handle, suite, task).inputs
            check_task(check, handle, inputs, planned_paths(suite, inputs.icl), rows=3)
        return {p: row["max_abs_diff"] for p, row in check.summary()["paths"].items()}
    finally:
        tl.bridge_attention_sees_cache = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dtypes", nargs="*", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    from cgar_interp.selfcheck import TOLERANCE

    for dtype in args.dtypes:
        tol = TOLERANCE[getattr(torch, dtype)]
        for broken in (False, True):
            diffs = measure(dtype, args.device, broken)
            cells = ", ".join(f"{p} {d:.2e}" for p, d in diffs.items())
            print(f"{dtype:9s} tol {tol:g} {'staged bug' if broken else 'correct   '}: {cells}")


if __name__ == "__main__":
    main()

"""The paper grid on a random-init model of Llama-3-8B's exact shape (for a GPU machine).

Run on a GPU: ``.venv/bin/python benchmarks/gpu_shape.py --device cuda`` (bf16 by default).
Smoke run anywhere: ``.venv/bin/python benchmarks/gpu_shape.py --shape tiny --device cpu``.

Weights are random (no checkpoint is downloaded), so the numbers measure cost, not behaviour:
throughput of the context-gate probe (decode + patch modes, paper grid, KV-cache reuse of a
shared demonstration prefix), peak accelerator memory, and the capture overhead against a bare
``transformers`` forward that computes the same outputs. Prompts are synthetic token ids of
realistic length: a shared demonstration prefix (AG-News 1-shot-per-class is ~150 tokens on
SmolLM2's tokenizer) and queries of ~35 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cgar_interp.backends.hf import HFBackend
from cgar_interp.models import Architecture, ModelHandle
from cgar_interp.probes import ProbeContext, TaskInputs, get_probe
from cgar_interp.probes.context_gate import ContextGateConfig
from cgar_interp.tokens import TokenBatch

SHAPES = {
    # Llama-3-8B: 32 layers, d_model 4096, 32 heads, 8 KV heads, vocab 128256, rope_theta 5e5
    "llama3-8b": dict(
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=14336,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    # the same proportions, small enough for a CPU smoke run (tests/test_benchmark_scripts.py)
    "tiny": dict(
        num_hidden_layers=4,
        hidden_size=64,
        intermediate_size=224,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=512,
        rope_theta=500000.0,
        max_position_embeddings=512,
    ),
}


def random_handle(shape: str, device: str, dtype: torch.dtype, seed: int = 0) -> ModelHandle:
    """A ModelHandle (plain-hooks backend) over a seeded random-init Llama of ``shape``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    config = LlamaConfig(**SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "eager"  # what every backend runs (patterns need it)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)
    arch = Architecture.from_hf_config(config)
    return ModelHandle(
        name=f"random-init {shape}",
        path="",
        model_hash=f"random-init-{shape}-seed{seed}",
        backend=HFBackend(model, arch.dims),
        arch=arch,
        tokenizer=None,
        device=device,
        dtype=dtype,
        prepend_bos=True,
    )


def synthetic_inputs(
    vocab: int, n_queries: int, prefix_len: int, query_len: int, n_fit: int, seed: int = 0
) -> TaskInputs:
    """Token-id prompts: ``[BOS] + query`` and ``[BOS] + shared prefix + query``, 4 classes."""
    gen = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, vocab, (prefix_len,), generator=gen).tolist()
    zero, icl = [], []
    for _ in range(n_queries):
        length = int(torch.randint(query_len // 2, query_len * 3 // 2 + 1, (1,), generator=gen))
        query = torch.randint(3, vocab, (length,), generator=gen).tolist()
        zero.append([1, *query])
        icl.append([1, *prefix, *query])
    order = torch.randperm(n_queries, generator=gen)
    return TaskInputs(
        task="synthetic-tokens",
        classes=("a", "b", "c", "d"),
        label_ids=torch.randperm(vocab - 3, generator=gen)[:4] + 3,
        gold=torch.randint(0, 4, (n_queries,), generator=gen),
        fit=order[:n_fit].sort().values,
        eval=order[n_fit:].sort().values,
        zero=TokenBatch.from_sequences(zero),
        icl=TokenBatch.from_sequences(icl),
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args) -> list[tuple[str, str]]:
    dtype = getattr(torch, args.dtype)
    handle = random_handle(args.shape, args.device, dtype)
    inputs = synthetic_inputs(
        handle.arch.vocab_size, args.queries, args.prefix, args.query_len, args.fit
    )
    cuda = args.device.startswith("cuda")
    rows = [
        (
            "environment",
            f"{handle.name}, {args.dtype}, {args.device}"
            + (f" ({torch.cuda.get_device_name()})" if cuda else "")
            + f", torch {torch.__version__}, batch {args.batch}",
        )
    ]
    config = ContextGateConfig(context_layers="paper", vectors=("context", "random"))
    layers = config.needed_layers(handle.n_layers)

    def probe():
        ctx = ProbeContext(
            handle, inputs, layers, n_boot=0, batch_size=args.batch, keep_states=True
        )
        return get_probe("context_gate").run(config, ctx)

    probe()  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(args.device)
    start = time.perf_counter()
    tables = probe()
    sync(args.device)
    seconds = time.perf_counter() - start
    n_rows = len(tables["context_gate"])
    rows.append(
        (
            "paper grid (decode + patch, context + random vectors), "
            f"{args.queries} queries, prefix {args.prefix} + query ~{args.query_len} tokens",
            f"{args.queries / seconds:.2f} queries/s ({seconds:.1f} s, {n_rows} table rows)",
        )
    )
    if cuda:
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))

    batch = inputs.icl.select(torch.arange(min(args.batch, args.queries)))
    every = [f"resid.{layer}" for layer in range(handle.n_layers + 1)]
    model = handle.backend.hf_model
    ids = batch.ids.to(handle.input_device)
    rows_idx = torch.arange(batch.batch_size, device=ids.device)
    last = (batch.lengths - 1).to(ids.device)

    def bare():
        with torch.no_grad():
            out = model.model(ids, use_cache=False, output_hidden_states=True)
            kept = [h[rows_idx, last] for h in out.hidden_states[:-1]]
            return kept, model.lm_head(out.last_hidden_state[rows_idx, last])

    def capture():
        return handle.capture(batch, every, -1, with_logits=True, logits_positions=-1)

    times = {"bare": [], "capture": []}
    for _ in range(args.repeat):
        for name, fn in (("bare", bare), ("capture", capture)):
            sync(args.device)
            start = time.perf_counter()
            fn()
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    bare_t, cap_t = statistics.median(times["bare"]), statistics.median(times["capture"])
    rows.append(
        (
            f"capture resid.0..{handle.n_layers} at the last token + logits vs bare forward "
            f"(same outputs), ICL batch of {batch.batch_size}",
            f"{cap_t / bare_t:.2f}x ({cap_t * 1000:.1f} ms vs {bare_t * 1000:.1f} ms)",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="llama3-8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--fit", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=150)
    parser.add_argument("--query-len", type=int, default=35)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {args.device!r} asked for but CUDA is not available here")
    if not 0 < args.fit < args.queries:
        raise SystemExit(f"--fit must be in 1..{args.queries - 1}; got {args.fit}")
    print("| figure | measured |\n|---|---|")
    for name, value in run(args):
        print(f"| {name} | {value} |", flush=True)


if __name__ == "__main__":
    main()

"""RoPE benchmark: queries and keys rotated at Qwen2.5-VL-7B and NextStep-1 head shapes.

CPU (always): the reference eager vs ``torch.compile(reference)``, fp32, a fixed thread count;
GPU (only when CUDA is present): the Triton backend vs reference vs compile vs Liger-Kernel's RoPE
(when importable, 1D positions only: it takes a cos/sin table), bf16, with peak extra memory.
Columns: ``eager`` = ``rope_cos_sin`` + ``apply_rope_reference`` on q and k; ``nx`` =
``nxkernels.rope.apply_rope_qk`` (dispatch + custom op; on CPU it runs the reference backend);
``compiled`` = ``torch.compile`` of the eager function; ``triton`` = ``apply_rope_qk`` pinned to
the Triton backend. Every variant of a row is measured in the same run, interleaved, median of
``--reps`` after warm-up, forward (no grad) and forward+backward (gradients w.r.t. q and k).

Shapes (batch 1, head_dim 128, q/k as [batch, heads, tokens, head_dim]): Qwen2.5-VL-7B 28 query /
4 key-value heads, M-RoPE sections (16, 24, 24) on 3D (scale, row, col) positions with fractional
image coordinates; NextStep-1 40 / 8 heads, 1D positions. Tokens 1k, 4k, 16k.

    .venv/bin/python benchmarks/rope.py            # writes benchmarks/results/rope.json
    .venv/bin/python benchmarks/rope.py --quick    # 64 tokens, 2 reps: a smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import torch
from harness import environment, fresh_compile, markdown, write_json

from nxkernels.rope import apply_rope_qk, apply_rope_reference, rope_cos_sin

RESULTS = Path(__file__).resolve().parent / "results" / "rope.json"
MODELS = {
    "qwen2.5-vl-7b": {"heads": 28, "kv_heads": 4, "head_dim": 128, "sections": (16, 24, 24), "theta": 1e6},
    "nextstep-1": {"heads": 40, "kv_heads": 8, "head_dim": 128, "sections": None, "theta": 1e6},
}
TOKENS = (1024, 4096, 16384)


def make_inputs(model: dict, tokens: int, device: str, dtype: torch.dtype) -> dict:
    gen = torch.Generator().manual_seed(0)
    d = model["head_dim"]
    q = torch.randn(1, model["heads"], tokens, d, generator=gen).to(device, dtype).requires_grad_()
    k = torch.randn(1, model["kv_heads"], tokens, d, generator=gen).to(device, dtype).requires_grad_()
    if model["sections"] is None:
        positions = torch.arange(tokens, dtype=torch.float32)[:, None]
    else:  # one square image grid, NextFlow-style fractional centre coordinates (C = 64)
        side = max(1, math.isqrt(tokens))
        i = torch.arange(tokens, dtype=torch.float32)
        unit = 64.0 / side
        positions = torch.stack(
            (torch.zeros(tokens), unit * (i // side + 0.5), unit * (i % side + 0.5)), dim=1
        )
    pairs = d // 2
    inv_freq = model["theta"] ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
    return {"q": q, "k": k, "positions": positions.to(device), "inv_freq": inv_freq.float().to(device),
            "sections": model["sections"], "dq": torch.randn_like(q), "dk": torch.randn_like(k)}


def reference_qk(q, k, positions, inv_freq, sections):
    cos, sin = rope_cos_sin(positions, inv_freq, sections)
    return apply_rope_reference(q, cos, sin), apply_rope_reference(k, cos, sin)


def nx_qk(q, k, positions, inv_freq, sections):
    return apply_rope_qk(q, k, positions, inv_freq, sections)


def triton_qk(q, k, positions, inv_freq, sections):
    return apply_rope_qk(q, k, positions, inv_freq, sections, backend="triton")


def _liger():
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except ImportError:
        return None

    def liger_qk(q, k, positions, inv_freq, sections):
        cos, sin = rope_cos_sin(positions, inv_freq, sections)
        return liger_rotary_pos_emb(q, k, cos[None], sin[None])

    return liger_qk


def _call(fn, inputs: dict, backward: bool) -> None:
    args = (inputs["q"], inputs["k"], inputs["positions"], inputs["inv_freq"], inputs["sections"])
    if not backward:
        with torch.no_grad():
            fn(*args)
        return
    inputs["q"].grad = inputs["k"].grad = None
    qo, ko = fn(*args)
    torch.autograd.backward((qo, ko), (inputs["dq"], inputs["dk"]))


def _interleaved(fns: dict, inputs: dict, backward: bool, reps: int, clock) -> dict[str, float]:
    """Median ms of each variant; repetitions interleave the variants so drift hits all alike."""
    for fn in fns.values():  # warm-up (compiles)
        _call(fn, inputs, backward)
        _call(fn, inputs, backward)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            samples[name].append(clock(lambda fn=fn: _call(fn, inputs, backward)))
    return {name: statistics.median(v) for name, v in samples.items()}


def _wall_ms(work) -> float:
    t0 = time.perf_counter()
    work()
    return (time.perf_counter() - t0) * 1e3


def _cuda_ms(work) -> float:  # pragma: no cover - CUDA
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    work()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _peak_mib(fn, inputs: dict, backward: bool) -> float:  # pragma: no cover - CUDA
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _call(fn, inputs, backward)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run_cpu(tokens: tuple[int, ...], reps: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for model, spec in MODELS.items():
        for n in tokens:
            inputs = make_inputs(spec, n, "cpu", torch.float32)
            for mode in ("forward", "forward+backward"):
                fns = {"eager": reference_qk, "nx": nx_qk, "compiled": fresh_compile(reference_qk)}
                ms = _interleaved(fns, inputs, mode != "forward", reps, _wall_ms)
                rows.append({
                    "model": model, "tokens": n, "mode": mode, **{f"{k}_ms": v for k, v in ms.items()},
                    "compiled_speedup": ms["eager"] / ms["compiled"],
                    "nx_over_eager": ms["nx"] / ms["eager"],
                })
                print(f"  cpu {model} {n} {mode}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()),
                      flush=True)
    return rows


def run_gpu(tokens: tuple[int, ...], reps: int) -> list[dict]:  # pragma: no cover - CUDA
    liger = _liger()
    rows = []
    for model, spec in MODELS.items():
        for n in tokens:
            inputs = make_inputs(spec, n, "cuda", torch.bfloat16)
            for mode in ("forward", "forward+backward"):
                backward = mode != "forward"
                fns = {"triton": triton_qk, "reference": reference_qk,
                       "compiled": fresh_compile(reference_qk)}
                if liger is not None and spec["sections"] is None:
                    fns["liger"] = liger
                ms = _interleaved(fns, inputs, backward, reps, _cuda_ms)
                row = {"model": model, "tokens": n, "mode": mode}
                for name, fn in fns.items():
                    row[f"{name}_ms"] = ms[name]
                    row[f"{name}_peak_mib"] = _peak_mib(fn, inputs, backward)
                row["triton_over_best_other"] = ms["triton"] / min(v for k, v in ms.items() if k != "triton")
                rows.append(row)
                print(f"  gpu {model} {n} {mode}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()),
                      flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 tokens, 2 reps, no JSON: a smoke test")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tokens = (64,) if args.quick else tuple(args.tokens)
    reps = 2 if args.quick else args.reps
    load_before = os.getloadavg()[0]  # other work on the box inflates every column alike
    cpu = run_cpu(tokens, reps, args.threads)
    gpu = run_gpu(tokens, max(reps, 20)) if torch.cuda.is_available() else None
    result = {
        "benchmark": "rope",
        "config": {"quick": args.quick, "tokens": list(tokens), "reps": reps, "threads": args.threads,
                   "cpu_dtype": "float32", "gpu_dtype": "bfloat16", "models": MODELS},
        "environment": environment(load_before),
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"\n## CPU, float32, {args.threads} threads, median ms of {reps}, q and k\n")
    print(markdown(cpu, ["model", "tokens", "mode", "eager_ms", "nx_ms", "compiled_ms",
                         "compiled_speedup", "nx_over_eager"]))
    if gpu:
        timed = sorted({k for r in gpu for k in r if k.endswith(("_ms", "_mib"))})
        cols = ["model", "tokens", "mode", *timed]
        print("\n## GPU, bfloat16, q and k\n\n" + markdown(gpu, cols + ["triton_over_best_other"]))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    if not args.quick:
        write_json(args.out, result)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""RMSNorm benchmark: the reference eager vs ``torch.compile(reference)`` on CPU, and on GPU (when
CUDA is present) the fused Triton backend vs reference vs compile vs Liger-Kernel (if installed).

Widths: Qwen2.5-VL-7B (hidden 3584, NextFlow's backbone) and NextStep-1 (hidden 5120); 1k-16k
tokens. CPU timings use a fixed thread count and the median of ``--reps`` runs after warm-up; every
variant of a row is measured in the same run, interleaved, so the ratios compare like with like.
Columns: ``eager`` = ``rms_norm_reference``; ``nx`` = ``nxkernels.rms_norm`` (dispatch + custom
op; on CPU it runs the reference); ``compiled`` = ``torch.compile(rms_norm_reference)``.

    .venv/bin/python benchmarks/rms_norm.py            # writes benchmarks/results/rms_norm.json
    .venv/bin/python benchmarks/rms_norm.py --quick    # small, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from harness import environment, markdown, write_json

from nxkernels.rms_norm import rms_norm, rms_norm_reference

RESULTS = Path(__file__).resolve().parent / "results" / "rms_norm.json"
WIDTHS = {"qwen2.5-vl-7b": 3584, "nextstep-1": 5120}
TOKENS = (1024, 4096, 16384)


def _median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _variants(x, w, backward: bool):
    compiled = torch.compile(rms_norm_reference)
    fns = {
        "eager": lambda: rms_norm_reference(x, w),
        "nx": lambda: rms_norm(x, w, backend="reference"),
        "compiled": lambda: compiled(x, w),
    }
    if not backward:
        return {k: (lambda f=f: f()) for k, f in fns.items()}
    dy = torch.randn_like(x)

    def step(f):
        x.grad = w.grad = None
        f().backward(dy)

    return {k: (lambda f=f: step(f)) for k, f in fns.items()}


def run_cpu(tokens: tuple[int, ...], reps: int, threads: int, dtype: torch.dtype) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for model, hidden in WIDTHS.items():
        for n in tokens:
            x = torch.randn(n, hidden, dtype=dtype, requires_grad=True)
            w = torch.randn(hidden, dtype=dtype, requires_grad=True)
            for mode in ("forward", "forward+backward"):
                fns = _variants(x, w, mode != "forward")
                for f in fns.values():  # warm-up (compiles)
                    f()
                    f()
                samples = {k: [] for k in fns}
                for _ in range(reps):  # interleaved, so drift hits every variant alike
                    for k, f in fns.items():
                        samples[k].append(_median_ms(f, 1))
                ms = {k: statistics.median(v) for k, v in samples.items()}
                rows.append({
                    "model": model, "hidden": hidden, "tokens": n, "mode": mode,
                    **{f"{k}_ms": v for k, v in ms.items()},
                    "compiled_speedup": ms["eager"] / ms["compiled"],
                    "nx_over_eager": ms["nx"] / ms["eager"],
                })
                print(f"  {model} {n} {mode}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()),
                      flush=True)
    return rows


def _gpu_row(model: str, hidden: int, n: int, dtype: torch.dtype, liger) -> list[dict]:  # pragma: no cover
    import triton.testing

    x = torch.randn(n, hidden, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(hidden, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn_like(x)
    compiled = torch.compile(rms_norm_reference)
    fns = {
        "fused": lambda: rms_norm(x, w, backend="triton"),
        "reference": lambda: rms_norm_reference(x, w),
        "compiled": lambda: compiled(x, w),
    }
    if liger is not None:
        fns["liger"] = lambda: liger.apply(x, w, 1e-6)
    rows = []
    for mode in ("forward", "forward+backward"):
        row = {"model": model, "hidden": hidden, "tokens": n, "mode": mode}
        for name, f in fns.items():
            def call(f=f, backward=mode != "forward"):
                out = f()
                if backward:
                    out.backward(dy)

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            row[f"{name}_ms"] = triton.testing.do_bench(call, grad_to_none=[x, w], return_mode="median")
            row[f"{name}_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        best = min(v for k, v in row.items() if k.endswith("_ms") and k != "fused_ms")
        row["fused_over_best"] = row["fused_ms"] / best
        rows.append(row)
    return rows


def run_gpu(tokens: tuple[int, ...], dtype: torch.dtype) -> list[dict]:  # pragma: no cover - CUDA
    try:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction as liger
    except ImportError:
        liger = None
    return [row for model, hidden in WIDTHS.items() for n in tokens
            for row in _gpu_row(model, hidden, n, dtype, liger)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 tokens, 2 reps: a smoke test")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tokens = (64,) if args.quick else TOKENS
    reps = 2 if args.quick else args.reps
    dtype = getattr(torch, args.dtype)
    load_before = os.getloadavg()[0]  # other work on the box inflates every column alike
    cpu = run_cpu(tokens, reps, args.threads, dtype)
    gpu = run_gpu(tokens, torch.bfloat16) if torch.cuda.is_available() else None
    result = {
        "benchmark": "rms_norm",
        "config": {"quick": args.quick, "tokens": list(tokens), "reps": reps, "threads": args.threads,
                   "cpu_dtype": args.dtype, "widths": WIDTHS},
        "environment": environment(load_before),
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"\n## CPU, {args.dtype}, {args.threads} threads, median ms of {reps}\n")
    print(markdown(cpu, ["model", "tokens", "mode", "eager_ms", "nx_ms", "compiled_ms",
                      "compiled_speedup", "nx_over_eager"]))
    if gpu:
        cols = ["model", "tokens", "mode"] + [k for k in gpu[0] if k.endswith(("_ms", "_mb"))]
        print("\n## GPU, bfloat16\n\n" + markdown(gpu, cols + ["fused_over_best"]))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""RoPE benchmark: apply_rope on queries and keys at Qwen2.5-VL-7B and NextStep-1 head shapes.

CPU (always): the reference (``rope_cos_sin`` + ``apply_rope_reference`` on q and k) eager vs
``torch.compile`` of the same function, fp32, a fixed thread count, median of several runs,
forward and forward+backward (gradient w.r.t. q and k), ratios side by side.
GPU (only when CUDA is present): the Triton kernel vs the reference vs ``torch.compile`` (and
Liger-Kernel's RoPE when importable, on 1D positions only), bf16, median ms and peak memory.

    .venv/bin/python benchmarks/rope.py            # writes benchmarks/results/rope.json
    .venv/bin/python benchmarks/rope.py --quick    # 1k tokens only, fewer repeats

Shapes (batch 1, head_dim 128): Qwen2.5-VL-7B 28 query / 4 key-value heads, M-RoPE sections
(16, 24, 24) on 3D positions; NextStep-1 40 / 8 heads, 1D positions. Tokens 1k, 4k, 16k.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from nxkernels.rope.reference import rope_reference_from_positions

RESULTS = Path(__file__).resolve().parent / "results" / "rope.json"
MODELS = {
    "qwen2.5-vl-7b": {"heads": 28, "kv_heads": 4, "head_dim": 128, "sections": (16, 24, 24),
                      "theta": 1e6},
    "nextstep-1": {"heads": 40, "kv_heads": 8, "head_dim": 128, "sections": None,
                   "theta": 1e6},
}
TOKENS = (1024, 4096, 16384)


def make_inputs(model: dict, tokens: int, device: str, dtype: torch.dtype, grad: bool):
    gen = torch.Generator().manual_seed(0)
    d = model["head_dim"]
    q = torch.randn(1, model["heads"], tokens, d, generator=gen).to(device, dtype)
    k = torch.randn(1, model["kv_heads"], tokens, d, generator=gen).to(device, dtype)
    q.requires_grad_(grad)
    k.requires_grad_(grad)
    axes = 1 if model["sections"] is None else 3
    if axes == 1:
        positions = torch.arange(tokens, dtype=torch.float32)[:, None]
    else:  # a square image grid with NextFlow-style fractional coordinates
        side = math.isqrt(tokens)
        i = torch.arange(tokens, dtype=torch.float32)
        c = 32.0 / side
        positions = torch.stack(
            (torch.zeros(tokens), c * (i // side + 0.5), c * (i % side + 0.5)), dim=1
        )
    pairs = d // 2
    inv_freq = model["theta"] ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
    return q, k, positions.to(device), inv_freq.float().to(device), model["sections"]


def reference_qk(q, k, positions, inv_freq, sections):
    return (
        rope_reference_from_positions(q, positions, inv_freq, sections),
        rope_reference_from_positions(k, positions, inv_freq, sections),
    )


def _step(fn, inputs, backward: bool):
    q, k, positions, inv_freq, sections = inputs
    qo, ko = fn(q, k, positions, inv_freq, sections)
    if backward:
        (qo.float().sum() + ko.float().sum()).backward()
        q.grad = k.grad = None


def time_cpu_pair(fns, inputs, backward: bool, repeats: int) -> list[float]:
    """Median ms of each fn; runs are interleaved so machine noise hits every fn alike."""
    for fn in fns:  # warm-up (and compilation)
        _step(fn, inputs, backward)
        _step(fn, inputs, backward)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            _step(fn, inputs, backward)
            acc.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def run_cpu(tokens_list, repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    compiled = torch.compile(reference_qk)
    rows = []
    for name, model in MODELS.items():
        for tokens in tokens_list:
            row = {"device": "cpu", "model": name, "tokens": tokens, "dtype": "float32",
                   "threads": threads}
            for mode, backward in (("fwd", False), ("fwd_bwd", True)):
                inputs = make_inputs(model, tokens, "cpu", torch.float32, backward)
                eager, comp = time_cpu_pair((reference_qk, compiled), inputs, backward, repeats)
                row[f"{mode}_eager_ms"] = round(eager, 3)
                row[f"{mode}_compile_ms"] = round(comp, 3)
                row[f"{mode}_eager_over_compile"] = round(eager / comp, 2)
            rows.append(row)
            print(f"  cpu {name} {tokens}: {row}", flush=True)
    return rows


def run_gpu(tokens_list) -> list[dict]:
    import triton.testing

    from nxkernels.rope.triton import apply_rope_triton

    def triton_qk(q, k, positions, inv_freq, sections):
        return (apply_rope_triton(q, positions, inv_freq, sections),
                apply_rope_triton(k, positions, inv_freq, sections))

    providers = {"triton": triton_qk, "reference": reference_qk,
                 "compile": torch.compile(reference_qk)}
    try:  # Liger: contiguous [B, H, T, D] q/k with a [1, T, D] cos/sin table, 1D only
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        from nxkernels.rope.reference import rope_cos_sin

        def liger_qk(q, k, positions, inv_freq, sections):
            cos, sin = rope_cos_sin(positions, inv_freq, sections)
            return liger_rotary_pos_emb(q, k, cos[None], sin[None])

        providers["liger"] = liger_qk
    except ImportError:
        pass
    rows = []
    for name, model in MODELS.items():
        for tokens in tokens_list:
            for mode, backward in (("fwd", False), ("fwd_bwd", True)):
                for prov, fn in providers.items():
                    if prov == "liger" and model["sections"] is not None:
                        continue
                    inputs = make_inputs(model, tokens, "cuda", torch.bfloat16, backward)
                    _step(fn, inputs, backward)
                    ms = triton.testing.do_bench(lambda fn=fn, i=inputs, b=backward: _step(fn, i, b),
                                                 quantiles=[0.5])
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    _step(fn, inputs, backward)
                    torch.cuda.synchronize()
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                    row = {"device": torch.cuda.get_device_name(), "model": name,
                           "tokens": tokens, "dtype": "bfloat16", "mode": mode,
                           "provider": prov, "median_ms": round(float(ms), 4),
                           "peak_extra_mib": round(peak, 1)}
                    rows.append(row)
                    print(f"  gpu {row}", flush=True)
    return rows


def markdown_cpu(rows) -> str:
    lines = ["| model | tokens | fwd eager ms | fwd compile ms | eager/compile | fwd+bwd eager ms "
             "| fwd+bwd compile ms | eager/compile |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['fwd_eager_ms']:.2f} | {r['fwd_compile_ms']:.2f}"
            f" | {r['fwd_eager_over_compile']:.2f}x | {r['fwd_bwd_eager_ms']:.2f} | "
            f"{r['fwd_bwd_compile_ms']:.2f} | {r['fwd_bwd_eager_over_compile']:.2f}x |"
        )
    return "\n".join(lines)


def markdown_gpu(rows) -> str:
    lines = ["| model | tokens | mode | provider | median ms | peak extra MiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tokens']} | {r['mode']} | {r['provider']} | "
                     f"{r['median_ms']:.3f} | {r['peak_extra_mib']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k tokens, 3 repeats, no JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    tokens = [1024] if args.quick else args.tokens
    repeats = 3 if args.quick else args.repeats
    result = {
        "benchmark": "rope",
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor(),
        "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        "note": "CPU numbers come from a shared 2-core VM (other jobs running): eager and compiled "
        "runs are interleaved so their ratio is fairer than the absolute times",
        "cpu": run_cpu(tokens, repeats, args.threads),
        "gpu": run_gpu(tokens) if torch.cuda.is_available() else None,
        "gpu_note": None if torch.cuda.is_available() else "no CUDA device in this run",
    }
    print("\nCPU: reference eager vs torch.compile(reference), fp32, q and k, "
          f"{args.threads} threads, median of {repeats}\n")
    print(markdown_cpu(result["cpu"]))
    if result["gpu"]:
        print("\nGPU: bf16, median ms (triton.testing.do_bench), peak extra memory\n")
        print(markdown_gpu(result["gpu"]))
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()

"""SwiGLU benchmark: ``silu(gate) * up`` at the MLP widths of Qwen2.5-VL-7B (18944) and NextStep-1
(13824), 1k-16k tokens.

CPU (always): the reference eager vs ``torch.compile(reference)``, forward and forward+backward,
median wall ms over repeats at a fixed thread count, the eager/compiled ratio side by side.
GPU (only when CUDA is present): reference vs ``torch.compile(reference)`` vs our Triton kernels
(``swiglu(..., backend="triton")``, through the custom op) vs Liger-Kernel (when importable),
median ms forward and forward+backward (CUDA events) and peak memory of forward+backward.

    .venv/bin/python benchmarks/swiglu.py             # writes benchmarks/results/swiglu.json
    .venv/bin/python benchmarks/swiglu.py --quick     # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from harness import fresh_compile, markdown, time_cpu, time_cuda, write_json

from nxkernels.swiglu import swiglu, swiglu_reference

RESULTS = Path(__file__).resolve().parent / "results" / "swiglu.json"
MODELS = {"qwen2.5-vl-7b": 18944, "nextstep-1": 13824}
TOKENS = (1024, 4096, 16384)
REFERENCE = swiglu_reference


def _inputs(tokens: int, width: int, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    gate = torch.randn(tokens, width, generator=gen, device=device, dtype=dtype).requires_grad_(True)
    up = torch.randn(tokens, width, generator=gen, device=device, dtype=dtype).requires_grad_(True)
    dy = torch.randn(tokens, width, generator=gen, device=device, dtype=dtype)
    return (gate, up), dy


def cpu_section(models: dict[str, int], tokens: tuple[int, ...], threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for model, width in models.items():
        for n in tokens:
            args = _inputs(n, width, torch.float32, "cpu")
            row = {"model": model, "width": width, "tokens": n, "dtype": "float32"}
            for mode, backward in (("fwd", False), ("fwd_bwd", True)):
                compiled = fresh_compile(REFERENCE)
                eager = time_cpu(REFERENCE, args, backward, repeats)
                comp = time_cpu(compiled, args, backward, repeats)
                row[f"{mode}_eager_ms"] = eager
                row[f"{mode}_compiled_ms"] = comp
                row[f"{mode}_eager_over_compiled"] = eager / comp
            rows.append(row)
            print(f"  cpu {model} tokens={n}: {row}", file=sys.stderr)
            del args
    return rows


def gpu_section(models: dict[str, int], tokens: tuple[int, ...], repeats: int) -> list[dict]:
    providers: dict[str, Callable] = {
        "reference": swiglu_reference,
        "compiled": None,
        "triton": functools.partial(swiglu, backend="triton"),
    }
    try:
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        providers["liger"] = LigerSiLUMulFunction.apply
    except ImportError:
        pass
    rows = []
    for model, width in models.items():
        for n in tokens:
            args = _inputs(n, width, torch.bfloat16, "cuda")
            row = {"model": model, "width": width, "tokens": n, "dtype": "bfloat16"}
            for name, fn in providers.items():
                fn = fn or fresh_compile(REFERENCE)
                row[f"{name}_fwd_ms"], _ = time_cuda(fn, args, False, repeats)
                row[f"{name}_fwd_bwd_ms"], row[f"{name}_peak_mib"] = time_cuda(fn, args, True, repeats)
            best = min(row[f"{p}_fwd_bwd_ms"] for p in providers if p != "triton")
            row["triton_over_fastest_other"] = row["triton_fwd_bwd_ms"] / best
            rows.append(row)
            del args
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    models = {"tiny": 256} if args.quick else MODELS
    tokens = (16, 64) if args.quick else tuple(args.tokens)
    result = {
        "benchmark": "swiglu",
        "config": {
            "quick": args.quick,
            "threads": args.threads,
            "repeats": args.repeats,
            "tokens": list(tokens),
            "models": models,
        },
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cuda": torch.cuda.is_available(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "cpu": cpu_section(models, tokens, args.threads, args.repeats),
        "gpu": gpu_section(models, tokens, args.repeats) if torch.cuda.is_available() else None,
    }
    cols = [
        "model",
        "width",
        "tokens",
        "fwd_eager_ms",
        "fwd_compiled_ms",
        "fwd_eager_over_compiled",
        "fwd_bwd_eager_ms",
        "fwd_bwd_compiled_ms",
        "fwd_bwd_eager_over_compiled",
    ]
    print(
        f"## SwiGLU, CPU fp32, {args.threads} threads, median of {args.repeats} "
        f"(load average {os.getloadavg()[0]:.1f}: the box is shared)\n"
    )
    print(markdown(result["cpu"], cols))
    if result["gpu"]:
        names = [k[: -len("_fwd_ms")] for k in result["gpu"][0] if k.endswith("_fwd_ms")]
        gcols = (
            ["model", "tokens"]
            + [f"{p}_{m}" for m in ("fwd_ms", "fwd_bwd_ms", "peak_mib") for p in names]
            + ["triton_over_fastest_other"]
        )
        print(f"\n## SwiGLU, {torch.cuda.get_device_name()} bf16\n")
        print(markdown(result["gpu"], gcols))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

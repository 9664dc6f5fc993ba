"""AdaLN benchmark: ``adaln_modulate`` (LayerNorm without affine, then x*(1+scale)+shift) followed by
``gated_residual`` (x + gate*h), at NextStep-1's flow-head width 1536, 1k-16k tokens.

Two modulation layouts: ``per_token`` (x [N, D] with shift/scale/gate [N, D]: the flow head, where
every token has its own condition) and ``per_sample`` (x [4, N/4, D] with [4, D]: DiT-style blocks).
The measured function is ``gated_residual(x, gate, adaln_modulate(x, shift, scale))``.

CPU (always): the reference eager vs ``torch.compile(reference)``, forward and forward+backward,
median wall ms at a fixed thread count, the eager/compiled ratio side by side.
GPU (only when CUDA is present): reference vs ``torch.compile(reference)`` vs our Triton kernels
(the public functions with ``backend="triton"``, through the custom ops),
median ms (CUDA events) forward and forward+backward, peak memory of forward+backward.

    .venv/bin/python benchmarks/adaln.py             # writes benchmarks/results/adaln.json
    .venv/bin/python benchmarks/adaln.py --quick     # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from harness import fresh_compile, markdown, time_cpu, time_cuda, write_json

from nxkernels.adaln import (
    adaln_modulate,
    adaln_modulate_reference,
    gated_residual,
    gated_residual_reference,
)

RESULTS = Path(__file__).resolve().parent / "results" / "adaln.json"
WIDTH = 1536  # NextStep-1 flow head
TOKENS = (1024, 4096, 16384)
LAYOUTS = ("per_token", "per_sample")


def block_reference(x, shift, scale, gate):
    return gated_residual_reference(x, gate, adaln_modulate_reference(x, shift, scale))


REFERENCE = block_reference


def block_triton(x, shift, scale, gate):
    return gated_residual(x, gate, adaln_modulate(x, shift, scale, backend="triton"), backend="triton")


def _inputs(tokens: int, width: int, layout: str, dtype: torch.dtype, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    if layout == "per_token":
        x_shape, m_shape = (tokens, width), (tokens, width)
    else:
        x_shape, m_shape = (4, tokens // 4, width), (4, width)
    tensors = [rand(*x_shape)] + [rand(*m_shape) * 0.1 for _ in range(3)]
    return [t.requires_grad_(True) for t in tensors], rand(*x_shape)


def cpu_section(tokens: tuple[int, ...], width: int, threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for layout in LAYOUTS:
        for n in tokens:
            args = _inputs(n, width, layout, torch.float32, "cpu")
            row = {"layout": layout, "width": width, "tokens": n, "dtype": "float32"}
            for mode, backward in (("fwd", False), ("fwd_bwd", True)):
                compiled = fresh_compile(REFERENCE)
                eager = time_cpu(REFERENCE, args, backward, repeats)
                comp = time_cpu(compiled, args, backward, repeats)
                row[f"{mode}_eager_ms"] = eager
                row[f"{mode}_compiled_ms"] = comp
                row[f"{mode}_eager_over_compiled"] = eager / comp
            rows.append(row)
            print(f"  cpu {layout} tokens={n}: {row}", file=sys.stderr)
    return rows


def gpu_section(tokens: tuple[int, ...], width: int, repeats: int) -> list[dict]:
    providers: dict[str, Callable] = {
        "reference": block_reference,
        "compiled": None,
        "triton": block_triton,
    }
    rows = []
    for layout in LAYOUTS:
        for n in tokens:
            args = _inputs(n, width, layout, torch.bfloat16, "cuda")
            row = {"layout": layout, "width": width, "tokens": n, "dtype": "bfloat16"}
            for name, fn in providers.items():
                fn = fn or fresh_compile(REFERENCE)
                row[f"{name}_fwd_ms"], _ = time_cuda(fn, args, False, repeats)
                row[f"{name}_fwd_bwd_ms"], row[f"{name}_peak_mib"] = time_cuda(fn, args, True, repeats)
            best = min(row[f"{p}_fwd_bwd_ms"] for p in providers if p != "triton")
            row["triton_over_fastest_other"] = row["triton_fwd_bwd_ms"] / best
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="*", default=list(TOKENS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    width = 64 if args.quick else WIDTH
    tokens = (16, 64) if args.quick else tuple(args.tokens)
    result = {
        "benchmark": "adaln",
        "config": {
            "quick": args.quick,
            "threads": args.threads,
            "repeats": args.repeats,
            "tokens": list(tokens),
            "width": width,
            "layouts": list(LAYOUTS),
            "op": "gated_residual(x, gate, adaln_modulate(x, shift, scale))",
        },
        "env": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cuda": torch.cuda.is_available(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "cpu": cpu_section(tokens, width, args.threads, args.repeats),
        "gpu": gpu_section(tokens, width, args.repeats) if torch.cuda.is_available() else None,
    }
    cols = [
        "layout",
        "tokens",
        "fwd_eager_ms",
        "fwd_compiled_ms",
        "fwd_eager_over_compiled",
        "fwd_bwd_eager_ms",
        "fwd_bwd_compiled_ms",
        "fwd_bwd_eager_over_compiled",
    ]
    print(
        f"## AdaLN modulate + gated residual, width {width}, CPU fp32, {args.threads} threads, "
        f"median of {args.repeats} (load average {os.getloadavg()[0]:.1f}: the box is shared)\n"
    )
    print(markdown(result["cpu"], cols))
    if result["gpu"]:
        names = ["reference", "compiled", "triton"]
        gcols = (
            ["layout", "tokens"]
            + [f"{p}_{m}" for m in ("fwd_ms", "fwd_bwd_ms", "peak_mib") for p in names]
            + ["triton_over_fastest_other"]
        )
        print(f"\n## AdaLN, {torch.cuda.get_device_name()} bf16\n")
        print(markdown(result["gpu"], gcols))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()

"""Block-causal attention benchmark: the per-scale split vs SDPA with the dense mask, on the 1:1 scale
schedules of NextFlow Table 14 (levels 256 / 512 / 1024: 900 / 3684 / 10084 tokens), batch 1,
8 heads x 64 dims, one image (every block a whole scale, no text).

CPU: fixed thread count (``--threads``), fp32. Times: the median of ``--reps`` calls after a warm-up,
dense and split interleaved in one process so that drift in the box's load hits both alike. Memory:
each (level, variant, mode) runs once more in a fresh subprocess; ``peak_mb`` is its peak RSS
(``VmHWM``, reset after the setup) during one call minus its resident size just before the call
(torch loaded, inputs allocated), i.e. what the call added at its worst. ``dense`` =
``scale_attention(..., backend="reference")`` (SDPA with the ``[seq, seq]`` bool mask), ``split`` =
``backend="torch"``; ``speedup`` = dense / split; ``scores`` = the fraction of the ``seq x seq``
scores the block-causal pattern needs (what an exact split computes).

GPU (when CUDA is present), bf16: split, flex (``backend="triton"``), xformers (if installed), the
dense-mask SDPA, and causal SDPA (``is_causal=True``, FlashAttention) at the same length as the
yardstick (``over_causal`` = time / causal SDPA; the target is <= 1.3). CUDA events, median.

On a box shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE``: with OpenMP threads spin-waiting on
oversubscribed cores every parallel region can stall for a time slice, which punishes the split (a
dozen SDPA calls) far more than the single dense call (recorded in the JSON's environment).

    .venv/bin/python benchmarks/scale_attention.py          # writes benchmarks/results/scale_attention.json
    .venv/bin/python benchmarks/scale_attention.py --quick  # 256 level only, 2 reps: a smoke test
                                                            # (writes results/scale_attention_quick.json)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from harness import environment, markdown, peak_rss_since, reset_peak_rss, time_cuda, write_json

from nxcore.schedule import nextflow_schedule
from nxkernels.scale_attention import SCALE_ATTENTION, ScaleBlocks, scale_attention

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = (256, 512, 1024)
HEADS, HEAD_DIM = 8, 64
VARIANTS = {"dense": "reference", "split": "torch"}
MODES = ("forward", "forward+backward")


def blocks_for(level: int) -> ScaleBlocks:
    return ScaleBlocks.from_lengths(nextflow_schedule(1.0, level).token_counts)


def score_fraction(blocks: ScaleBlocks) -> float:
    n = blocks.length
    return sum((e - s) * e for s, e in zip(blocks.starts, blocks.ends, strict=True)) / (n * n)


def make_inputs(level: int, batch: int, backward: bool):
    blocks = blocks_for(level)
    gen = torch.Generator().manual_seed(0)
    shape = (batch, HEADS, blocks.length, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_(backward) for _ in range(3))
    return blocks, q, k, v, torch.randn(shape, generator=gen)


def step(variant: str, blocks, q, k, v, dy, backward: bool) -> None:
    if backward:
        for t in (q, k, v):
            t.grad = None
        scale_attention(q, k, v, blocks, backend=VARIANTS[variant]).backward(dy)
    else:
        with torch.no_grad():
            scale_attention(q, k, v, blocks, backend=VARIANTS[variant])


def peak_memory(level: int, variant: str, mode: str, threads: int, batch: int) -> float:
    """MiB one call adds at its worst; meant to run alone in a fresh process (see ``--case``)."""
    torch.set_num_threads(threads)
    backward = mode != "forward"
    inputs = make_inputs(level, batch, backward)
    base = reset_peak_rss()  # setup (schedule, blocks, inputs) may have peaked higher than the call
    step(variant, *inputs, backward)
    return peak_rss_since(base)


def run_cpu(levels, reps: int, threads: int, batch: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for level in levels:
        for mode in MODES:
            backward = mode != "forward"
            blocks, *tensors = make_inputs(level, batch, backward)
            row = {"level": level, "tokens": blocks.length, "mode": mode,
                   "scores": score_fraction(blocks), "chunks": len(blocks.plan)}
            for variant in VARIANTS:  # warm-up
                step(variant, blocks, *tensors, backward)
            samples = {variant: [] for variant in VARIANTS}
            for _ in range(reps):  # interleaved, so drift in the box's load hits both alike
                for variant in VARIANTS:
                    t0 = time.perf_counter()
                    step(variant, blocks, *tensors, backward)
                    samples[variant].append((time.perf_counter() - t0) * 1e3)
            for variant in VARIANTS:
                row[f"{variant}_ms"] = statistics.median(samples[variant])
                case = json.dumps({"level": level, "variant": variant, "mode": mode, "threads": threads,
                                   "batch": batch})
                out = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True,
                                     text=True, check=True)
                row[f"{variant}_peak_mb"] = json.loads(out.stdout.strip().splitlines()[-1])
            row["speedup"] = row["dense_ms"] / row["split_ms"]
            rows.append(row)
            print(f"  {level} {mode}: dense {row['dense_ms']:.1f} ms / {row['dense_peak_mb']:.0f} MB, "
                  f"split {row['split_ms']:.1f} ms / {row['split_peak_mb']:.0f} MB, "
                  f"speedup {row['speedup']:.2f}", flush=True)
    return rows


def run_gpu(levels, batch: int, reps: int) -> list[dict]:  # pragma: no cover - CUDA
    import torch.nn.functional as F

    rows = []
    for level in levels:
        blocks = blocks_for(level)
        gen = torch.Generator(device="cuda").manual_seed(0)
        shape = (batch, HEADS, blocks.length, HEAD_DIM)
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
                   for _ in range(3))
        dy = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        fns = {"causal_sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)}
        for name, backend in (("split", "torch"), ("flex", "triton"), ("xformers", "xformers"),
                              ("dense", "reference")):
            reasons = SCALE_ATTENTION.backend(backend).not_supported_reasons(q, k, v, blocks)
            if reasons:
                print(f"  GPU {name}: skipped ({'; '.join(reasons)})")
                continue
            fns[name] = lambda q, k, v, b=backend, s=blocks: scale_attention(q, k, v, s, backend=b)
        for mode in MODES:
            row = {"level": level, "tokens": blocks.length, "mode": mode}
            for name, fn in fns.items():
                ms, peak = time_cuda(fn, ((q, k, v), dy), mode != "forward", reps)
                row[f"{name}_ms"], row[f"{name}_peak_mb"] = ms, peak
            for name in fns:
                if name != "causal_sdpa":
                    row[f"{name}_over_causal"] = row[f"{name}_ms"] / row["causal_sdpa_ms"]
            rows.append(row)
            times = ", ".join(f"{n} {row[f'{n}_ms']:.2f} ms" for n in fns)
            print(f"  GPU {level} {mode}: {times}", flush=True)
    return rows


def main(argv=None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 level only, 2 reps: a smoke test")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measurement, JSON to stdout
    args = parser.parse_args(argv)
    if args.case:
        c = json.loads(args.case)
        print(json.dumps(peak_memory(c["level"], c["variant"], c["mode"], c["threads"], c["batch"])))
        return None
    levels = (256,) if args.quick else LEVELS
    reps = 2 if args.quick else args.reps
    out = args.out or RESULTS / ("scale_attention_quick.json" if args.quick else "scale_attention.json")
    load_before = os.getloadavg()[0]  # other work on the box inflates every column alike
    cpu = run_cpu(levels, reps, args.threads, args.batch)
    gpu = run_gpu(levels, args.batch, 20 if not args.quick else 5) if torch.cuda.is_available() else None
    result = {
        "benchmark": "scale_attention",
        "config": {"quick": args.quick, "levels": list(levels), "reps": reps, "threads": args.threads,
                   "batch": args.batch, "heads": HEADS, "head_dim": HEAD_DIM, "cpu_dtype": "float32",
                   "gpu_dtype": "bfloat16",
                   "memory": ("VmHWM reset via /proc/self/clear_refs after setup, in a fresh subprocess per "
                              "case, minus VmRSS before the call")},
        "environment": environment(load_before, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")),
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"\n## CPU, float32, {args.threads} threads, batch {args.batch}, {HEADS} heads x {HEAD_DIM}, "
          f"median ms of {reps}\n")
    print(markdown(cpu, ["level", "tokens", "mode", "scores", "chunks", "dense_ms", "split_ms", "speedup",
                         "dense_peak_mb", "split_peak_mb"]))
    if gpu:
        cols = ["level", "tokens", "mode"] + [k for k in gpu[0] if k.endswith(("_ms", "_over_causal"))]
        print("\n## GPU, bfloat16\n\n" + markdown(gpu, cols))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()

"""Linear + cross-entropy benchmark at the NextFlow-7B head: the plain path vs ``nxkernels``' chunked
op, forward + backward, time and peak memory; and the analytic memory model at N = 16384.

Shape: D = 3584 (Qwen2.5-VL-7B), V = 152064 text + 16384 visual codes + 16 specials = 168464.
Variants (every one computes the loss and the gradients of hidden and weight):

- ``plain``: ``F.cross_entropy(F.linear(hidden, weight).float(), targets)``;
- ``nx``: ``linear_cross_entropy(hidden, weight, targets, backend="torch")`` (the CPU path);
- ``nx_half_ignored``: the same with every other target ignored (rows skip the matmuls);
- ``compiled``: ``torch.compile(plain)`` (inductor).

CPU: fixed ``torch.set_num_threads``; the variants run interleaved in one process, warm-up first,
then the median of ``--reps`` timed calls. Peak memory is measured around every timed call, in the
same process: glibc's ``malloc_trim`` returns freed memory, writing ``5`` to
``/proc/self/clear_refs`` resets the peak RSS (VmHWM), and the peak is VmHWM after the call minus
VmRSS before it. The inputs are allocated before, so the figure is the extra memory of forward +
backward, the weight gradient (V x D, which every variant produces) included; ``*_peak_no_gw_mb``
subtracts it. (Large tensors are mmapped by glibc and go back to the OS when freed, so the
in-process figure is not inflated by earlier variants; a warm-up peak is never counted.)

GPU (when CUDA is present, bf16): ``fused`` (``backend="triton"``), ``nx_torch`` (the chunked torch
backend), ``plain``, ``compiled`` and Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (default
accumulation, and fp32 accumulation when the installed Liger has ``accum_dtype``) if importable;
median ms from ``triton.testing.do_bench``, peak MiB from ``torch.cuda.max_memory_allocated``.

    .venv/bin/python benchmarks/linear_cross_entropy.py            # the full run (alone on the box)
    .venv/bin/python benchmarks/linear_cross_entropy.py --quick    # N = 64, 1 rep: a smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from harness import environment, markdown, peak_rss_since, reset_peak_rss, write_json

from nxkernels.linear_cross_entropy import linear_cross_entropy
from nxkernels.linear_cross_entropy.chunked import LOGITS_CHUNK_BYTES

RESULTS = Path(__file__).resolve().parent / "results" / "linear_cross_entropy.json"
DIM = 3584
VOCAB = 152064 + 16384 + 16
TARGET_TOKENS = 16384
CPU_TOKENS = (1024, 2048)
GPU_TOKENS = (4096, 8192, 16384)


# ------------------------------------------------------------------------------------------------
# the analytic memory model: bytes beyond the inputs at the peak of forward + backward


def model_bytes(n: int, dim: int, vocab: int, itemsize: int) -> dict[str, float]:
    """Peak extra bytes of forward + backward, from the shapes alone (the weight gradient included).

    plain: forward holds the fp32 logits and log_softmax's output (saved); backward holds that,
    the NLL gradient and log_softmax's gradient, all [N, V] fp32: 12 N V bytes, whatever the
    input dtype (bf16 logits are a transient 2 N V before the upcast).
    nx (torch backend): grad_hidden N D, the fp32 grad_W accumulator V D 4, and the larger of one
    chunk's buffers (<= LOGITS_CHUNK_BYTES) and, for half weights, grad_W's final cast V D 2.
    liger: grad_hidden, grad_W in the weight dtype (or fp32 + cast), one [chunk, V] logits chunk
    in the input dtype with Liger's chunk = next_pow2(ceil(N / ceil(V / D))).
    """
    nv, nd, vd = n * vocab, n * dim, vocab * dim
    plain = max(12 * nv, 4 * nv + vd * itemsize + nd * itemsize)
    cast = vd * itemsize if itemsize < 4 else 0
    chunk_buffers = min(LOGITS_CHUNK_BYTES, nv * (4 if itemsize == 4 else 8))
    nx = nd * itemsize + 4 * vd + max(cast, chunk_buffers)  # the cast comes after the last chunk
    inc = -(-vocab // dim)
    chunk = 1 << max(0, (-(-n // inc) - 1).bit_length())
    liger = nd * itemsize + vd * itemsize + chunk * vocab * itemsize
    liger_fp32 = nd * itemsize + 4 * vd + max(cast, chunk * vocab * itemsize)
    return {"plain": plain, "nx": nx, "liger": liger, "liger_fp32_accum": liger_fp32,
            "grad_weight": vd * itemsize}


def model_rows(n: int = TARGET_TOKENS) -> list[dict]:
    rows = []
    for name, size in (("float32", 4), ("bfloat16", 2)):
        m = model_bytes(n, DIM, VOCAB, size)
        rows.append({"tokens": n, "dtype": name, **{f"{k}_gb": v / 1e9 for k, v in m.items()},
                     "nx_over_plain": m["nx"] / m["plain"],
                     "nx_over_plain_no_gw": (m["nx"] - m["grad_weight"]) / (m["plain"] - m["grad_weight"])})
    return rows


# ------------------------------------------------------------------------------------------------
# CPU


def _cpu_variants(hidden, weight, targets):
    half_ignored = targets.clone()
    half_ignored[::2] = -100

    def plain(h, w, t):
        return F.cross_entropy(F.linear(h, w).float(), t)

    compiled = torch.compile(plain, dynamic=False)
    return {
        "plain": lambda: plain(hidden, weight, targets),
        "nx": lambda: linear_cross_entropy(hidden, weight, targets, backend="torch"),
        "nx_half_ignored": lambda: linear_cross_entropy(hidden, weight, half_ignored, backend="torch"),
        "compiled": lambda: compiled(hidden, weight, targets),
    }


def run_cpu(tokens, reps: int, threads: int, dtype: torch.dtype, warmup: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(VOCAB, DIM, generator=gen) / DIM**0.5).to(dtype).requires_grad_()
    for n in tokens:
        hidden = torch.randn(n, DIM, generator=gen).to(dtype).requires_grad_()
        targets = torch.randint(0, VOCAB, (n,), generator=gen)
        fns = _cpu_variants(hidden, weight, targets)
        times = {k: [] for k in fns}
        peaks = {k: [] for k in fns}
        losses = {}
        for rep in range(warmup + reps):  # interleaved, so drift hits every variant alike
            for name, fn in fns.items():
                hidden.grad = weight.grad = None
                base = reset_peak_rss()
                t0 = time.perf_counter()
                loss = fn()
                loss.backward()
                elapsed = (time.perf_counter() - t0) * 1e3
                peak = peak_rss_since(base)
                losses[name] = loss.item()
                del loss
                if rep >= warmup:
                    times[name].append(elapsed)
                    peaks[name].append(peak)
                print(f"  N={n} {name} rep {rep}{' (warm-up)' if rep < warmup else ''}: "
                      f"{elapsed:.0f} ms, peak +{peak:.0f} MiB", flush=True)
        hidden.grad = weight.grad = None
        grad_w_mb = VOCAB * DIM * weight.element_size() / 2**20
        row = {"tokens": n, "dim": DIM, "vocab": VOCAB, "dtype": str(dtype).removeprefix("torch.")}
        for name in fns:
            row[f"{name}_ms"] = statistics.median(times[name])
            row[f"{name}_peak_mb"] = max(peaks[name])
            row[f"{name}_peak_no_gw_mb"] = max(peaks[name]) - grad_w_mb
        row["nx_time_ratio"] = row["nx_ms"] / row["plain_ms"]
        row["nx_mem_ratio"] = row["nx_peak_mb"] / row["plain_peak_mb"]
        row["nx_mem_ratio_no_gw"] = row["nx_peak_no_gw_mb"] / row["plain_peak_no_gw_mb"]
        row["loss_plain"], row["loss_nx"] = losses["plain"], losses["nx"]
        model = model_bytes(n, DIM, VOCAB, weight.element_size())
        row["model_plain_mb"], row["model_nx_mb"] = model["plain"] / 2**20, model["nx"] / 2**20
        rows.append(row)
        del hidden, targets, fns
    return rows


# ------------------------------------------------------------------------------------------------
# GPU (written for an H100/H200; not run on the CPU box)


def _liger_variants(hidden, weight, targets):  # pragma: no cover - CUDA
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return {}
    out = {"liger": LigerFusedLinearCrossEntropyLoss()}
    try:
        out["liger_fp32_accum"] = LigerFusedLinearCrossEntropyLoss(accum_dtype=torch.float32)
    except TypeError:
        pass
    return {k: (lambda m=m: m(weight, hidden, targets)) for k, m in out.items()}


def _gpu_row(n: int, weight, compiled, gen, dtype) -> dict:  # pragma: no cover - CUDA
    import triton.testing

    hidden = torch.randn(n, DIM, device="cuda", generator=gen).to(dtype).requires_grad_()
    targets = torch.randint(0, VOCAB, (n,), device="cuda", generator=gen)
    fns = {
        "fused": lambda: linear_cross_entropy(hidden, weight, targets, backend="triton"),
        "nx_torch": lambda: linear_cross_entropy(hidden, weight, targets, backend="torch"),
        "plain": lambda: F.cross_entropy(F.linear(hidden, weight).float(), targets),
        "compiled": lambda: compiled(hidden, weight, targets),
        **_liger_variants(hidden, weight, targets),
    }
    row = {"tokens": n, "dim": DIM, "vocab": VOCAB, "dtype": str(dtype).removeprefix("torch.")}
    for name, fn in fns.items():
        def step(fn=fn):
            fn().backward()

        try:
            hidden.grad = weight.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row[f"{name}_peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            row[f"{name}_ms"] = triton.testing.do_bench(step, grad_to_none=[hidden, weight],
                                                        return_mode="median")
        except torch.OutOfMemoryError:
            row[f"{name}_ms"] = row[f"{name}_peak_mb"] = "OOM"
        hidden.grad = weight.grad = None
        torch.cuda.empty_cache()
        print(f"  N={n} {name}: {row[f'{name}_ms']} ms, {row[f'{name}_peak_mb']} MiB", flush=True)
    for ref in ("liger", "liger_fp32_accum", "plain"):
        if isinstance(row.get(f"{ref}_ms"), float) and isinstance(row.get("fused_ms"), float):
            row[f"fused_over_{ref}_time"] = row["fused_ms"] / row[f"{ref}_ms"]
            row[f"fused_over_{ref}_mem"] = row["fused_peak_mb"] / row[f"{ref}_peak_mb"]
    return row


def run_gpu(tokens, dtype: torch.dtype) -> list[dict]:  # pragma: no cover - CUDA
    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = (torch.randn(VOCAB, DIM, device="cuda", generator=gen) / DIM**0.5).to(dtype).requires_grad_()
    compiled = torch.compile(lambda h, w, t: F.cross_entropy(F.linear(h, w).float(), t), dynamic=False)
    return [_gpu_row(n, weight, compiled, gen, dtype) for n in tokens]


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 64, 1 rep: a smoke test (same V, D)")
    parser.add_argument("--tokens", type=int, nargs="+", default=None, help=f"CPU N (default {CPU_TOKENS})")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU section even with CUDA")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    tokens = tuple(args.tokens) if args.tokens else (64,) if args.quick else CPU_TOKENS
    reps = 1 if args.quick else args.reps
    warmup = 1
    out = args.out or (RESULTS.with_name("linear_cross_entropy_quick.json") if args.quick else RESULTS)
    dtype = getattr(torch, args.dtype)
    load_before = os.getloadavg()[0]  # other work on the box inflates every column alike
    model = model_rows()
    print(f"## Analytic peak memory of forward + backward at N = {TARGET_TOKENS}, D = {DIM}, V = {VOCAB}\n")
    print(markdown(model, ["tokens", "dtype", "plain_gb", "nx_gb", "liger_gb", "liger_fp32_accum_gb",
                           "grad_weight_gb", "nx_over_plain", "nx_over_plain_no_gw"]) + "\n", flush=True)
    cpu = run_cpu(tokens, reps, args.threads, dtype, warmup)
    gpu = None
    if torch.cuda.is_available() and not args.no_gpu:
        gpu = run_gpu((1024,) if args.quick else GPU_TOKENS, torch.bfloat16)
    result = {
        "benchmark": "linear_cross_entropy",
        "config": {"quick": args.quick, "tokens": list(tokens), "reps": reps, "warmup": warmup,
                   "threads": args.threads, "cpu_dtype": args.dtype, "dim": DIM, "vocab": VOCAB,
                   "memory_probe": "in-process VmHWM reset via /proc/self/clear_refs, minus VmRSS before "
                                   "(after gc + malloc_trim); includes the weight gradient"},
        "environment": environment(load_before),
        "model_at_target": model,
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"\n## CPU, {args.dtype}, {args.threads} threads, median ms of {reps} after {warmup} warm-up; "
          "peak MiB beyond the inputs\n")
    print(markdown(cpu, ["tokens", "plain_ms", "nx_ms", "nx_half_ignored_ms", "compiled_ms",
                         "nx_time_ratio"]))
    print()
    print(markdown(cpu, ["tokens", "plain_peak_mb", "nx_peak_mb", "compiled_peak_mb", "nx_mem_ratio",
                         "plain_peak_no_gw_mb", "nx_peak_no_gw_mb", "nx_mem_ratio_no_gw",
                         "model_plain_mb", "model_nx_mb"]))
    if gpu:
        cols = ["tokens"] + [k for k in gpu[0] if k.endswith(("_ms", "_mb"))]
        print("\n## GPU, bfloat16\n\n" + markdown(gpu, cols))
        print("\n" + markdown(gpu, ["tokens"] + [k for k in gpu[0] if k.startswith("fused_over")]))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(out, result)
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()

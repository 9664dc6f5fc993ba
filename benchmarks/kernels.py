"""Kernel shoot-out (issue 12): every nxkernels op against its competitors at the 7B and 14B shapes.

Shapes: ``7b`` = NextFlow's backbone Qwen2.5-VL-7B (hidden 3584, 28 query / 4 kv heads of 128, MLP
18944, M-RoPE sections (16, 24, 24), vocabulary 152064 text + 16384 codes padded to 168448, TokenFlow
codebook 16384 x (32 + 8), block-causal next-scale attention); ``14b`` = NextStep-1's Qwen2.5-14B
(hidden 5120, 40 / 8 heads of 128, MLP 13824, 1D RoPE, vocabulary 152064, flow-head AdaLN width 1536,
causal attention). AdaLN is NextStep-1 only, VQ NextFlow only: the other shape is "not applicable".

Competitors per op (one row each; a competitor that cannot run here says why, never a number):
``eager`` = the op's plain-torch reference, ``compiled`` = ``torch.compile(eager)``, ``liger``
(Liger-Kernel: rms_norm, swiglu, rope, fused linear cross entropy; GPU), attention: ``sdpa_math`` /
``sdpa_flash`` / ``sdpa_efficient`` (SDPA pinned to one backend, with the dense mask or
``is_causal``), ``flex`` (``torch.compile(flex_attention)`` with a BlockMask; CPU: forward only),
``xformers`` (GPU); vq: ``gemm_argmin`` (the usual one-matmul lookup, not bit-exact). ``nx`` is
the public nxkernels function with automatic dispatch (the backend it picked is recorded).

Timing: per (op, shape, mode) every variant is warmed up (compiles happen there), then timed
interleaved (drift on a shared box hits all alike); ms = median. Peak memory = one more call:
CPU the rise of peak RSS (``harness.reset_peak_rss``), GPU ``torch.cuda.max_memory_allocated``
beyond what was allocated before, MiB. ``ratio`` = nx ms / fastest competitor ms (< 1: nx wins);
``mem_ratio`` = nx peak / smallest competitor peak. CPU fp32 at one layer's shapes with small
token counts (1024 rows; 64 for the vocabulary-sized head; the 256² schedule / 1024 causal
tokens for attention); GPU bf16 at 4k-16k tokens.

    .venv/bin/python benchmarks/kernels.py --threads 2   # writes results/kernels.{json,md}
    .venv/bin/python benchmarks/kernels.py --quick --out /tmp/k.json   # tiny shapes: a smoke test
    .venv/bin/python benchmarks/kernels.py --device cuda --merge benchmarks/results/kernels.json
                                          # GPU rows added to the CPU rows of an earlier run
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import adaln as adaln_bench  # noqa: E402
import linear_cross_entropy as lce_bench  # noqa: E402
import rope as rope_bench  # noqa: E402
import scale_attention as attention_bench  # noqa: E402
import swiglu as swiglu_bench  # noqa: E402
import vq as vq_bench  # noqa: E402
from harness import environment, peak_rss_since, reset_peak_rss, write_json  # noqa: E402

from nxkernels.adaln import ADALN_MODULATE, adaln_modulate, gated_residual  # noqa: E402
from nxkernels.linear_cross_entropy import (  # noqa: E402
    LINEAR_CROSS_ENTROPY,
    linear_cross_entropy,
    linear_cross_entropy_reference,
)
from nxkernels.rms_norm import RMS_NORM, rms_norm, rms_norm_reference  # noqa: E402
from nxkernels.rope import ROPE  # noqa: E402
from nxkernels.scale_attention import (  # noqa: E402
    DECODE_ATTENTION,
    SCALE_ATTENTION,
    ScaleBlocks,
    decode_attention,
    decode_attention_reference,
    scale_attention,
    scale_attention_reference,
)
from nxkernels.swiglu import SWIGLU, swiglu, swiglu_reference  # noqa: E402
from nxkernels.vq import VQ, vq_nearest  # noqa: E402
from nxkernels.vq.reference import prepare  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
MODES = ("forward", "forward+backward")

# The two shapes; ``quick`` keeps their structure (GQA, sections, causality) at toy sizes.
SHAPES = {
    "7b": {"model": "NextFlow / Qwen2.5-VL-7B", "hidden": 3584, "heads": 28, "kv_heads": 4, "head_dim": 128,
           "mlp": 18944, "vocab": 168448, "sections": (16, 24, 24), "codes": 16384},
    "14b": {"model": "NextStep-1 / Qwen2.5-14B", "hidden": 5120, "heads": 40, "kv_heads": 8, "head_dim": 128,
            "mlp": 13824, "vocab": 152064, "sections": None, "adaln": 1536},
}
QUICK_SHAPES = {
    "7b": {**SHAPES["7b"], "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 96,
           "vocab": 1000, "sections": (2, 3, 3), "codes": 256},
    "14b": {**SHAPES["14b"], "hidden": 80, "heads": 4, "kv_heads": 2, "head_dim": 16, "mlp": 112,
            "vocab": 900, "adaln": 32},
}
# Token counts per profile: rows of the row-wise ops, the LM head, attention, vq, the decode step.
PROFILES = {
    "quick": {"rows": (32,), "head": (16,), "levels": ((1, 4, 9, 16),), "causal": (32,), "vq": (30,),
              "decode_7b": ((16, 30),), "decode_14b": ((1, 32),), "batch_decode": 2},
    "cpu": {"rows": (1024,), "head": (64,), "levels": (256,), "causal": (1024,), "vq": (900,),
            "decode_7b": ((256, 900),), "decode_14b": ((1, 1024),), "batch_decode": 2},
    "cuda": {"rows": (4096, 16384), "head": (4096, 16384), "levels": (512, 1024), "causal": (4096, 16384),
             "vq": (8 * 10084,), "decode_7b": ((4096, 10084),), "decode_14b": ((1, 16384),),
             "batch_decode": 2},
}
NOT_APPLICABLE = {
    ("adaln", "7b"): "NextFlow has no AdaLN (discrete tokens, no flow head)",
    ("vq", "14b"): "NextStep-1 has continuous image tokens: no codebook lookup",
}
GPU_REFERENCE_MAX = vq_bench.GPU_REFERENCE_MAX  # N * K above this: the vq [N, K] oracle is not run


@dataclass
class Case:
    """One (op, shape, mode): the shared arguments, and each variant's function or a reason it cannot run."""

    args: tuple
    variants: dict[str, Callable | str]
    leaves: list = field(default_factory=list)  # tensors whose .grad is reset before a backward
    grads: tuple | None = None  # output gradients; None: the output is a scalar loss
    detail: str = ""
    nx_backend: str = ""
    heavy: bool = False  # seconds per call: fewer repeats, one warm-up


def _compile(fn: Callable) -> Callable:
    """``torch.compile(fn)``, created on first call (importing dynamo costs seconds: not when skipped)."""
    compiled = []

    def call(*args, **kwargs):
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=False))
        return compiled[0](*args, **kwargs)

    return call


def _gpu_only(device: str, package: str, what: str) -> str | None:
    """The reason ``what`` (a CUDA-only competitor from ``package``) cannot run, or None."""
    reasons = [] if device == "cuda" else ["no CUDA device"]
    if importlib.util.find_spec(package) is None:
        reasons.append(f"{package} not installed")
    return f"{what}: {'; '.join(reasons)}" if reasons else None


def _randn(*shape, device, dtype, grad=False, gen=None):
    return torch.randn(*shape, generator=gen).to(device, dtype).requires_grad_(grad)


# ------------------------------------------------------------------------------------------------
# one builder per op: (shape spec, tokens, device, dtype, backward) -> Case


def rms_norm_case(spec, n, device, dtype, backward):
    x = _randn(n, spec["hidden"], device=device, dtype=dtype, grad=backward)
    w = _randn(spec["hidden"], device=device, dtype=dtype, grad=backward)
    variants = {"nx": rms_norm, "eager": rms_norm_reference, "compiled": _compile(rms_norm_reference)}
    reason = _gpu_only(device, "liger_kernel", "Liger RMSNorm")
    if reason is None:  # pragma: no cover - CUDA
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        variants["liger"] = lambda x, w: LigerRMSNormFunction.apply(x, w, 1e-6)
    variants.setdefault("liger", reason)
    return Case((x, w), variants, [x, w], (torch.randn_like(x),), f"x [{n}, {spec['hidden']}]",
                RMS_NORM.select(x, w).name)


def swiglu_case(spec, n, device, dtype, backward):
    (gate, up), dy = swiglu_bench._inputs(n, spec["mlp"], dtype, device)
    variants = {"nx": swiglu, "eager": swiglu_reference, "compiled": _compile(swiglu_reference)}
    reason = _gpu_only(device, "liger_kernel", "Liger SwiGLU")
    if reason is None:  # pragma: no cover - CUDA
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction

        variants["liger"] = LigerSiLUMulFunction.apply
    variants.setdefault("liger", reason)
    return Case((gate, up), variants, [gate, up], (dy,), f"gate, up [{n}, {spec['mlp']}]",
                SWIGLU.select(gate, up).name)


def rope_case(spec, n, device, dtype, backward):
    model = {k: spec[k] for k in ("heads", "kv_heads", "head_dim", "sections")} | {"theta": 1e6}
    i = rope_bench.make_inputs(model, n, device, dtype)
    args = (i["q"], i["k"], i["positions"], i["inv_freq"], i["sections"])
    variants = {"nx": rope_bench.nx_qk, "eager": rope_bench.reference_qk,
                "compiled": _compile(rope_bench.reference_qk)}
    reason = _gpu_only(device, "liger_kernel", "Liger RoPE")
    if reason is None and spec["sections"] is not None:
        reason = "Liger RoPE: benchmarks/rope.py feeds it 1D positions only, this shape is M-RoPE"
    variants["liger"] = reason or rope_bench._liger()
    sections = "1D" if spec["sections"] is None else f"M-RoPE {spec['sections']}"
    detail = f"q [1, {spec['heads']}, {n}, {spec['head_dim']}], k {spec['kv_heads']} heads, {sections}"
    return Case(args, variants, [i["q"], i["k"]], (i["dq"], i["dk"]), detail,
                ROPE.select(i["q"], i["positions"], i["inv_freq"], i["sections"]).name)


def _adaln_nx(x, shift, scale, gate):
    return gated_residual(x, gate, adaln_modulate(x, shift, scale))


def adaln_case(spec, n, device, dtype, backward):
    tensors, dy = adaln_bench._inputs(n, spec["adaln"], "per_token", dtype, device)
    variants = {"nx": _adaln_nx, "eager": adaln_bench.block_reference,
                "compiled": _compile(adaln_bench.block_reference)}
    return Case(tuple(tensors), variants, tensors, (dy,),
                f"x, shift, scale, gate [{n}, {spec['adaln']}] (modulate + gated residual)",
                ADALN_MODULATE.select(*tensors[:3]).name)


def lce_case(spec, n, device, dtype, backward):
    gen = torch.Generator().manual_seed(0)
    d, v = spec["hidden"], spec["vocab"]
    hidden = _randn(n, d, device=device, dtype=dtype, grad=backward, gen=gen)
    weight = torch.empty(v, d, device=device, dtype=dtype).normal_(0, d**-0.5).requires_grad_(backward)
    targets = torch.randint(0, v, (n,), generator=gen).to(device)
    variants = {"nx": linear_cross_entropy, "eager": linear_cross_entropy_reference,
                "compiled": _compile(linear_cross_entropy_reference)}
    reason = _gpu_only(device, "liger_kernel", "Liger fused linear cross entropy")
    if reason is None:  # pragma: no cover - CUDA
        for name, fn in lce_bench._liger_variants(hidden, weight, targets).items():
            variants[name] = lambda *a, fn=fn: fn()
    variants.setdefault("liger", reason)
    return Case((hidden, weight, targets), variants, [hidden, weight], None,
                f"hidden [{n}, {d}], weight [{v}, {d}], mean loss",
                LINEAR_CROSS_ENTROPY.select(hidden, weight, targets).name, heavy=True)


def _sdpa(backend_name: str, causal: bool, mask_of: Callable | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def fn(q, k, v, *rest):
        mask = None if causal or mask_of is None else mask_of(q)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                  enable_gqa=q.shape[1] != k.shape[1])

    return fn


def _attention_competitors(device, backward, causal, mask_of, variants):
    """SDPA pinned to each backend, flex_attention and xformers, added to ``variants``."""
    variants["sdpa_math"] = _sdpa("MATH", causal, mask_of)
    variants["sdpa_flash"] = _sdpa("FLASH_ATTENTION", causal, mask_of)
    variants["sdpa_efficient"] = (_sdpa("EFFICIENT_ATTENTION", causal, mask_of) if device == "cuda"
                                  else "memory-efficient SDPA: no CUDA device (no CPU kernel)")
    reason = _gpu_only(device, "xformers", "xformers")
    if reason is None:  # pragma: no cover - CUDA
        variants["xformers"] = _xformers(causal, mask_of)
    variants.setdefault("xformers", reason)


def _xformers(causal: bool, mask_of: Callable | None):  # pragma: no cover - CUDA
    """``memory_efficient_attention`` in [batch, seq, heads, dim], kv heads repeated (GQA);
    causal: its LowerTriangularMask; block-causal: an additive bias from the dense mask."""
    import xformers.ops as xops

    def fn(q, k, v, *rest):
        group = q.shape[1] // k.shape[1]
        k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
        if causal or mask_of is None:
            bias = xops.LowerTriangularMask() if causal else None
        else:
            mask = mask_of(q)
            n, padded = mask.shape[-1], -(-mask.shape[-1] // 8) * 8  # xformers wants aligned rows
            bias = torch.zeros(mask.shape[0], padded, device=q.device, dtype=q.dtype)[:, :n]
            bias.masked_fill_(~mask, float("-inf"))  # in place: the view keeps the aligned row stride
            bias = bias[None, None].expand(q.shape[0], q.shape[1], -1, -1)
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_bias=bias)
        return out.transpose(1, 2)

    return fn


def _flex(blocks: ScaleBlocks, device: str):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    kv_end = blocks.kv_end(device)
    mask = create_block_mask(lambda b, h, q, kv: kv < kv_end[q], None, None, blocks.length, blocks.length,
                             device=device)
    compiled = _compile(flex_attention)
    return lambda q, k, v, *rest: compiled(q, k, v, block_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def scale_attention_case(spec, blocks, device, dtype, backward, batch=1):
    gen = torch.Generator().manual_seed(0)
    n, d = blocks.length, spec["head_dim"]
    q = _randn(batch, spec["heads"], n, d, device=device, dtype=dtype, grad=backward, gen=gen)
    k, v = (_randn(batch, spec["kv_heads"], n, d, device=device, dtype=dtype, grad=backward, gen=gen)
            for _ in range(2))
    causal = all(blocks.causal) and len(blocks.starts) == 1  # one causal block: plain causal attention
    variants = {"nx": scale_attention, "eager": scale_attention_reference,
                "compiled": _compile(scale_attention_reference)}
    _attention_competitors(device, backward, causal, lambda q: blocks.mask(q.device), variants)
    variants["flex"] = (f"flex_attention has no backward on CPU (torch {torch.__version__})"
                        if backward and device == "cpu" else _flex(blocks, device))
    pattern = "causal" if causal else f"block-causal, {len(blocks.starts)} scales"
    detail = f"q [{batch}, {spec['heads']}, {n}, {d}], kv {spec['kv_heads']} heads, {pattern}"
    return Case((q, k, v, blocks), variants, [q, k, v], (torch.randn_like(q),), detail,
                SCALE_ATTENTION.select(q, k, v, blocks).name, heavy=backward)


def decode_attention_case(spec, step, device, dtype, causal, batch):
    gen = torch.Generator().manual_seed(0)
    (queries, cache), d = step, spec["head_dim"]
    q = _randn(batch, spec["heads"], queries, d, device=device, dtype=dtype, gen=gen)
    k, v = (_randn(batch, spec["kv_heads"], cache, d, device=device, dtype=dtype, gen=gen) for _ in range(2))

    def nx(q, k, v):
        return decode_attention(q, k, v, causal=causal)

    def eager(q, k, v):
        return decode_attention_reference(q, k, v, causal=causal)

    variants = {"nx": nx, "eager": eager, "compiled": _compile(eager)}
    # every query of a whole scale sees the whole cache; a single causal token too: no mask needed
    _attention_competitors(device, False, False, None, variants)
    detail = (f"q [{batch}, {spec['heads']}, {queries}, {d}] over a cache of {cache}, kv {spec['kv_heads']} "
              f"heads{', causal' if causal else ''} (batch {batch}: CFG)")
    return Case((q, k, v), variants, detail=detail, nx_backend=DECODE_ATTENTION.select(q, k, v).name)


def vq_case(spec, n, device, dtype, backward):
    zs, es, zp, ep = vq_bench.make_inputs(n, spec["codes"], 32, 8, device=device)
    reference = VQ.backend("reference").load()

    def eager(zs, es, zp, ep):
        return reference(prepare(zs, es, zp, ep, 1.0, 1.0, True), 1, 0)

    variants = {"nx": lambda *a: vq_nearest(*a, normalize=True), "eager": eager, "compiled": _compile(eager),
                "gemm_argmin": lambda *a: vq_bench.gemm_argmin(*a, True, 1)}
    if device == "cuda" and n * spec["codes"] > GPU_REFERENCE_MAX:  # pragma: no cover - CUDA
        reason = f"the [N, K] oracle is skipped above {GPU_REFERENCE_MAX} pairs"
        variants["eager"] = variants["compiled"] = reason
    detail = f"{n} rows, {spec['codes']} codes x (32 + 8), L2-normalised"
    return Case((zs, es, zp, ep), variants, detail=detail, nx_backend=VQ.select(zs, es, zp, ep, k=1).name,
                heavy=True)


# ------------------------------------------------------------------------------------------------
# measuring


def _step(fn: Callable, case: Case, backward: bool) -> Callable[[], None]:
    def step():
        if not backward:
            with torch.no_grad():
                fn(*case.args)
            return
        for t in case.leaves:
            t.grad = None
        out = fn(*case.args)
        if case.grads is None:
            out.backward()
        else:
            torch.autograd.backward(out if isinstance(out, tuple) else (out,), case.grads)

    return step


def _clock(device: str) -> Callable[[Callable], float]:
    if device == "cpu":
        def wall(work):
            t0 = time.perf_counter()
            work()
            return (time.perf_counter() - t0) * 1e3

        return wall
    return rope_bench._cuda_ms  # pragma: no cover - CUDA


def _peak_mib(step: Callable, device: str) -> float:
    if device == "cpu":
        base = reset_peak_rss()
        step()
        return peak_rss_since(base)
    torch.cuda.synchronize()  # pragma: no cover - CUDA
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _short(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


def measure(case: Case, device: str, backward: bool, reps: int, skip: set[str]) -> dict[str, dict]:
    """``{variant: {"ms", "peak_mib"} or {"not_run": reason}}``; warm-up, then interleaved repeats."""
    warmup, reps = (1, min(reps, 3)) if case.heavy else (2, reps)
    results, steps = {}, {}
    for name, fn in case.variants.items():
        if name in skip and name != "nx":
            results[name] = {"not_run": f"skipped (--skip {name})"}
        elif isinstance(fn, str) or fn is None:
            results[name] = {"not_run": fn or "not available"}
        else:
            step = _step(fn, case, backward)
            try:
                for _ in range(warmup):
                    step()
            except Exception as err:  # a competitor that fails here is reported, not timed
                results[name] = {"not_run": f"failed here: {_short(err)}"}
                if device == "cuda":  # pragma: no cover - an out-of-memory competitor frees its cache
                    torch.cuda.empty_cache()
                continue
            steps[name] = step
    clock, samples = _clock(device), {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            samples[name].append(clock(step))
    gc.collect()
    gc.freeze()  # what lives now stays alive: the collects of the memory probes need not scan it
    for name, step in steps.items():
        for t in case.leaves:  # else the baseline holds the last call's gradients, which the step frees
            t.grad = None
        results[name] = {"ms": statistics.median(samples[name]), "peak_mib": _peak_mib(step, device)}
    return {name: results[name] for name in case.variants}


def summarise(results: dict[str, dict]) -> dict:
    """The fastest competitor, ``ratio`` = nx ms / its ms, ``mem_ratio`` = nx peak / smallest peak."""
    ran = {k: r for k, r in results.items() if "ms" in r and k != "nx"}
    nx = results.get("nx", {})
    if not ran or "ms" not in nx:
        return {"best_competitor": None, "ratio": None, "mem_ratio": None}
    best = min(ran, key=lambda k: ran[k]["ms"])
    low = min(r["peak_mib"] for r in ran.values())
    mem_ratio = nx["peak_mib"] / low if low >= 1 and nx["peak_mib"] >= 1 else None  # below 1 MiB: noise
    return {"best_competitor": best, "ratio": nx["ms"] / ran[best]["ms"], "mem_ratio": mem_ratio}


def cases(profile: dict, shapes: dict, device: str):
    """Yield (op, covers, shape, tokens, modes, builder(backward) -> Case)."""
    for shape, spec in shapes.items():
        for n in profile["rows"]:
            yield "rms_norm", ["rms_norm"], shape, n, MODES, lambda b, s=spec, n=n: rms_norm_case(
                s, n, device, DTYPE[device], b)
            yield "swiglu", ["swiglu"], shape, n, MODES, lambda b, s=spec, n=n: swiglu_case(
                s, n, device, DTYPE[device], b)
            yield "rope", ["rope"], shape, n, MODES, lambda b, s=spec, n=n: rope_case(
                s, n, device, DTYPE[device], b)
            if "adaln" in spec:
                yield "adaln", ["adaln_modulate", "gated_residual"], shape, n, MODES, (
                    lambda b, s=spec, n=n: adaln_case(s, n, device, DTYPE[device], b))
        for n in profile["head"]:
            yield "linear_cross_entropy", ["linear_cross_entropy"], shape, n, MODES, (
                lambda b, s=spec, n=n: lce_case(s, n, device, DTYPE[device], b))
        if shape == "7b":
            all_blocks = [ScaleBlocks.from_lengths(lv) if isinstance(lv, tuple)
                          else attention_bench.blocks_for(lv) for lv in profile["levels"]]
        else:
            all_blocks = [ScaleBlocks.from_lengths([n], causal=True) for n in profile["causal"]]
        for blocks in all_blocks:
            yield "scale_attention", ["scale_attention"], shape, blocks.length, MODES, (
                lambda b, s=spec, bl=blocks: scale_attention_case(s, bl, device, DTYPE[device], b))
        for step in profile[f"decode_{shape}"]:
            yield "decode_attention", ["decode_attention"], shape, step[0], ("forward",), (
                lambda b, s=spec, st=step, c=shape == "14b": decode_attention_case(
                    s, st, device, DTYPE[device], c, profile["batch_decode"]))
        if "codes" in spec:
            for n in profile["vq"]:
                yield "vq", ["vq"], shape, n, ("forward",), lambda b, s=spec, n=n: vq_case(
                    s, n, device, torch.float32, b)


DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}


def run(device: str, quick: bool, reps: int, skip: set[str]) -> list[dict]:
    profile = PROFILES["quick" if quick else device]
    shapes = QUICK_SHAPES if quick else SHAPES
    rows = []
    for op, covers, shape, tokens, modes, build in cases(profile, shapes, device):
        for mode in modes:
            if "torch._dynamo" in sys.modules:  # every compiled competitor starts from an empty cache
                torch._dynamo.reset()
            case = build(mode != "forward")
            results = measure(case, device, mode != "forward", reps, skip)
            row = {"op": op, "covers": covers, "shape": shape, "device": device,
                   "dtype": str(DTYPE[device] if op != "vq" else torch.float32).removeprefix("torch."),
                   "mode": mode, "tokens": tokens, "detail": case.detail, "nx_backend": case.nx_backend,
                   "results": results, **summarise(results)}
            rows.append(row)
            timed = ", ".join(f"{k} {r['ms']:.2f}" for k, r in results.items() if "ms" in r)
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
            print(f"  {device} {op} {shape} {tokens} {mode}: {timed} ms; ratio {ratio}", flush=True)
            del case
    return rows


# ------------------------------------------------------------------------------------------------
# report


def _fmt(x) -> str:
    if not isinstance(x, float):
        return "-" if x is None else str(x)
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _cell(r: dict | None, key: str) -> str:
    if r is None:
        return ""
    if "not_run" in r:
        return f"not run: {r['not_run']}" if key == "ms" else "-"
    return _fmt(r[key])


LABELS = {"gemm_argmin": "gemm_argmin (not bit-exact)"}


def _op_table(rows: list[dict]) -> list[str]:
    modes = [r["mode"] for r in rows]
    head = "| competitor | " + " | ".join(f"{m} ms | {m} peak MiB" for m in modes) + " |"
    lines = [head, "|---|" + "---|---|" * len(modes)]
    names = list(rows[0]["results"])
    for name in names:
        label = f"**nx** ({rows[0]['nx_backend']})" if name == "nx" else LABELS.get(name, name)
        cells = [f"{_cell(r['results'].get(name), 'ms')} | {_cell(r['results'].get(name), 'peak_mib')}"
                 for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [f"**{_ratio(r['ratio'])}** (vs {r['best_competitor'] or '-'}) | {_ratio(r['mem_ratio'])}"
             for r in rows]
    lines.append("| ratio nx / best (time, memory) | " + " | ".join(cells) + " |")
    return lines


def markdown_report(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    rows = result["rows"]
    devices = sorted({r["device"] for r in rows})
    load = env["load_average_1min"]
    gpu = next((r for r in rows if r["device"] == "cuda"), None)
    out = [
        "# Kernel shoot-out: nxkernels vs competitors at the 7B and 14B shapes (issue 12)",
        "",
        f"Written by `benchmarks/kernels.py`{' --quick (toy shapes)' if cfg['quick'] else ''}. "
        f"Devices in this report: {', '.join(devices)}. CPU: {cfg['threads']} threads, float32, "
        f"{env.get('cpu_count')} cores on the box, torch {env['torch']}. Load average (1 / 5 / 15 min) at "
        f"the start: {' / '.join(f'{x:.2f}' for x in env['load_average_start'])}; 1-min after: "
        f"{load['after']:.2f} "
        "(a shared box: other work inflates every column of a table alike; ratios compare variants timed "
        "side by side in one run).",
        "",
        ("GPU: " + (f"{env['cuda']}, bfloat16." if gpu else
                    "**pending** - no GPU was lent for this run; the GPU columns and tables fill in when "
                    "`benchmarks/kernels.py --device cuda --merge benchmarks/results/kernels.json` runs "
                    "on one.")),
        "",
        "ms = median of the timed calls (variants interleaved, after warm-up, which includes compiling); "
        "peak MiB = what one call adds at its worst (CPU: rise of the process's peak RSS; GPU: "
        "`max_memory_allocated` beyond the inputs). **ratio** = nx ms / fastest competitor ms (< 1: nx "
        "wins); memory ratio = nx peak / smallest competitor peak. `nx` = the public nxkernels function "
        "with automatic dispatch (its backend in brackets); `eager` = the op's plain-torch reference; "
        "`compiled` = `torch.compile(eager)`. A competitor that cannot run here says why. On CPU nx runs its "
        "CPU paths (the reference or chunked torch backends); its fused Triton kernels are what the GPU "
        "columns measure.",
        "",
        "## Summary",
        "",
        "| op | shape | mode | tokens | CPU nx ms | CPU best competitor | CPU ratio | GPU nx ms | "
        "GPU best competitor | GPU ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["op"], r["shape"], r["mode"]) for r in rows))
    for op, shape, mode in keys:
        by_dev = {d: [r for r in rows
                     if (r["op"], r["shape"], r["mode"], r["device"]) == (op, shape, mode, d)]
                  for d in ("cpu", "cuda")}
        cells = []
        for d in ("cpu", "cuda"):
            rs = by_dev[d]
            if not rs:
                cells.append("pending | pending | pending" if d == "cuda" else "- | - | -")
                continue
            nx = " / ".join(_cell(r["results"]["nx"], "ms") for r in rs)
            best = " / ".join(f"{r['best_competitor']} {_cell(r['results'].get(r['best_competitor']), 'ms')}"
                              if r["best_competitor"] else "-" for r in rs)
            cells.append(f"{nx} | {best} | " + " / ".join(f"**{_ratio(r['ratio'])}**" for r in rs))
        tokens = "; ".join(f"{d.replace('cuda', 'gpu')} " * (len(devices) > 1) + " / ".join(
            str(r["tokens"]) for r in by_dev[d]) for d in ("cpu", "cuda") if by_dev[d])
        out.append(f"| {op} | {shape} | {mode} | {tokens} | " + " | ".join(cells) + " |")
    for (op, shape), why in NOT_APPLICABLE.items():
        out.append(f"| {op} | {shape} | - | - | not applicable: {why} | | | | | |")
    for op in dict.fromkeys(r["op"] for r in rows):
        covers = next(r["covers"] for r in rows if r["op"] == op)
        out += ["", f"## {op}" + (f" ({' + '.join(covers)})" if covers != [op] else "")]
        for shape, spec in result["config"]["shapes"].items():
            if (op, shape) in NOT_APPLICABLE:
                out += ["", f"### {shape}: not applicable - {NOT_APPLICABLE[(op, shape)]}"]
                continue
            for device in ("cpu", "cuda"):
                mine = [r for r in rows if (r["op"], r["shape"], r["device"]) == (op, shape, device)]
                if not mine and device == "cuda":
                    out += ["", f"### {shape} ({spec['model']}), GPU: pending (no GPU lent for this run)"]
                for tokens in dict.fromkeys(r["tokens"] for r in mine):
                    group = [r for r in mine if r["tokens"] == tokens]
                    out += ["", f"### {shape} ({spec['model']}), {device.upper()} {group[0]['dtype']}: "
                            f"{group[0]['detail']}", ""] + _op_table(group)
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy shapes, 2 repeats: a smoke test")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per variant (3 for the heavy ops)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: CPU, and CUDA when present")
    parser.add_argument("--skip", nargs="*", default=[], help="competitors to leave out (e.g. compiled flex)")
    parser.add_argument("--merge", type=Path,
                        help="keep this earlier result's rows of the devices not run now")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON path; the markdown goes beside it")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    load_start = list(os.getloadavg())
    gc.freeze()  # the imports' objects: keeps the gc.collect of each memory probe short
    reps = 2 if args.quick else args.reps
    rows = [row for d in devices for row in run(d, args.quick, reps, set(args.skip))]
    gc.unfreeze()
    if args.merge and args.merge.exists():
        rows = [r for r in json.loads(args.merge.read_text())["rows"] if r["device"] not in devices] + rows
    result = {
        "benchmark": "kernels",
        "config": {"quick": args.quick, "threads": args.threads, "reps": reps, "heavy_reps": min(reps, 3),
                   "devices": devices, "skip": args.skip,
                   "shapes": {k: dict(v) for k, v in
                              (QUICK_SHAPES if args.quick else SHAPES).items()},
                   "profiles": {d: PROFILES["quick" if args.quick else d] for d in devices},
                   "not_applicable": [{"op": op, "shape": s, "reason": r}
                                      for (op, s), r in NOT_APPLICABLE.items()]},
        "environment": environment(load_start[0], load_average_start=load_start, cpu_count=os.cpu_count(),
                                   omp_wait_policy=os.environ.get("OMP_WAIT_POLICY")),
        "rows": rows,
    }
    write_json(args.out, result)
    report = markdown_report(result)
    args.out.with_suffix(".md").write_text(report)
    print("\n" + report.split("## Summary")[1].split("\n## ")[0])
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return result


if __name__ == "__main__":
    main()

"""End-to-end latency of NextFlow text-to-image generation and how far it sits above its floors.

``generation_latency`` times what a user's call runs: the prompt prefill, one KV-cached forward
per scale (with CFG the unconditional rows ride in the same batch), sampling, and the VQ decode
of the final codes. Every forward is timed (device events on CUDA, the host clock after a
synchronisation elsewhere) and set against

- its FLOPs (``nxrecipes.eval.flops``, the count FlopCounterMode agrees with) over the measured
  matrix rate: the **compute floor**;
- the bytes it must read: every weight once (decoder layers, final norm, the head's code rows,
  the scale-length projection) plus the KV cache it attends over, over the measured copy
  bandwidth: the **memory floor**; the **weight floor** is the weights alone;
- per forward the larger of the two, summed: the **roofline floor**.

MFU is FLOPs over (seconds x matrix rate). ``measure_ceilings`` measures the rate with a large
matrix product and the bandwidth with a large device copy (bytes read + written), as the device
notes ask; pass ``Ceilings`` to use datasheet figures instead. The decode's FLOPs are counted
with ``FlopCounterMode`` once, outside the timed runs.

Models for latency need no training: ``random_nextflow`` and ``random_tokenizer`` build them with
random weights straight on the device in the wanted dtype (``nextflow_7b`` in bf16 is 15 GB).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import attrs
import torch
from torch import nn

from nxcore.config import finite_number, integer
from nxcore.schedule.protocol import ScaleSchedule
from nxrecipes.eval.flops import DecoderShape, counted_flops, nextflow_flops
from nxrecipes.nextflow.generate import ImageSampling, generate_image_codes
from nxrecipes.nextflow.model import NextFlow
from nxrecipes.nextflow.sequence import Example, Text

__all__ = ["Ceilings", "LatencySettings", "generation_latency", "measure_ceilings", "random_nextflow",
           "random_tokenizer"]


@attrs.frozen(kw_only=True)
class Ceilings:
    """The device's matrix rate (FLOP/s) and memory bandwidth (bytes/s), and where they come from."""

    flops_per_s: float = attrs.field(validator=finite_number(above=0))
    bytes_per_s: float = attrs.field(validator=finite_number(above=0))
    source: str = "given"


@attrs.frozen(kw_only=True)
class LatencySettings:
    """One measurement: ``batch`` images from ``prompt_tokens``-token prompts with guidance ``cfg``
    (1 = none: no unconditional rows), ``repeats`` timed calls after ``warmup`` untimed ones."""

    batch: int = attrs.field(default=1, validator=integer(at_least=1))
    prompt_tokens: int = attrs.field(default=100, validator=integer(at_least=1))
    cfg: float = attrs.field(default=3.0, validator=finite_number())
    repeats: int = attrs.field(default=3, validator=integer(at_least=1))
    warmup: int = attrs.field(default=1, validator=integer(at_least=0))
    seed: int = attrs.field(default=0, validator=integer(at_least=0))


@contextmanager
def _building(device: torch.device | str, dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def random_nextflow(config: Any, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                    seed: int = 0) -> NextFlow:
    """``config.build()`` with its own random initialisation, allocated on ``device`` in ``dtype``."""
    torch.manual_seed(seed)
    with _building(device, dtype):
        return config.build().eval()


def random_tokenizer(config: Any, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> nn.Module:
    """A randomly initialised image tokenizer of ``config`` (e.g. ``tokenflow_like(codebook_size=...)``)
    on ``device`` in ``dtype``: its decode costs what a trained one's does."""
    torch.manual_seed(seed)
    with _building(device, dtype):
        return config.build().eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def measure_ceilings(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
                     matrix: int | None = None, copy_bytes: int | None = None, repeats: int = 5) -> Ceilings:
    """The matrix rate of an ``matrix``-square product in ``dtype`` and the bandwidth of a
    ``copy_bytes`` device copy (defaults: 8192 and 2 GiB on CUDA, 1024 and 64 MiB on CPU)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = matrix or (8192 if cuda else 1024)
    size = copy_bytes or (2 << 30 if cuda else 64 << 20)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    a @ b  # warm-up: library handles, kernel choice
    matmul = _median_seconds(lambda: a @ b, device, repeats)
    src = torch.randn(size // 4, device=device, generator=gen)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy = _median_seconds(lambda: dst.copy_(src), device, repeats)
    name = str(dtype).removeprefix("torch.")
    return Ceilings(flops_per_s=2 * n**3 / matmul, bytes_per_s=2 * src.numel() * 4 / copy,
                    source=f"measured: {n}^3 {name} product, {size >> 20} MiB copy")


class _Marks:
    """Timestamps of named points of one call: CUDA events (read after one synchronisation) or the
    host clock (CPU work is synchronous)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.stamps: list[Any] = []

    def __call__(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            self.stamps.append(time.perf_counter())
        self.names.append(name)

    def intervals(self) -> dict[str, float]:
        """Seconds from each mark to the next (the first mark is the start)."""
        if self.cuda:
            torch.cuda.synchronize()
            spans = [a.elapsed_time(b) / 1e3 for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        else:
            spans = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return dict(zip(self.names[1:], spans, strict=True))


def _weight_bytes(model: NextFlow) -> int:
    """Bytes one forward reads of the weights: the layers, the final norm, the scale-length
    projection and the head's code rows (embedding rows are gathered, not read whole)."""
    modules = [model.layers, model.norm, model.scale_length_proj]
    weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    head = model.embed_tokens.weight
    return weights + model.vocabulary.codebook_size * model.dim * head.element_size()


def _kv_bytes(model: NextFlow, rows: int, attended: int) -> int:
    layer = model.config.layer
    kv_heads = layer.num_kv_heads or layer.num_heads
    item = model.embed_tokens.weight.element_size()
    return rows * attended * model.config.num_layers * 2 * kv_heads * model.config.head_dim * item


def generation_latency(model: NextFlow, tokenizer: nn.Module, schedule: ScaleSchedule,
                       settings: LatencySettings | None = None, *, ceilings: Ceilings | None = None
                       ) -> dict[str, Any]:
    """Time text-to-image generation with ``model`` and ``tokenizer`` (module docstring); returns
    the report: settings, ceilings, per-forward rows, decode, totals and floors."""
    if not isinstance(model, NextFlow):
        raise TypeError(f"model must be a NextFlow, got {type(model).__name__}")
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(f"schedule must be a ScaleSchedule, got {type(schedule).__name__}")
    s = settings or LatencySettings()
    device = model.embed_tokens.weight.device
    ceilings = ceilings or measure_ceilings(device, model.embed_tokens.weight.dtype)
    gen = torch.Generator().manual_seed(s.seed)
    text = model.vocabulary.text_size
    prompts = [Example([Text(torch.randint(0, text, (s.prompt_tokens,), generator=gen).tolist())])
               for _ in range(s.batch)]
    guided = s.cfg != 1.0
    uncond = [Example()] * s.batch if guided else None
    sampling = ImageSampling(cfg=s.cfg)

    def generate(mark: Callable[[str], None]) -> list[torch.Tensor]:
        """One timed call; returns its codes."""
        mark("start")
        codes = generate_image_codes(model, prompts, schedule, uncond=uncond, sampling=sampling,
                                     generator=torch.Generator(device=device).manual_seed(s.seed),
                                     on_forward=mark).codes
        tokenizer.decode(codes, schedule)
        mark("decode")
        return codes

    for _ in range(s.warmup):
        generate(_Marks(device))
    runs = []
    for _ in range(s.repeats):
        marks = _Marks(device)
        codes = generate(marks)
        runs.append(marks.intervals())
    seconds = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
    totals = [sum(run.values()) for run in runs]

    _, decode_ops = counted_flops(lambda: tokenizer.decode(codes, schedule))
    rows = s.batch * (2 if guided else 1)
    lengths = [s.prompt_tokens] * s.batch + ([0] * s.batch if guided else [])
    weights = _weight_bytes(model)
    forwards = []
    for step in nextflow_flops(DecoderShape.of(model), schedule, lengths):
        flops = step.flops.total
        read = weights + _kv_bytes(model, rows, step.attended)
        compute_floor, memory_floor = flops / ceilings.flops_per_s, read / ceilings.bytes_per_s
        forwards.append({
            "forward": step.name, "new_tokens": step.new_tokens, "attended": step.attended,
            "ms": 1e3 * seconds[step.name], "gflop": flops / 1e9, "mfu": flops / seconds[step.name] /
            ceilings.flops_per_s, "floor_ms": 1e3 * max(compute_floor, memory_floor),
            "bound": "compute" if compute_floor >= memory_floor else "memory",
        })
    decode_flops = sum(decode_ops.values())
    decode_floor = decode_flops / ceilings.flops_per_s
    model_flops = sum(row["gflop"] for row in forwards) * 1e9
    e2e = statistics.median(totals)
    floor = sum(row["floor_ms"] for row in forwards) / 1e3 + decode_floor
    return {
        "settings": {**attrs.asdict(s), "rows": rows, "scales": schedule.num_steps,
                     "grid": list(schedule.grid), "tokens": schedule.total_tokens,
                     "dtype": str(model.embed_tokens.weight.dtype).removeprefix("torch."),
                     "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "parameters": model.num_parameters()},
        "ceilings": {"tflops": ceilings.flops_per_s / 1e12, "gb_per_s": ceilings.bytes_per_s / 1e9,
                     "source": ceilings.source},
        "forwards": forwards,
        "decode": {"ms": 1e3 * seconds["decode"], "gflop": decode_flops / 1e9,
                   "floor_ms": 1e3 * decode_floor},
        "seconds": {"per_call": e2e, "per_image": e2e / s.batch, "generation": e2e - seconds["decode"],
                    "runs": totals},
        "floors": {
            "compute_s": (model_flops + decode_flops) / ceilings.flops_per_s,
            "weights_s": len(forwards) * weights / ceilings.bytes_per_s,
            "memory_s": sum(weights + _kv_bytes(model, rows, row["attended"]) for row in forwards)
            / ceilings.bytes_per_s,
            "roofline_s": floor,
        },
        "ratio_to_floor": e2e / floor,
        "mfu": (model_flops + decode_flops) / e2e / ceilings.flops_per_s,
        "weight_bytes": weights,
    }

"""Timing and reporting shared by the op benchmarks (``python benchmarks/<op>.py``).

``args`` everywhere is ``(tensors, dy)``: the op's inputs, and the output gradient used when the
backward pass is timed too.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def environment(load_before: float, **extra) -> dict:
    """The ``environment`` record of a result JSON: versions, machine, the 1-minute load average before
    and after the run (other work on a shared box inflates every timing alike), CUDA device."""
    return {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor(),
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}, **extra,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak_rss() -> float:
    """Free what can be freed (gc, ``malloc_trim``), reset the peak RSS (``VmHWM``) through
    ``/proc/self/clear_refs``; returns the current RSS in MiB, the baseline for ``peak_rss_since``."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_mb("VmRSS")


def peak_rss_since(base: float) -> float:
    """MiB the process's peak RSS rose above ``base`` since ``reset_peak_rss``."""
    return status_mb("VmHWM") - base


def step(fn: Callable, tensors, dy, backward: bool) -> None:
    """One call of ``fn(*tensors)``; with ``backward`` also its backward from ``dy``."""
    if backward:
        for t in tensors:
            t.grad = None
        fn(*tensors).backward(dy)
    else:
        with torch.no_grad():
            fn(*tensors)


def time_cpu(fn: Callable, args, backward: bool, repeats: int) -> float:
    """Median wall ms over ``repeats`` after two warm-up calls (which also compile)."""
    for _ in range(2):
        step(fn, *args, backward)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(fn, *args, backward)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_cuda(fn: Callable, args, backward: bool, repeats: int) -> tuple[float, float]:
    """Median ms (CUDA events) and peak MiB of one call beyond the inputs."""
    for _ in range(3):
        step(fn, *args, backward)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(fn, *args, backward)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(fn, *args, backward)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return statistics.median(times), peak


def fresh_compile(fn: Callable) -> Callable:
    """A compiled ``fn`` with an empty dynamo cache: every (shape, grad mode) gets its own graph
    (the default limit of 8 recompilations would silently fall back to eager)."""
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def other_prompts(records: list) -> list:
    """Each text-to-image record under the prompt of the record 7 places on (cyclically; 1 place when
    7 is a multiple of their number), so that none keeps its own."""
    if len(records) < 2:
        raise ValueError(f"got {len(records)} records; shuffling prompts needs at least 2")
    shift = 7 if 7 % len(records) else 1
    return [attrs.evolve(r, prompt=records[(i + shift) % len(records)].prompt) for i, r in enumerate(records)]


def objects_drawn(report: dict) -> str:
    """"drawn / asked (empty)": mean objects detected and named per image, and the share of images
    where no object is detected, averaged over the categories of a ShapeEval ``summary()``; blank for
    records older than its ``drawn``."""
    counts = list(report.get("drawn", {}).values())
    if not counts:
        return ""
    asked, drawn, empty = (sum(c[k] for c in counts) / len(counts) for k in ("asked", "drawn", "empty"))
    return f"{drawn:.2f} / {asked:.2f} ({empty:.2f})"


def amend_records(records: dict[Path, Path], fields: Callable[[Path], dict]) -> None:
    """Add ``fields(run_dir)`` to every recorded run (record file -> run directory) whose record and
    run directory both exist, rewriting the record atomically."""
    from nxcore.checkpoint import atomic_write_text

    for path, run_dir in records.items():
        if path.exists() and run_dir.is_dir():
            record = json.loads(path.read_text()) | fields(run_dir)
            atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")

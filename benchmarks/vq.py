"""Nearest-codeword search benchmark: ``vq_nearest`` backends at tokenizer shapes.

CPU (fixed threads, medians of interleaved runs): the ``reference`` (all [N, K] distances) vs the
chunked ``torch`` backend, both bit-exact, plus ``gemm_argmin``, the usual one-matmul VQ lookup
(``argmin(‖e‖² − 2 z·e)``, not exact: it shows what the exactness costs). Peak memory is the largest
total of live tensors the search allocates (a TorchDispatchMode around the backend), in MiB.
GPU (when CUDA is present): triton vs torch vs reference (``triton.testing.do_bench`` medians,
``max_memory_allocated``).

Rows: VAR's single codebook (K = 4096, 32 channels) at 256² (680 tokens) and 512² (2240 tokens);
TokenFlow's dual codebook (32 + 8 channels, L2-normalised, K = 16384) at 256² (817 tokens) and 384²
(2227 tokens); an 8-channel codebook at K = 16384; top-5 (self-correction) on two of them.

    .venv/bin/python benchmarks/vq.py            # writes benchmarks/results/vq.json
    .venv/bin/python benchmarks/vq.py --quick    # tiny shapes, a smoke test (results/vq-quick.json)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import weakref
from pathlib import Path

import torch
from harness import environment, markdown, write_json
from torch.utils._python_dispatch import TorchDispatchMode

from nxkernels.vq import VQ, vq_nearest
from nxkernels.vq.reference import prepare

RESULTS = Path(__file__).resolve().parent / "results" / "vq.json"

# name: (tokens, codes, sem_dim, pix_dim, normalize, k)
ROWS = {
    "var-256": (680, 4096, 32, None, False, 1),
    "var-512": (2240, 4096, 32, None, False, 1),
    "var-512-top5": (2240, 4096, 32, None, False, 5),
    "tokenflow-256": (817, 16384, 32, 8, True, 1),
    "tokenflow-384": (2227, 16384, 32, 8, True, 1),
    "tokenflow-384-top5": (2227, 16384, 32, 8, True, 5),
    "pix8-512": (2240, 16384, 8, None, False, 1),
}
QUICK_ROWS = {
    "var-tiny": (64, 512, 32, None, False, 1),
    "tokenflow-tiny": (64, 1024, 32, 8, True, 1),
    "tokenflow-tiny-top5": (64, 1024, 32, 8, True, 5),
}
GPU_ROWS = {  # N = 16 images x 4096 tokens at the largest
    "tokenflow-16k": (4096, 16384, 32, 8, True, 1),
    "tokenflow-32k": (65536, 32768, 32, 8, True, 1),
    "tokenflow-32k-top5": (65536, 32768, 32, 8, True, 5),
    "single8-32k": (65536, 32768, 8, None, False, 1),
    "single32-16k": (65536, 16384, 32, None, False, 1),
}
GPU_REFERENCE_MAX = 2**28  # N·K above this: the reference's [N, K] sort is skipped on GPU


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of live tensor storages created while the mode is on (views counted once)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [nbytes, live tensors on it]

    def _release(self, ptr: int) -> None:
        entry = self._refs[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in self._refs:
                self._refs[ptr] = [storage.nbytes(), 0]
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._refs[ptr][1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def make_inputs(n, n_codes, sem_dim, pix_dim, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    zs = torch.randn(n, sem_dim, device=device, generator=g)
    es = torch.randn(n_codes, sem_dim, device=device, generator=g)
    if pix_dim is None:
        return zs, es, None, None
    return (zs, es, torch.randn(n, pix_dim, device=device, generator=g),
            torch.randn(n_codes, pix_dim, device=device, generator=g))


def gemm_argmin(zs, es, zp, ep, normalize, k):
    """The common inexact lookup: one matmul over the concatenated halves, then argmin/topk."""
    if normalize:
        zs, es = torch.nn.functional.normalize(zs, dim=-1), torch.nn.functional.normalize(es, dim=-1)
        if zp is not None:
            zp, ep = torch.nn.functional.normalize(zp, dim=-1), torch.nn.functional.normalize(ep, dim=-1)
    z = zs if zp is None else torch.cat([zs, zp], 1)
    e = es if ep is None else torch.cat([es, ep], 1)
    d = torch.addmm((e * e).sum(1), z, e.T, alpha=-2)
    return d.argmin(1) if k == 1 else d.topk(k, 1, largest=False).indices


def peak_mib(backend: str, inputs, normalize: bool, k: int) -> float:
    zs, es, zp, ep = inputs
    fn = VQ.backend(backend).load()
    with LiveTensorPeak() as mode:
        fn(prepare(zs, es, zp, ep, 1.0, 1.0, normalize), k, 0)
    return mode.peak / 2**20


def run_cpu(rows: dict, reps: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    out = []
    for name, (n, n_codes, ds, dp, normalize, k) in rows.items():
        inputs = make_inputs(n, n_codes, ds, dp)
        fns = {
            "reference": lambda i=inputs, nm=normalize, k=k: vq_nearest(*i, normalize=nm, k=k,
                                                                        backend="reference"),
            "torch": lambda i=inputs, nm=normalize, k=k: vq_nearest(*i, normalize=nm, k=k, backend="torch"),
            "gemm_argmin": lambda i=inputs, nm=normalize, k=k: gemm_argmin(*i, nm, k),
        }
        ref, tor = fns["reference"](), fns["torch"]()  # also the warm-up
        assert torch.equal(ref.indices, tor.indices) and torch.equal(ref.distances, tor.distances)
        fns["torch"]()
        fns["gemm_argmin"]()
        samples = {key: [] for key in fns}
        for _ in range(reps):  # interleaved, so drift hits every variant alike
            for key, f in fns.items():
                t0 = time.perf_counter()
                f()
                samples[key].append((time.perf_counter() - t0) * 1e3)
        ms = {key: statistics.median(v) for key, v in samples.items()}
        gemm_idx = fns["gemm_argmin"]()
        row = {
            "row": name, "tokens": n, "codes": n_codes, "dims": f"{ds}" if dp is None else f"{ds}+{dp}",
            "normalize": normalize, "k": k,
            **{f"{key}_ms": v for key, v in ms.items()},
            "torch_over_gemm_argmin": ms["torch"] / ms["gemm_argmin"],
            "reference_over_torch": ms["reference"] / ms["torch"],
            "reference_peak_mib": peak_mib("reference", inputs, normalize, k),
            "torch_peak_mib": peak_mib("torch", inputs, normalize, k),
            "gemm_argmin_index_mismatches": int((gemm_idx != ref.indices).sum()),
        }
        out.append(row)
        print(f"  {name}: " + ", ".join(f"{key} {v:.1f} ms" for key, v in ms.items())
              + f"; peak MiB reference {row['reference_peak_mib']:.1f}, torch {row['torch_peak_mib']:.1f}",
              flush=True)
    return out


def _gpu_row(name: str, n, n_codes, ds, dp, normalize, k) -> dict:  # pragma: no cover - CUDA
    import triton.testing

    inputs = make_inputs(n, n_codes, ds, dp, device="cuda")
    row = {"row": name, "tokens": n, "codes": n_codes, "dims": f"{ds}" if dp is None else f"{ds}+{dp}",
           "normalize": normalize, "k": k}
    backends = ["triton", "torch"] + (["reference"] if n * n_codes <= GPU_REFERENCE_MAX else [])
    results = {}
    for backend in backends:
        def call(b=backend):
            return vq_nearest(*inputs, normalize=normalize, k=k, backend=b)

        results[backend] = call()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        row[f"{backend}_ms"] = triton.testing.do_bench(call, return_mode="median")
        row[f"{backend}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    row["gemm_argmin_ms"] = triton.testing.do_bench(lambda: gemm_argmin(*inputs, normalize, k),
                                                   return_mode="median")
    row["bit_identical"] = all(
        torch.equal(r.indices, results["triton"].indices)
        and torch.equal(r.distances, results["triton"].distances) for r in results.values()
    )
    print(f"  {name}: " + ", ".join(f"{key} {v:.2f}" for key, v in row.items() if key.endswith("_ms")),
          flush=True)
    return row


def run_gpu(rows: dict) -> list[dict]:  # pragma: no cover - CUDA
    return [_gpu_row(name, *spec) for name, spec in rows.items()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 reps: a smoke test")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {RESULTS}; with --quick, vq-quick.json beside it)")
    args = parser.parse_args(argv)
    out = args.out or (RESULTS.with_name("vq-quick.json") if args.quick else RESULTS)
    rows = QUICK_ROWS if args.quick else ROWS
    reps = 2 if args.quick else args.reps
    load_before = os.getloadavg()[0]  # other work on the box inflates every column alike
    cpu = run_cpu(rows, reps, args.threads)
    gpu = None
    if torch.cuda.is_available():
        gpu = run_gpu({k: v for k, v in GPU_ROWS.items() if not args.quick or v[0] <= 4096})
    result = {
        "benchmark": "vq",
        "config": {"quick": args.quick, "reps": reps, "threads": args.threads,
                   "rows": {k: list(v) for k, v in rows.items()}},
        "environment": environment(load_before),
        "cpu": cpu,
        "gpu": gpu,
    }
    print(f"\n## CPU, {args.threads} threads, median ms of {reps}\n")
    print(markdown(cpu, ["row", "tokens", "codes", "dims", "k", "reference_ms", "torch_ms", "gemm_argmin_ms",
                         "torch_over_gemm_argmin", "reference_peak_mib", "torch_peak_mib",
                         "gemm_argmin_index_mismatches"]))
    if gpu:
        cols = ["row", "tokens", "codes", "dims", "k"] + [c for c in gpu[0] if c.endswith(("_ms", "_mib"))]
        print("\n## GPU\n\n" + markdown(gpu, cols + ["bit_identical"]))
    else:
        print("\n(no CUDA device: GPU section skipped)")
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()

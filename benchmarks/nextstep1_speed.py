"""Generation speed of nx's NextStep-1 pipeline against the official GH-v1 code, same tiny model.

The official ``NextStep`` + ``AutoencoderKL`` are built in-process with random weights and copied into
nx with nx's official loaders (``nextstep1_parity.build_tiny``), so both sides run the same weights:

- backbone: ``nextstep1_tiny()``'s shape (4 layers of width 128, 4 query / 2 kv heads of 32, SwiGLU
  352, q/k/v bias), flow head 128 x 3 (MLP-AdaLN), 64-wide image tokens;
- image tokenizer: a 3-level AE (ch 32, ch_mult [1, 2, 2], 16 channels; 4 px per latent, 2 x 2
  token patches: 8 px per token), so a 64 x 64 image is 8 x 8 = 64 tokens;
- sampling: cfg 3 (2-way CFG: every image has a conditional and a negative-prompt row), 20
  sampler steps per token (``timesteps="nextstep1"``, SDE), shift 1, fp32 on the CPU.

Timed: the whole request, official ``NextStepPipeline.generate_image(...)`` vs nx
``NextStep1Pipeline.text_to_image(...)`` (tokenize, prefill, 64 tokens, decode), batch 1 and 4
(captions, one image each), a warm-up of each, then ``--repeats`` rounds alternating the two sides;
the table gives the median seconds per image (request time / batch) and the speed-up. A separate,
untimed run per side splits a request into backbone forwards, sampler calls (per token), head
evaluations (per sampler step) and the VAE decode.

``--before FILE`` embeds an earlier result (e.g. nx before a change, run with
``PYTHONPATH=<old checkout>/src``) and prints before / after columns.

Usage (the official code needs the scratch venv; see ``nextstep1_parity.py``)::

    ENABLE_TORCH_COMPILE=0 /tmp/official/venv/bin/python benchmarks/nextstep1_speed.py \\
        --official /tmp/official/src --stubs /tmp/official/stubs [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ENABLE_TORCH_COMPILE", "0")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from harness import environment  # noqa: E402
from nextstep1_parity import TINY_CAPTIONS, build_tiny, import_official  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "nextstep1" / "speed.json"
SPEED_VAE = {"ch_mult": [1, 2, 2], "resolution": 64}  # 8 px per token
HW = (64, 64)
CAPTIONS = [*TINY_CAPTIONS, "a yellow star to the left of a red cube", "masterpiece, best quality"]


@contextlib.contextmanager
def timed(owner: object, name: str, log: dict[str, list[float]], key: str):
    """Record the wall time of every call of ``owner.name`` in ``log[key]`` (absent: nothing)."""
    original = getattr(owner, name, None)
    if original is None:
        yield
        return

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            log.setdefault(key, []).append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def nxkernels_fast_path():
    """WHAT-IF (diagnostic, not nx as shipped): nx's backbone with the nxkernels ops it calls per decode
    step (``rms_norm``, ``apply_rope``, ``swiglu``) run as their reference math directly, without the
    ``torch.library`` custom-op dispatch, argument validation and per-call RoPE tables (cos / sin
    memoised per positions tensor, inverse frequencies per head width). Shows what a no-grad fast path
    in nxkernels / nxcore.nn would buy; the outputs stay those of the reference backend."""
    import nxcore.nn.mlp as mlp_module
    import nxcore.nn.norm as norm_module
    import nxcore.position.rope as rope_module
    from nxkernels.rms_norm.reference import rms_norm_forward_reference
    from nxkernels.rope.reference import rope_cos_sin, rotate_half
    from nxkernels.swiglu.reference import swiglu_forward_reference

    saved = norm_module.rms_norm, rope_module.apply_rope, rope_module.rope_inv_freq, mlp_module.swiglu
    tables: dict = {}
    inv: dict = {}

    def rms_norm(x, weight, eps=1e-6, *, residual=None, backend=None):
        shape = x.shape
        r = None if residual is None else residual.expand(shape).reshape(-1, shape[-1])
        y, h, _ = rms_norm_forward_reference(x.reshape(-1, shape[-1]), weight, r, eps)
        return y.view(shape) if residual is None else (y.view(shape), h.view(shape))

    def apply_rope(x, positions, inv_freq, sections=None, *, backend=None):
        key = (positions.data_ptr(), positions._version, tuple(positions.shape), inv_freq.data_ptr())
        if key not in tables:
            if len(tables) > 64:
                tables.clear()
            tables[key] = (positions, *rope_cos_sin(positions, inv_freq, sections))  # keep positions alive
        _, cos, sin = tables[key]
        xf = x.float()
        return (xf * cos + rotate_half(xf) * sin).to(x.dtype)

    def rope_inv_freq(head_dim, theta, *, device="cpu"):
        key = (head_dim, float(theta), str(device))
        if key not in inv:
            inv[key] = saved[2](head_dim, theta, device=device)
        return inv[key]

    norm_module.rms_norm, rope_module.apply_rope = rms_norm, apply_rope
    rope_module.rope_inv_freq = rope_inv_freq
    mlp_module.swiglu = lambda gate, up, backend=None: swiglu_forward_reference(gate, up)
    try:
        yield
    finally:
        norm_module.rms_norm, rope_module.apply_rope, rope_module.rope_inv_freq, mlp_module.swiglu = saved


def breakdown(official, off_pipe, our_pipe, run_official, run_nx) -> dict:
    """Milliseconds per request by part (one untimed request per side, batch 1)."""
    import nxrecipes.nextstep1.head as nx_head
    import nxrecipes.nextstep1.model as nx_model
    from nxcore.sampler import flow

    out = {}
    log: dict[str, list[float]] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(timed(official.model.NextStep, "forward_model", log, "backbone forward"))
        stack.enter_context(timed(official.fm_head.FlowMatchingHead, "sample", log, "sampler (per token)"))
        stack.enter_context(timed(official.fm_head.SimpleMLPAdaLN, "forward", log, "head net (per step)"))
        stack.enter_context(timed(off_pipe.vae, "decode", log, "VAE decode"))
        t0 = time.perf_counter()
        run_official()
        log["request"] = [time.perf_counter() - t0]
    out["official"] = {k: {"calls": len(v), "total_ms": round(1e3 * sum(v), 2),
                           "per_call_ms": round(1e3 * sum(v) / len(v), 4)} for k, v in log.items()}
    log = {}
    snapshot = getattr(nx_head, "FlowNetSnapshot", None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(timed(nx_model.NextStep1, "forward_embeds", log, "backbone forward"))
        stack.enter_context(timed(flow.FlowSampler, "sample", log, "sampler (per token)"))
        if snapshot is not None:  # every evaluation of the head's network goes through velocity_modulated
            method = "velocity_modulated" if hasattr(snapshot, "velocity_modulated") else "velocity"
            stack.enter_context(timed(snapshot, method, log, "head net (per step)"))
        else:
            stack.enter_context(timed(nx_head.FlowMatchingHead, "velocity", log, "head net (per step)"))
        stack.enter_context(timed(our_pipe.image_tokenizer, "decode", log, "VAE decode"))
        t0 = time.perf_counter()
        run_nx()
        log["request"] = [time.perf_counter() - t0]
    out["nx"] = {k: {"calls": len(v), "total_ms": round(1e3 * sum(v), 2),
                     "per_call_ms": round(1e3 * sum(v) / len(v), 4)} for k, v in log.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="directory holding the official nextstep/ package")
    ap.add_argument("--stubs", default=None, help="directory prepended to sys.path (torchvision stub)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--before", type=Path, default=None, help="an earlier result JSON to compare with")
    ap.add_argument("--label", default="nx", help="name of this nx version in the JSON")
    ap.add_argument("--what-if", action="store_true",
                    help="also time nx with the nxkernels ops called directly (nxkernels_fast_path)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    from nxrecipes.nextstep1.generate import ImageSampling

    official = import_official(args.official, args.stubs)
    tiny = build_tiny(official, 0, vae=SPEED_VAE)
    failed = [r for r in tiny.rows if r.ok is False]
    if failed:
        raise SystemExit(f"the nx copy of the official model does not match: {failed}")
    off_pipe, our_pipe = tiny.pipelines(torch.float32)
    c = our_pipe.model.config
    grid = our_pipe.grid(HW)
    config = {
        "backbone": {"layers": c.num_layers, "dim": c.dim, "heads": c.layer.num_heads,
                     "kv_heads": c.layer.num_kv_heads, "mlp": c.layer.hidden, "vocab": c.vocab_size},
        "head": {"width": c.head.width, "depth": c.head.depth, "latent_dim": c.latent_dim},
        "image": {"hw": list(HW), "tokens": grid[0] * grid[1], "grid": list(grid),
                  "ae": {"ch": 32, **SPEED_VAE}},
        "sampling": {"cfg": 3.0, "branches": 2, "num_sampling_steps": args.steps, "timesteps_shift": 1.0,
                     "method": "sde (official grid)"},
        "dtype": "float32", "device": "cpu", "threads": torch.get_num_threads(),
    }
    kw = {"cfg": 3.0, "num_sampling_steps": args.steps}
    sampling = ImageSampling(**kw)

    def run_official(batch: int) -> None:
        off_pipe.generate_image(CAPTIONS[:batch], hw=HW, seed=1, progress=False, **kw)

    def run_nx(batch: int) -> None:
        our_pipe.text_to_image(CAPTIONS[:batch], hw=HW, sampling=sampling, seed=1, progress=False)

    results = []
    for batch in args.batches:
        run_official(batch)  # warm-up
        run_nx(batch)
        times: dict[str, list[float]] = {"official": [], args.label: []}
        for _ in range(args.repeats):
            for name, fn in (("official", run_official), (args.label, run_nx)):
                t0 = time.perf_counter()
                fn(batch)
                times[name].append(time.perf_counter() - t0)
        off = statistics.median(times["official"]) / batch
        ours = statistics.median(times[args.label]) / batch
        row = {"batch": batch, "official_s_per_image": round(off, 4),
               f"{args.label}_s_per_image": round(ours, 4), "speedup": round(off / ours, 2),
               "raw_s": {k: [round(t, 4) for t in v] for k, v in times.items()}}
        if args.what_if:
            with nxkernels_fast_path():
                images = our_pipe.text_to_image(CAPTIONS[:batch], hw=HW, sampling=sampling, seed=1,
                                                progress=False)
                what_if = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    run_nx(batch)
                    what_if.append(time.perf_counter() - t0)
            reference = our_pipe.text_to_image(CAPTIONS[:batch], hw=HW, sampling=sampling, seed=1,
                                               progress=False)
            w = statistics.median(what_if) / batch
            row["what_if_nxkernels_fast_path"] = {
                "s_per_image": round(w, 4), "speedup": round(off / w, 2),
                "raw_s": [round(t, 4) for t in what_if],
                "max_abs_image_diff_vs_nx": float((images - reference).abs().max())}
        results.append(row)
    parts = breakdown(official, off_pipe, our_pipe, lambda: run_official(1), lambda: run_nx(1))
    record = {"config": config, "label": args.label, "results": results, "breakdown_batch1": parts,
              "environment": environment(load_before, threads=torch.get_num_threads())}
    if args.before is not None:
        record["before"] = json.loads(args.before.read_text())

    head = ("batch", "official s/img", f"{args.label} s/img", "speed-up")
    rows = [(r["batch"], f"{r['official_s_per_image']:.3f}", f"{r[f'{args.label}_s_per_image']:.3f}",
             f"{r['speedup']:.2f}x") for r in results]
    if args.before is not None:
        before = {r["batch"]: r for r in record["before"]["results"]}
        label = record["before"]["label"]
        head = (*head, f"{label} s/img", f"{label} speed-up")
        rows = [(*row, f"{before[r['batch']][f'{label}_s_per_image']:.3f}" if r["batch"] in before else "-",
                 f"{before[r['batch']]['speedup']:.2f}x" if r["batch"] in before else "-")
                for row, r in zip(rows, results, strict=True)]
    if args.what_if:
        head = (*head, "what-if s/img", "what-if speed-up")
        rows = [(*row, f"{r['what_if_nxkernels_fast_path']['s_per_image']:.3f}",
                 f"{r['what_if_nxkernels_fast_path']['speedup']:.2f}x")
                for row, r in zip(rows, results, strict=True)]
    widths = [max(len(str(x[i])) for x in (head, *rows)) for i in range(len(head))]
    print(f"tiny NextStep-1, {HW[0]}x{HW[1]} px = {grid[0] * grid[1]} tokens, cfg 3 (2-way), {args.steps} "
          f"steps, fp32 CPU, {torch.get_num_threads()} thread(s), median of {args.repeats}")
    for line in (head, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    print("batch 1, ms per request by part (calls, total, per call):")
    for side, table in parts.items():
        for part, v in table.items():
            print(f"  {side:8s} {part:22s} {v['calls']:5d}  {v['total_ms']:9.1f}  {v['per_call_ms']:8.3f}")
    env = record["environment"]["load_average_1min"]
    print(f"load average (1 min): before {env['before']:.2f}, after {env['after']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

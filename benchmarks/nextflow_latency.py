"""NextFlow end-to-end generation latency (issue 12): seconds per image, per-scale breakdown, MFU,
and the compute / weight-bandwidth / roofline floors (``nxrecipes.nextflow.latency``).

On a GPU: ``nextflow_7b`` with random bf16 weights, Table 14's 1:1 schedule at the 1024 level
(18 scales) and the 512 level, CFG (conditional + unconditional rows), a 100-token prompt, the
TokenFlow-sized VQ decode included, batch 1 and 8. On CPU the same harness runs ``nextflow_tiny``
at the 256 level (the numbers say how far CPU eager sits from its floors, not what a GPU does).

    .venv/bin/python benchmarks/nextflow_latency.py                     # GPU if present, else tiny CPU
    .venv/bin/python benchmarks/nextflow_latency.py --model 7b --levels 1024 512 --batches 1 8
    .venv/bin/python benchmarks/nextflow_latency.py --quick             # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from harness import environment, markdown, write_json

from nxcore.schedule import Schedule, nextflow_schedule
from nxcore.tokenizer import Vocabulary
from nxcore.tokenizer.dual import dual_tiny, tokenflow_like
from nxrecipes.nextflow import nextflow_7b, nextflow_tiny
from nxrecipes.nextflow.latency import (
    LatencySettings,
    generation_latency,
    measure_ceilings,
    random_nextflow,
    random_tokenizer,
)

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _configs(name: str, layers: int | None = None):
    """(model config, tokenizer config) of ``name``: "7b" (TokenFlow-sized tokenizer, 16384 codes)
    or "tiny" (the CPU-sized pair); ``layers`` overrides the depth (a 7B-wide smoke test on CPU)."""
    depth = {} if layers is None else {"num_layers": layers}
    if name == "7b":
        model = nextflow_7b(**depth)
        return model, tokenflow_like(codebook_size=model.vocabulary.codebook_size)
    tokenizer = dual_tiny()
    vocab = Vocabulary(text_size=300, codebook_size=tokenizer.codebook_size, pad_to_multiple_of=8,
                       text_specials=(("<pad>", 0), ("<boi>", 1), ("<eoi>", 2)))
    return nextflow_tiny(vocab, tokenizer.code_dim, **depth), tokenizer


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    model_cfg, tok_cfg = _configs(args.model, args.layers)
    model = random_nextflow(model_cfg, device=device, dtype=dtype)
    tokenizer = random_tokenizer(tok_cfg, device=device, dtype=dtype)
    if args.compile:
        for layer in model.layers:
            layer.compile()
    ceilings = measure_ceilings(device, dtype)
    schedules = {"quick": Schedule(((1, 1), (2, 2), (4, 4)))} if args.quick else {
        str(level): nextflow_schedule(level=level) for level in args.levels}
    reports = []
    for level, schedule in schedules.items():
        for batch in args.batches:
            settings = LatencySettings(batch=batch, prompt_tokens=args.prompt, cfg=args.cfg,
                                       repeats=args.repeats, warmup=args.warmup)
            report = generation_latency(model, tokenizer, schedule, settings, ceilings=ceilings)
            reports.append({"level": level, **report})
            print(f"level {level} batch {batch}: {report['seconds']['per_image']:.4g} s/image, "
                  f"{report['ratio_to_floor']:.3g}x the roofline floor, MFU {report['mfu']:.3g}", flush=True)
    return {"model": args.model, "layers": model_cfg.num_layers, "compile": args.compile,
            "ceilings": reports[0]["ceilings"], "reports": reports}


def summary_rows(result: dict) -> list[dict]:
    rows = []
    for r in result["reports"]:
        s, f = r["settings"], r["floors"]
        rows.append({
            "level": r["level"], "batch": s["batch"], "rows": s["rows"], "tokens": s["tokens"],
            "s/call": f"{r['seconds']['per_call']:.4g}", "s/image": f"{r['seconds']['per_image']:.4g}",
            "decode ms": f"{r['decode']['ms']:.4g}", "compute floor s": f"{f['compute_s']:.3g}",
            "weight floor s": f"{f['weights_s']:.3g}", "roofline floor s": f"{f['roofline_s']:.3g}",
            "x floor": f"{r['ratio_to_floor']:.3g}", "MFU": f"{r['mfu']:.3g}",
        })
    return rows


def per_scale_rows(report: dict) -> list[dict]:
    return [{"forward": f["forward"], "tokens": f["new_tokens"], "attended": f["attended"],
             "ms": f"{f['ms']:.4g}", "GFLOP": f"{f['gflop']:.4g}", "MFU": f"{f['mfu']:.3g}",
             "floor ms": f"{f['floor_ms']:.3g}", "bound": f["bound"]} for f in report["forwards"]]


def main(argv=None) -> dict:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("7b", "tiny"), default="7b" if cuda else "tiny")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16" if cuda else "fp32")
    parser.add_argument("--levels", type=int, nargs="+", default=[1024, 512] if cuda else [256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8] if cuda else [1, 4])
    parser.add_argument("--prompt", type=int, default=100)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layers", type=int, help="override the model's depth (e.g. 2 for a CPU check)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every decoder layer")
    parser.add_argument("--quick", action="store_true", help="a 3-scale schedule: a smoke test")
    parser.add_argument("--out", type=Path, help="JSON path (default: results/nextflow_latency[_cuda].json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    result = run(args)
    summary, scales = summary_rows(result), per_scale_rows(result["reports"][0])
    print()
    print(markdown(summary, list(summary[0])))
    first = result["reports"][0]
    print(f"\nper forward, level {first['level']} batch {first['settings']['batch']}:")
    print(markdown(scales, list(scales[0])))
    out = args.out or RESULTS / ("nextflow_latency_cuda.json" if args.device.startswith("cuda")
                                 else "nextflow_latency.json")
    payload = {"benchmark": "nextflow_latency", "config": {k: str(v) for k, v in vars(args).items()},
               "environment": environment(load, threads=args.threads), **result}
    write_json(out, payload)
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()

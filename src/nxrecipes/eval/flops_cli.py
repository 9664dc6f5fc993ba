"""``nx flops``: the paper's FLOPs comparison and the real-architecture count (``eval.flops``).

    nx flops                              paper table (h 2048, 4096) + nextflow_7b with CFG
    nx flops --per-scale 1024             also every forward of the 1024-level generation
    nx flops --run out/nextflow-quality/main-30   the count of a trained run's model
    nx flops --check                      FlopCounterMode on a small random model vs the count
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nxcore.schedule import nextflow_schedule


def _config(run: str | None):
    from nxrecipes.nextflow import NextFlowConfig, nextflow_7b

    if run is None:
        return nextflow_7b()
    path = Path(run) / "model_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--run {run}: no model_config.json there; pass a NextFlow run directory")
    return NextFlowConfig.from_json(path.read_text())


def _check() -> dict:
    from nxcore.schedule import Schedule
    from nxcore.tokenizer import Vocabulary
    from nxrecipes.eval.flops import cross_check
    from nxrecipes.nextflow import nextflow_tiny

    vocab = Vocabulary(text_size=300, codebook_size=64, pad_to_multiple_of=8,
                       text_specials=(("<pad>", 0), ("<boi>", 1), ("<eoi>", 2)))
    schedule = Schedule(((1, 1), (2, 2), (3, 3), (4, 4)))
    return cross_check(nextflow_tiny(vocab, 8, num_layers=2), schedule, prompt_tokens=[9, 5])


def cmd_flops(args: argparse.Namespace) -> None:
    from nxrecipes.eval.flops_table import format_table, paper_table, per_scale_table, real_table

    config = _config(args.run_dir)
    report = {
        "paper": paper_table(args.hidden, layers=args.layers, prompt_tokens=args.prompt),
        "real": real_table(config, prompt_tokens=args.prompt, batch=args.batch, cfg=not args.no_cfg),
    }
    cfg = "without CFG" if args.no_cfg else "with CFG (conditional + unconditional rows)"
    print(f"## The paper's count (Appendix A.2, Eqs. 9-11): {args.layers} layer(s), a {args.prompt}-token "
          "prompt; TFLOPs per image\n")
    print(format_table(report["paper"]))
    name = args.run_dir or "nextflow_7b"
    print(f"\n## {name}: generation {cfg}, batch {args.batch}, a {args.prompt}-token prompt; TFLOPs per "
          "image, next to a diffusion transformer with the same layers and steps\n")
    print(format_table(report["real"]))
    if args.per_scale:
        schedule = nextflow_schedule(level=args.per_scale)
        report["per_scale"] = per_scale_table(config, schedule, prompt_tokens=args.prompt, batch=args.batch,
                                              cfg=not args.no_cfg)
        print(f"\n## {name}: every forward at the {args.per_scale} level (GFLOPs, all rows)\n")
        print(format_table(report["per_scale"]))
    if args.check:
        check = _check()
        report["check"] = check
        verdict = "equal" if check["analytic"] == check["counted"] else "DIFFERENT"
        print(f"\nFlopCounterMode on a random 2-layer NextFlow (2 prompts, CFG, 4 scales): counted "
              f"{check['counted']:,} FLOPs, the count gives {check['analytic']:,}: {verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")


def _level(text: str) -> int:
    value = int(text)
    if value not in (256, 512, 1024):
        raise argparse.ArgumentTypeError(f"level must be 256, 512 or 1024, got {value}")
    return value


def add_flops_command(commands) -> None:
    flops = commands.add_parser("flops", help="FLOPs of NextFlow vs a diffusion transformer (paper A.2)")
    flops.add_argument("--hidden", type=int, nargs="+", default=[2048, 4096],
                       help="widths of the paper table")
    flops.add_argument("--layers", type=int, default=1, help="layers in the paper table (1: per layer)")
    flops.add_argument("--prompt", type=int, default=100, help="prompt tokens")
    flops.add_argument("--batch", type=int, default=1, help="images generated together")
    flops.add_argument("--no-cfg", action="store_true", help="count without classifier-free guidance")
    flops.add_argument("--run", dest="run_dir",
                       help="a NextFlow run directory (default: the nextflow_7b shape)")
    flops.add_argument("--per-scale", type=_level, metavar="LEVEL", help="also every forward at this level")
    flops.add_argument("--check", action="store_true", help="cross-check with FlopCounterMode")
    flops.add_argument("--json", help="also write the tables as JSON to this path")
    flops.set_defaults(run=cmd_flops)

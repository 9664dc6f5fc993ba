"""The ``nx`` command (also ``python -m nxrecipes``).

    nx info                               versions, devices, kernel backends
    nx components                         every protocol and the nx implementations of it
    nx data preview [--task t2i ...]      PNG grid of ShapeWorld samples with their captions
    nx data export --out DIR              images (PNG) + samples.jsonl
    nx eval --images DIR --prompts JSONL  ShapeEval scores: a table, and JSON with --json
    nx demo [--out DIR]                   what `make demo` runs
    nx plot RUN [RUN ...] [--out PNG]     PNG curves of training metrics (one run, or overlaid)
    nx flops [--per-scale 1024] [--check] FLOPs: NextFlow vs a diffusion transformer (paper A.2)
    nx tokenizer train|eval|reconstruct   train a tiny image tokenizer, score it, show reconstructions
    nx data extract --tokenizer DIR --out DIR   per-scale indices of a dataset, sharded on disk
    nx nextflow train|generate|edit|caption|eval   NextFlow on ShapeWorld (nxrecipes/nextflow/cli.py)
    nx nextstep1 train|generate|edit      NextStep-1: ShapeWorld runs and official checkpoints
                                          (nxrecipes/nextstep1/cli.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nxrecipes.eval.flops_cli import add_flops_command
from nxrecipes.nextflow.cli import add_nextflow_commands
from nxrecipes.nextstep1.cli import add_nextstep1_commands
from nxrecipes.tokenizer.cli import add_extract_command, add_tokenizer_commands

TASKS_HELP = "ShapeWorld task(s): t2i captioning edit interleaved in_context world_knowledge text_only"


def _data_args(parser: argparse.ArgumentParser, default_n: int) -> None:
    parser.add_argument("--split", default="train", help="train, validation, test or heldout")
    parser.add_argument("--task", nargs="+", default=["t2i"], help=TASKS_HELP)
    parser.add_argument("-n", "--num", type=int, default=default_n, help="number of samples")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (32-256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vary-background", action="store_true", help="mild background variation")
    parser.add_argument("--max-distractors", type=int, default=2,
                        help="objects a prompt's scene may add that the prompt does not name (0: none)")


def _dataset(args: argparse.Namespace):
    from nxrecipes.data.shapeworld import ShapeWorld

    return ShapeWorld(
        split=args.split, size=args.size, tasks=tuple(args.task), length=args.num, seed=args.seed,
        vary_background=args.vary_background, max_distractors=args.max_distractors,
    )


def cmd_info(args: argparse.Namespace) -> None:
    from nxrecipes.info import format_report, report

    info = report()
    print(json.dumps(info, indent=2) if args.json else format_report(info))


def cmd_components(args: argparse.Namespace) -> None:
    from nxrecipes.components import format_components

    print(format_components())


def cmd_preview(args: argparse.Namespace) -> None:
    from nxrecipes.data.shapeworld.preview import preview_grid

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    preview_grid(_dataset(args), columns=args.columns).save(out)
    print(f"wrote {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from nxrecipes.data.shapeworld import export

    path = export(_dataset(args), args.out, progress=not args.quiet)
    print(f"wrote {args.num} samples to {path}")


def cmd_eval(args: argparse.Namespace) -> None:
    from nxrecipes.eval.shapeeval.folder import evaluate_folder

    report = evaluate_folder(args.images, args.prompts, progress=not args.quiet)
    print(report.format_table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        from nxcore.checkpoint import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_demo(args: argparse.Namespace) -> None:
    from nxrecipes.demo import main as demo_main

    demo_main(["--out", args.out])


def cmd_plot(args: argparse.Namespace) -> None:
    from nxrecipes.train.plot import plot_run

    runs = args.runs[0] if len(args.runs) == 1 else args.runs
    try:
        path = plot_run(runs, args.out, keys=args.keys)
    except ImportError as err:  # matplotlib is optional (the dev extra)
        print(f"nx plot: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nx", description="nx: autoregressive image generation")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="versions, devices, kernel backends")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(run=cmd_info)

    commands.add_parser("components", help="protocols and their implementations").set_defaults(
        run=cmd_components
    )

    data_parser = commands.add_parser("data", help="ShapeWorld data")
    data = data_parser.add_subparsers(dest="data_command", required=True)
    preview = data.add_parser("preview", help="PNG grid of samples with their captions")
    _data_args(preview, default_n=16)
    preview.add_argument("--out", default="out/preview.png")
    preview.add_argument("--columns", type=int, default=4)
    preview.set_defaults(run=cmd_preview)
    export = data.add_parser("export", help="images + samples.jsonl")
    _data_args(export, default_n=100)
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--quiet", action="store_true", help="no progress bar")
    export.set_defaults(run=cmd_export)
    add_extract_command(data)

    evaluate = commands.add_parser("eval", help="score a folder of images against prompts")
    evaluate.add_argument("--images", required=True, help="folder of images")
    evaluate.add_argument("--prompts", required=True, help="JSONL: one {prompt[, spec][, image]} per line")
    evaluate.add_argument("--json", help="also write the report as JSON to this path")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=cmd_eval)

    demo = commands.add_parser("demo", help="what `make demo` runs")
    demo.add_argument("--out", default="out/demo")
    demo.set_defaults(run=cmd_demo)

    plot = commands.add_parser("plot", help="PNG curves of training metrics (metrics.jsonl)")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directory, or its metrics.jsonl")
    plot.add_argument("--out", help="PNG to write (default: RUN/metrics.png, or beside the runs for several)")
    plot.add_argument(
        "--keys", nargs="+", help="metrics: names, globs (loss/scale_*) or families (loss); default: all"
    )
    plot.set_defaults(run=cmd_plot)

    add_flops_command(commands)
    add_tokenizer_commands(commands)
    add_nextflow_commands(commands)
    add_nextstep1_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"nx {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

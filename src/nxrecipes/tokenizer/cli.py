"""``nx tokenizer train|eval|reconstruct`` and ``nx data extract`` (registered by ``nxrecipes.cli``).

    nx tokenizer train --kind ae|vq|dual [--minutes M | --steps N] [--out DIR] [--data FOLDER]
    nx tokenizer eval DIR [--num N] [--split test] [--json PATH]
    nx tokenizer reconstruct DIR --out grid.png [-n 8]
    nx data extract --tokenizer DIR --out DIR [--num N] [--split train] [--shard-size S]

``--kind`` picks a builder function (``kinds()``); the run directory holds everything the other
commands need (``train.py``'s module docstring).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nxrecipes.tokenizer.train import TokenizerTrainConfig

__all__ = ["KIND_NAMES", "add_extract_command", "add_tokenizer_commands", "kinds"]

KIND_NAMES = ("ae", "vq", "dual")


def kinds() -> dict[str, Callable[..., TokenizerTrainConfig]]:
    """``--kind`` -> the builder function of its tiny training run (imported on use: the ``nx``
    parser is built without importing torch)."""
    from nxrecipes.tokenizer.train import (
        autoencoder_training_tiny,
        dual_codebook_training_tiny,
        multiscale_vq_training_tiny,
    )

    return {"ae": autoencoder_training_tiny, "vq": multiscale_vq_training_tiny,
            "dual": dual_codebook_training_tiny}


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _training_config(args: argparse.Namespace) -> TokenizerTrainConfig:
    from nxrecipes.tokenizer.data import ImageFolder

    changes: dict[str, Any] = {}
    for name in ("batch_size", "lr", "seed", "checkpoint_every", "log_every", "warmup_steps"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    dual = {"codebook_size": args.codes, "restart_every": args.restart_every,
            "normalize": None if args.search is None else args.search == "cosine",
            "scale_drop": args.scale_drop, "truncate": args.truncate}
    dual = {k: v for k, v in dual.items() if v is not None}
    if dual and args.kind != "dual":
        raise ValueError(
            f"--codes, --search, --restart-every, --scale-drop and --truncate set the dual-codebook "
            f"tokenizer; got --kind {args.kind}. Use --kind dual, or leave them out"
        )
    changes.update(dual)
    out = args.out or f"out/tokenizer-{args.kind}"
    cfg = kinds()[args.kind](
        out, minutes=args.minutes, steps=args.steps, size=args.size, train_images=args.train_images,
        eval_images=args.eval_images, eval_every=args.eval_every, **changes,
    )
    if args.data:
        cfg = cfg.replace(
            data=ImageFolder(path=args.data, size=args.size, part="train"),
            eval_data=ImageFolder(path=args.data, size=args.size, part="heldout"),
        )
    return cfg


def cmd_train(args: argparse.Namespace) -> None:
    from nxrecipes.tokenizer.train import train_tokenizer

    _threads(args)
    cfg = _training_config(args)
    summary = train_tokenizer(cfg, progress=not args.quiet)
    resumed = "" if summary.resumed_from is None else f" (resumed from step {summary.resumed_from})"
    minutes = summary.elapsed_s / 60
    print(f"trained {summary.step} steps in {minutes:.1f} min{resumed}; run in {summary.run_dir}")
    print(summary.report.format_table())


def _eval_dataset(run: Any, split: str | None, num: int | None) -> Any:
    from nxrecipes.tokenizer.data import ShapeWorldImages

    data = run.config.eval_data
    if isinstance(data, ShapeWorldImages):
        changes = {k: v for k, v in (("split", split), ("length", num)) if v is not None}
        return data.replace(**changes).build()
    dataset = data.build()
    return dataset if num is None else _First(dataset, num)


class _First:
    """The first ``num`` samples of a dataset (captions kept)."""

    def __init__(self, dataset: Any, num: int) -> None:
        if num < 1:
            raise ValueError(f"--num must be >= 1, got {num}")
        self.dataset, self.num = dataset, min(num, len(dataset))

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} is out of range for {self.num} samples")
        return self.dataset[index]

    def caption(self, index: int) -> str | None:
        caption = getattr(self.dataset, "caption", None)
        return caption(index) if callable(caption) else None


def cmd_eval(args: argparse.Namespace) -> None:
    from nxcore.checkpoint import atomic_write_text
    from nxrecipes.tokenizer.evaluate import evaluate
    from nxrecipes.tokenizer.train import EVAL_FILE, load_run

    _threads(args)
    run = load_run(args.run_dir)
    dataset = _eval_dataset(run, args.split, args.num)
    report = evaluate(run.model, run.objective, dataset, batch_size=args.batch_size, progress=not args.quiet)
    print(report.format_table())
    path = Path(args.json) if args.json else run.run_dir / EVAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")
    print(f"wrote {path}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from nxrecipes.tokenizer.evaluate import reconstruction_grid
    from nxrecipes.tokenizer.train import load_run

    _threads(args)
    run = load_run(args.run_dir)
    dataset = _eval_dataset(run, args.split, args.num)
    grid = reconstruction_grid(run.model, run.objective, dataset, num=args.num, columns=args.columns)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"wrote {out}")


def cmd_extract(args: argparse.Namespace) -> None:
    from nxrecipes.tokenizer.data import ShapeWorldImages
    from nxrecipes.tokenizer.extract import SelfCorrectionConfig, extract
    from nxrecipes.tokenizer.train import load_run

    _threads(args)
    run = load_run(args.tokenizer)
    schedule = getattr(run.objective, "schedule", None)
    if schedule is None:
        raise ValueError(
            f"{args.tokenizer} holds a continuous tokenizer ({type(run.model).__name__}); extraction "
            "writes per-scale indices and needs a discrete one (train it with --kind vq)"
        )
    data = run.config.data
    if isinstance(data, ShapeWorldImages):
        dataset = data.replace(split=args.split, length=args.num or data.length).build(cache=False)
    else:
        dataset = data.build(cache=False)
        dataset = dataset if args.num is None else _First(dataset, args.num)
    correction = None
    if args.self_correction:
        correction = SelfCorrectionConfig(fraction=args.token_fraction, k=args.top_k, variants=args.variants)
    index = extract(run.model, dataset, schedule, args.out, shard_size=args.shard_size,
                    self_correction=correction, batch_size=args.batch_size, seed=args.seed,
                    progress=not args.quiet)
    print(f"wrote {len(dataset)} samples to {index.parent} ({index.name} + shards)")


def add_tokenizer_commands(commands: Any) -> None:
    """Register ``nx tokenizer train|eval|reconstruct`` on the ``nx`` sub-parsers."""
    parser = commands.add_parser("tokenizer", help="train, evaluate and inspect image tokenizers")
    sub = parser.add_subparsers(dest="tokenizer_command", required=True)

    train = sub.add_parser("train", help="train a tiny tokenizer (ShapeWorld, or --data FOLDER)")
    train.add_argument("--kind", choices=KIND_NAMES, required=True,
                       help="ae: NextStep-1 autoencoder; vq: multi-scale residual VQ; dual: NextFlow's "
                       "dual-codebook VQ")
    train.add_argument("--minutes", type=float, help="wall-clock budget of the whole run")
    train.add_argument("--steps", type=int, help="updates (a cap with --minutes)")
    train.add_argument("--out", help="run directory (default out/tokenizer-KIND); an existing run resumes")
    train.add_argument("--data", help="image folder to train on instead of ShapeWorld (1 in 20 held out)")
    train.add_argument("--size", type=int, default=64, help="image side in pixels")
    train.add_argument("--train-images", type=int, default=4096, help="ShapeWorld training images")
    train.add_argument("--eval-images", type=int, default=256, help="ShapeWorld held-out images")
    train.add_argument("--eval-every", type=int, default=100, help="evaluate every N updates")
    train.add_argument("--codes", type=int, help="dual: codebook size (default 256)")
    train.add_argument("--search", choices=("cosine", "euclidean"),
                       help="dual: the residual loop's search distance (default cosine)")
    train.add_argument("--restart-every", type=int,
                       help="dual: restart unused codes every N updates (default 0: never)")
    train.add_argument("--scale-drop", type=float,
                       help="dual: share of the steps after the first dropped in each training forward "
                            "(default 0; NextFlow's 0.5 moves the image into the coarse steps)")
    train.add_argument("--truncate", type=float,
                       help="dual: share of training forwards that keep only the first j steps (default 0)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--warmup-steps", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--log-every", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    evaluate = sub.add_parser("eval", help="PSNR, SSIM and code usage on the held-out images")
    evaluate.add_argument("run_dir", metavar="DIR", help="run directory of `nx tokenizer train`")
    evaluate.add_argument("-n", "--num", type=int, help="held-out images (default: the run's)")
    evaluate.add_argument("--split", help="ShapeWorld split (default: the run's, test)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--json", help="write the report here (default DIR/eval.json)")
    evaluate.add_argument("--threads", type=int)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(run=cmd_eval)

    recon = sub.add_parser("reconstruct", help="PNG of held-out images beside their reconstructions")
    recon.add_argument("run_dir", metavar="DIR", help="run directory of `nx tokenizer train`")
    recon.add_argument("--out", required=True, help="PNG to write")
    recon.add_argument("-n", "--num", type=int, default=8, help="images to show")
    recon.add_argument("--columns", type=int, default=2)
    recon.add_argument("--split", help="ShapeWorld split (default: the run's held-out split)")
    recon.add_argument("--threads", type=int)
    recon.set_defaults(run=cmd_reconstruct)


def add_extract_command(data_commands: Any) -> None:
    """Register ``nx data extract`` on the ``nx data`` sub-parsers."""
    p = data_commands.add_parser("extract", help="pre-extract per-scale indices with a trained tokenizer")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="run directory of `nx tokenizer train`")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for index.json and the shards")
    p.add_argument("-n", "--num", type=int, help="images (default: the run's training set size)")
    p.add_argument("--split", default="train", help="ShapeWorld split to encode")
    p.add_argument("--shard-size", type=int, default=4096, help="samples per shard")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the self-correction draws")
    p.add_argument("--self-correction", action="store_true", help="also store self-correction input variants")
    p.add_argument("--token-fraction", type=float, default=0.6, help="self-correction: tokens per scale")
    p.add_argument("--top-k", type=int, default=8, help="self-correction: nearest codewords to sample from")
    p.add_argument("--variants", type=int, default=1, help="self-correction: variants per sample")
    p.add_argument("--threads", type=int)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_extract)


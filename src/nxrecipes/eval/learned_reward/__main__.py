"""``python -m nxrecipes.eval.learned_reward``: train a ``LearnedShapeReward``, save it, and print its
agreement with ``ShapeEvalReward`` on held-out ShapeWorld images (JSON)."""

from __future__ import annotations

import argparse
import json
import time

import torch

from nxrecipes.eval.learned_reward.train import measure_agreement, train_learned_reward


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nxrecipes.eval.learned_reward", description=__doc__)
    parser.add_argument("--out", help="checkpoint directory to write (save_pretrained); none: not saved")
    parser.add_argument("--steps", type=int, default=600,
                        help="optimiser steps (default 600: about 1.5 minutes on one idle CPU thread)")
    parser.add_argument("--minutes", type=float,
                        help="a wall-time budget as well (stops at whichever ends first; the result then "
                             "depends on the machine's speed)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=48, help="images per step")
    parser.add_argument("--eval-n", type=int, default=256, help="held-out images to measure on (0: skip)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = train_learned_reward(size=args.size, steps=args.steps, minutes=args.minutes, seed=args.seed,
                                 batch=args.batch, out_dir=args.out, progress=args.progress)
    report: dict = {"train_seconds": round(time.monotonic() - start, 1), "out": args.out}
    if args.eval_n:
        report |= measure_agreement(model, n=args.eval_n, size=args.size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Can nextflow_tiny memorise a handful of images? (issue 8) Train it on the first N training examples
(text-to-image, no CFG dropout, accumulated inputs, no self-correction) and report the teacher-forced
top-1 and NLL of their own codes per scale, on object and background cells (``code_fit``).

    python benchmarks/nextflow_overfit.py --tokenizer out/tok-s32-ds2-drop0.5 --variants plain grid-positions

A model that cannot fit 16 images on some scale cannot draw that scale from a prompt either. The
schedule is 1, 2, 4, 8, 16 (a tokenizer at downsample 2 on 32 px). Each
variant is one config change (``VARIANTS``); its run directory is ``--work/NAME``, the records
``benchmarks/results/nextflow/overfit/NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import environment  # noqa: E402
from nextflow_given_scales import code_fit, fit_table  # noqa: E402

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.nextflow.train import nextflow_training_tiny, train_nextflow  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "nextflow" / "overfit"
GRID16 = ((1, 1), (2, 2), (4, 4), (8, 8), (16, 16))
BASE = {"inputs": "accumulated", "self_correction_fraction": 0.0, "task_mix": (("t2i", 1.0),),
        "cfg_dropout": 0.0}
VARIANTS: dict[str, dict] = {
    "plain": {},
    "grid-positions": {"grid_positions": True},
    "refine2": {"refiner_blocks": 2},
}


def run(variant: str, tokenizer: Path, work: Path, examples: int, steps: int, *,
        schedule: tuple[tuple[int, int], ...] = GRID16, **changes) -> dict:
    """Train ``variant`` on ``examples`` images for ``steps`` updates; its record (``changes``: more
    config changes, for tests)."""
    load = os.getloadavg()[0]
    name = f"{variant}-n{examples}-s{steps}"
    cfg = nextflow_training_tiny(work / name, steps=steps, tokenizer_dir=tokenizer, samples=examples,
                                 schedule=schedule, **BASE, **VARIANTS[variant], **changes)
    summary = train_nextflow(cfg, progress=False)
    dataset = cfg.data.dataset(cfg.train.seed)
    fit = code_fit(cfg.run_dir, num=examples, records=[dataset[i] for i in range(examples)])
    print(f"\n{name}: {summary.step} updates on {examples} examples\n" + fit_table(fit), flush=True)
    return {"name": name, "variant": variant, "changes": VARIANTS[variant], "examples": examples,
            "steps": summary.step, "tokenizer": str(tokenizer), "code_fit": fit,
            "command": f"python benchmarks/nextflow_overfit.py --tokenizer {tokenizer} --variants {variant} "
                       f"--examples {examples} --steps {steps}",
            "environment": environment(load)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True, help="a trained dual-codebook tokenizer")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("out/nextflow-overfit"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        record = run(variant, args.tokenizer, args.work, args.examples, args.steps)
        atomic_write_text(args.out / f"{record['name']}.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

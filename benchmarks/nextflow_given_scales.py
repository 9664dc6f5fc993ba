"""At which scale a trained NextFlow loses the image (issue 8): ShapeEval of test-split images whose
first k scales are the real image's codes (``NextFlowPipeline.encode``) and whose remaining scales the
model samples, for every k from 0 (plain text-to-image) to all (the tokenizer's reconstruction).

    python benchmarks/nextflow_given_scales.py out/nextflow-quality/restart-64-acc-nosc-30 --greedy

A score that stays low until k reaches the last scale says the model cannot draw that scale even from
the true coarser ones. Also counted: objects the detector finds against objects in the scenes. The
record goes to ``benchmarks/results/nextflow/given-scales/NAME.json`` (``--out``) and a table is printed.
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

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld, to_pil  # noqa: E402
from nxrecipes.eval.shapeeval import evaluate  # noqa: E402
from nxrecipes.eval.shapeeval.detect import detect  # noqa: E402
from nxrecipes.nextflow.evaluate import default_sampling  # noqa: E402
from nxrecipes.nextflow.generate import ImageSampling  # noqa: E402
from nxrecipes.nextflow.pipeline import NextFlowPipeline  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "nextflow" / "given-scales"


def given_scales(pipeline: NextFlowPipeline, *, num: int, sampling: ImageSampling, seed: int = 1,
                 batch: int = 16) -> list[dict]:
    size = pipeline.image_tokenizer.downsample * pipeline.schedule.steps[-1][0]
    data = list(ShapeWorld(split="test", size=size, tasks=("t2i",), length=num, seed=seed))
    real = pipeline.encode([r.image for r in data])
    objects = sum(len(r.scene.objects) for r in data)
    rows = []
    for k in range(len(pipeline.schedule.steps) + 1):
        pictures = []
        for i in range(0, num, batch):
            chunk = data[i : i + batch]
            codes = pipeline.image_codes([r.prompt for r in chunk], sampling=sampling, seed=seed,
                                         given=[c[i : i + len(chunk)] for c in real[:k]])
            pictures += [to_pil(x) for x in pipeline.decode(codes)]
        report = evaluate(pictures, [r.spec for r in data])
        found = sum(len(detect(p)) for p in pictures)
        rows.append({"given_scales": k, "shapeeval": report.overall, "categories": report.accuracy,
                     "objects_found": found, "objects": objects})
        print(f"| {k} | {report.overall:.3f} | {found} / {objects} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a NextFlow run directory (nx nextflow train)")
    parser.add_argument("-n", "--num", type=int, default=64, help="test prompts")
    parser.add_argument("--greedy", action="store_true", help="top-k 1 and no guidance instead of the "
                        "evaluation sampler (default_sampling: cfg 3, top-k 8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    pipeline = NextFlowPipeline.from_run(args.run)
    steps = len(pipeline.schedule.steps)
    sampling = ImageSampling(top_k=1) if args.greedy else default_sampling(steps)
    print("| given scales | ShapeEval (test) | objects found / in the scenes |\n|---|---|---|", flush=True)
    rows = given_scales(pipeline, num=args.num, sampling=sampling)
    name = args.run.name + ("-greedy" if args.greedy else "")
    record = {"run": str(args.run), "sampling": "greedy" if args.greedy else "default_sampling",
              "num": args.num, "schedule": [list(s) for s in pipeline.schedule.steps], "rows": rows,
              "command": f"python benchmarks/nextflow_given_scales.py {args.run} -n {args.num}"
                         + (" --greedy" if args.greedy else ""),
              "environment": environment(load)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{name}.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

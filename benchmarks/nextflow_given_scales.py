"""At which scale a trained NextFlow loses the image (issue 8): ShapeEval of test-split images whose
first k scales are the real image's codes (``NextFlowPipeline.encode``) and whose remaining scales the
model samples, for every k from 0 (plain text-to-image) to all (the tokenizer's reconstruction).

    python benchmarks/nextflow_given_scales.py out/nextflow-quality/restart-64-acc-nosc-30 --greedy

A score that stays low until k reaches the last scale says the model cannot draw that scale even from
the true coarser ones. Also counted: objects the detector finds against objects in the scenes. A second
table gives, per scale, the teacher-forced top-1 accuracy and NLL of the real codes on object cells
(cells whose pixels show an object) and on background cells, against the NLL of always predicting the
codes' own frequencies there (what a model that learned nothing about the cell would get, had it been
told whether the cell is object or background: on the coarsest grids it cannot know, so there it is a
bound, not a baseline). The record goes to ``benchmarks/results/nextflow/given-scales/NAME.json``
(``--out``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from harness import environment  # noqa: E402

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld, to_pil  # noqa: E402
from nxrecipes.data.shapeworld.world import BACKGROUND  # noqa: E402
from nxrecipes.eval.shapeeval import evaluate  # noqa: E402
from nxrecipes.eval.shapeeval.detect import detect  # noqa: E402
from nxrecipes.nextflow.evaluate import default_sampling  # noqa: E402
from nxrecipes.nextflow.generate import ImageSampling  # noqa: E402
from nxrecipes.nextflow.pipeline import NextFlowPipeline  # noqa: E402
from nxrecipes.nextflow.sequence import collate  # noqa: E402
from nxrecipes.nextflow.train import load_run  # noqa: E402

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


def object_cells(image, grid: tuple[int, int]) -> torch.Tensor:
    """bool [h·w]: the cells of ``grid`` holding any pixel that differs from the background."""
    pixels = np.abs(np.asarray(image.convert("RGB"), dtype=np.float64) - np.array(BACKGROUND)).sum(-1) > 30
    mask = torch.from_numpy(pixels).float()[None, None]
    return F.adaptive_max_pool2d(mask, grid).flatten().bool()


@torch.no_grad()
def code_fit(run_dir: Path, *, num: int, seed: int = 1, batch: int = 16, records: list | None = None
             ) -> list[dict]:
    """Per scale: teacher-forced top-1 and NLL of the real codes on object and background cells, and
    the entropy of those codes' own frequencies (the NLL of a predictor that ignores the context).
    The examples: ``num`` test-split text-to-image records, or the given ``records``."""
    from nxrecipes.nextflow.data import ExampleBuilder

    run = load_run(run_dir)
    steps = list(run.schedule.steps)
    size = run.image_tokenizer.downsample * steps[-1][0]
    data = records if records is not None else list(
        ShapeWorld(split="test", size=size, tasks=("t2i",), length=num, seed=seed))
    num = len(data)
    builder = ExampleBuilder(text=run.text_tokenizer, vocabulary=run.vocabulary,
                             image_tokenizer=run.image_tokenizer, schedule=run.schedule,
                             self_correction_p=0.0, cfg_dropout=0.0, caption_inversion=0.0)
    lo = run.vocabulary.code_range[0]
    tokens = sum(h * w for h, w in steps)
    hits, nlls, targets = [], [], []
    for i in range(0, num, batch):
        chunk = data[i : i + batch]
        b = collate(builder.build(chunk, list(range(i, i + len(chunk)))), run.vocabulary)
        rows = run.vocabulary.is_code(b.targets)
        logits = run.model.code_logits(run.model(b)[rows])
        target = b.targets[rows] - lo
        nll = -torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
        hits.append((logits.argmax(-1) == target).view(len(chunk), tokens))
        nlls.append(nll.view(len(chunk), tokens))
        targets.append(target.view(len(chunk), tokens))
    hit, nll, target = torch.cat(hits), torch.cat(nlls), torch.cat(targets)
    out, start = [], 0
    for k, (h, w) in enumerate(steps):
        cells = slice(start, start + h * w)
        start += h * w
        objects = torch.stack([object_cells(r.image, (h, w)) for r in data])
        row = {"scale": k, "grid": [h, w]}
        for name, where in (("object", objects), ("background", ~objects)):
            codes = target[:, cells][where]
            if codes.numel() == 0:
                continue
            freq = torch.bincount(codes).float() / codes.numel()
            freq = freq[freq > 0]
            row[name] = {"cells": int(codes.numel()), "top1": hit[:, cells][where].float().mean().item(),
                         "nll": nll[:, cells][where].mean().item(),
                         "frequency_nll": max(0.0, -(freq * freq.log()).sum().item())}
        out.append(row)
    return out


def fit_table(rows: list[dict]) -> str:
    lines = ["| scale | grid | object cells: share | top-1 | NLL | frequency NLL | background: top-1 | NLL "
             "| frequency NLL |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, g = r.get("object"), r.get("background")
        share = o["cells"] / (o["cells"] + (g["cells"] if g else 0)) if o else 0.0
        keys = ("top1", "nll", "frequency_nll")
        cols = [f"{share:.2f}"] + ([f"{o[k]:.3f}" for k in keys] if o else [""] * 3)
        cols += [f"{g[k]:.3f}" for k in keys] if g else [""] * 3
        lines.append(f"| {r['scale']} | {r['grid'][0]}x{r['grid'][1]} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


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
    fit = code_fit(args.run, num=args.num)
    print("\n" + fit_table(fit), flush=True)
    name = args.run.name + ("-greedy" if args.greedy else "")
    record = {"run": str(args.run), "sampling": "greedy" if args.greedy else "default_sampling",
              "num": args.num, "schedule": [list(s) for s in pipeline.schedule.steps], "rows": rows,
              "code_fit": fit,
              "command": f"python benchmarks/nextflow_given_scales.py {args.run} -n {args.num}"
                         + (" --greedy" if args.greedy else ""),
              "environment": environment(load)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{name}.json", json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

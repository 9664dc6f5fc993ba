"""``make demo``: the ShapeWorld world, next-scale steps over it, and ShapeEval on ground truth.

Writes to ``--out`` (default ``out/demo``):
    shapeworld_t2i.png        text-to-image samples of the test split with their prompts
    shapeworld_tasks.png      editing, interleaved, in-context, world-knowledge and captioning samples
    next_scale_steps.png      one image at every step of NextFlow's 1:1 256-level schedule (Table 14),
                              and the multiscale 3D RoPE centres of a coarse step on the final grid
    shapeeval_ground_truth.json   ShapeEval of the generator's own images (test and heldout splits),
                              of its edits and of its captions: the ceiling a trained model aims at

    tokenizer/, nextflow/         the dual-codebook tokenizer and nextflow_tiny, trained on ShapeWorld
                              32 px for ``--tokenizer-minutes`` and ``--minutes`` (a run resumes)
    nextflow_samples.png      nextflow_tiny's images for held-out and test prompts
    nextflow_shapeeval.json   its ShapeEval per category (test, held-out), edit, caption and
                              world-knowledge (with and without thinking) scores

``--system nextstep1`` trains NextStep-1's autoencoder and ``nextstep1_tiny`` on ShapeWorld 32 px
text-to-image instead (``SHAPEWORLD_T2I``, its best recipe; ``autoencoder/``, ``nextstep1/``,
``nextstep1_samples.png``, ``nextstep1_shapeeval.json``: ShapeEval per category on the test and
held-out splits). ``--no-train`` stops after the ground truth.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nxcore.checkpoint import atomic_write_text
from nxcore.layout import DiscreteImage, SequenceLayout
from nxcore.position import MultiscaleRoPE3D
from nxcore.schedule import nextflow_schedule
from nxrecipes.data.shapeworld import ShapeWorld, render, to_float, to_pil
from nxrecipes.data.shapeworld.preview import preview_grid
from nxrecipes.data.shapeworld.scenes import random_scene
from nxrecipes.eval.shapeeval import caption_score, edit_score, evaluate
from nxrecipes.viz import side_by_side

TILE = 96


def next_scale_steps(size: int = 256, seed: int = 3) -> Image.Image:
    """A ShapeWorld image at every step of the 1:1 256-level schedule, plus RoPE centres."""
    scene = random_scene(np.random.default_rng(seed), num_objects=3, size=size)
    image = to_float(render(scene, size))
    schedule = nextflow_schedule("1:1", level=256)
    tiles = [to_pil(F.interpolate(image[None], size=hw, mode="area")[0]) for hw in schedule.steps]
    tiles.append(_rope_centres(to_pil(image), schedule, step=3))
    return side_by_side(tiles, height=TILE)


def _rope_centres(image: Image.Image, schedule, step: int) -> Image.Image:
    rope = MultiscaleRoPE3D(head_dim=16, image_offset="none")
    positions = rope.positions(SequenceLayout.of(DiscreteImage(schedule)))
    start, end = schedule.offsets[step], schedule.offsets[step + 1]
    tile = image.resize((TILE, TILE), Image.Resampling.LANCZOS)
    pen = ImageDraw.Draw(tile)
    for _, row, col in positions[start:end].tolist():  # a square grid spans [0, C] on both axes
        y, x = row / rope.range_factor * TILE, col / rope.range_factor * TILE
        pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(20, 20, 20))
    return tile


def score_ground_truth(n: int) -> dict[str, object]:
    """ShapeEval of the generator's own outputs: prompts per split, edits, captions."""
    result: dict[str, object] = {}
    for split in ("test", "heldout"):
        data = ShapeWorld(split=split, tasks=("t2i",), length=n, seed=1)
        samples = [data[i] for i in range(len(data))]
        report = evaluate([s.image for s in samples], [s.spec for s in samples])
        print(f"\nShapeEval of ground-truth images, {split} split")
        print(report.format_table())
        result[split] = report.to_dict()
    edits = ShapeWorld(split="test", tasks=("edit",), length=n // 2, seed=1)
    edit_ok = [edit_score(e.source_image, e.target_image, e.edit).ok for e in edits]
    captions = ShapeWorld(split="test", tasks=("captioning",), length=n // 2, seed=1)
    caption_ok = [caption_score(c.caption, c.image).exact for c in captions]
    result["edit_accuracy"] = sum(edit_ok) / len(edit_ok)
    result["caption_exact"] = sum(caption_ok) / len(caption_ok)
    print(f"\nedits scored correct: {result['edit_accuracy']:.3f} of {len(edit_ok)}; "
          f"captions exact: {result['caption_exact']:.3f} of {len(caption_ok)}")
    return result


def train_nextflow_demo(out: Path, *, tokenizer_minutes: float, minutes: float, num: int
                        ) -> dict[str, object]:
    """Train the dual-codebook tokenizer and ``nextflow_tiny`` on ShapeWorld 32 px (each run resumes
    if its folder exists), draw held-out and test prompts into a grid, and score with ShapeEval."""
    from nxrecipes.nextflow.evaluate import EvalSettings, evaluate_pipeline, sample_grid
    from nxrecipes.nextflow.pipeline import NextFlowPipeline
    from nxrecipes.nextflow.train import nextflow_training_tiny, train_nextflow
    from nxrecipes.tokenizer.train import dual_codebook_training_tiny, train_tokenizer

    print(f"\n[1/3] dual-codebook tokenizer, {tokenizer_minutes:g} min on ShapeWorld 32 px")
    tok = train_tokenizer(dual_codebook_training_tiny(out / "tokenizer", minutes=tokenizer_minutes, size=32))
    print(f"      held-out PSNR {tok.report.psnr:.1f} dB, codes in use {tok.report.codes['usage']:.0%}")
    print(f"\n[2/3] nextflow_tiny, {minutes:g} min")
    train_nextflow(nextflow_training_tiny(out / "nextflow", minutes=minutes, tokenizer_dir=out / "tokenizer"))
    print("\n[3/3] generating and scoring")
    pipeline = NextFlowPipeline.from_run(out / "nextflow")
    prompts = [r.prompt for split in ("heldout", "test")
               for r in ShapeWorld(split=split, size=32, tasks=("t2i",), length=8, seed=7)]
    grid = sample_grid(pipeline, prompts, title="nextflow_tiny: held-out (top) and test (bottom) prompts")
    grid.save(out / "nextflow_samples.png")
    report = evaluate_pipeline(pipeline, EvalSettings(n=num, n_edit=num // 2, n_caption=num // 2,
                                                      n_knowledge=num // 2))
    print(json.dumps(report, indent=2))
    return report


def train_nextstep1_demo(out: Path, *, tokenizer_minutes: float, minutes: float, num: int
                         ) -> dict[str, object]:
    """Train NextStep-1's autoencoder and ``nextstep1_tiny`` (``SHAPEWORLD_T2I``) on ShapeWorld 32 px
    text-to-image (each run resumes if its folder exists), draw held-out and test prompts into a
    grid, and score with ShapeEval."""
    from nxrecipes.nextstep1.evaluate import sample_grid, shapeeval
    from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
    from nxrecipes.nextstep1.train import SHAPEWORLD_T2I, nextstep1_training_tiny, train_nextstep1
    from nxrecipes.tokenizer.train import autoencoder_training_tiny, train_tokenizer

    size = SHAPEWORLD_T2I["size"]
    print(f"\n[1/3] autoencoder, {tokenizer_minutes:g} min on ShapeWorld {size} px")
    ae = train_tokenizer(autoencoder_training_tiny(out / "autoencoder", minutes=tokenizer_minutes, size=size))
    print(f"      held-out PSNR {ae.report.psnr:.1f} dB")
    print(f"\n[2/3] nextstep1_tiny, {minutes:g} min")
    cfg = nextstep1_training_tiny(out / "nextstep1", minutes=minutes, tokenizer_dir=ae.tokenizer_dir,
                                  **SHAPEWORLD_T2I)
    train_nextstep1(cfg)
    print("\n[3/3] generating and scoring")
    pipeline = NextStep1Pipeline.from_run(out / "nextstep1")
    prompts = [r.prompt for split in ("heldout", "test")
               for r in ShapeWorld(split=split, size=size, tasks=("t2i",), length=8, seed=7)]
    grid = sample_grid(pipeline, prompts, size=size,
                       title="nextstep1_tiny: held-out (top) and test (bottom) prompts")
    grid.save(out / "nextstep1_samples.png")
    report = {f"shapeeval_{split}": shapeeval(pipeline, split, num, size=size)
              for split in ("test", "heldout")}
    print(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="nx demo: ShapeWorld, ShapeEval, and NextFlow trained on it")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("-n", "--num", type=int, default=64, help="prompts scored per split")
    parser.add_argument("--tokenizer-minutes", type=float, default=2.5,
                        help="image tokenizer training budget")
    parser.add_argument("--minutes", type=float, default=4.0, help="nextflow_tiny / nextstep1_tiny budget")
    parser.add_argument("--eval-num", type=int, default=32, help="prompts per split scored for the model")
    parser.add_argument("--system", choices=("nextflow", "nextstep1"), default="nextflow",
                        help="which system to train and sample")
    parser.add_argument("--no-train", action="store_true", help="data pictures and ground truth only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    t2i = ShapeWorld(split="test", tasks=("t2i",), length=16, seed=0)
    preview_grid(t2i, title="ShapeWorld text-to-image (test split)").save(args.out / "shapeworld_t2i.png")
    tasks = ShapeWorld(split="test", length=6, seed=0,
                       tasks=("edit", "interleaved", "in_context", "world_knowledge", "captioning"))
    preview_grid(tasks, title="ShapeWorld tasks").save(args.out / "shapeworld_tasks.png")
    next_scale_steps().save(args.out / "next_scale_steps.png")

    scores = score_ground_truth(args.num)
    atomic_write_text(args.out / "shapeeval_ground_truth.json", json.dumps(scores, indent=2) + "\n")
    written = "{shapeworld_t2i,shapeworld_tasks,next_scale_steps}.png, shapeeval_ground_truth.json"
    if not args.no_train:
        train = train_nextflow_demo if args.system == "nextflow" else train_nextstep1_demo
        report = train(args.out, tokenizer_minutes=args.tokenizer_minutes, minutes=args.minutes,
                       num=args.eval_num)
        atomic_write_text(args.out / f"{args.system}_shapeeval.json", json.dumps(report, indent=2) + "\n")
        written += f", {args.system}_samples.png, {args.system}_shapeeval.json"
    print(f"\nwrote {args.out}/ {written} in {time.perf_counter() - started:.1f} s")
    return args.out


if __name__ == "__main__":
    main()

"""``nx nextflow train|generate|edit|caption|eval|grpo``.

    nx nextflow train --tokenizer TOKDIR --minutes 10 --out RUN      train nextflow_tiny on ShapeWorld
    torchrun --standalone --nproc_per_node=2 -m nxrecipes nextflow train --tokenizer TOKDIR --steps 500 \
        --parallel fsdp --out RUN                                     the same on 2 processes
    nx nextflow generate RUN --prompt "a red circle" ... --out grid.png [--cfg 3 --think]
    nx nextflow generate RUN --prompt "a red circle" --decoder diffusion   the optional diffusion decoder
    nx nextflow train-decoder RUN --minutes 12 --threads 1 [--denoiser dit] [--upsample --init DIR]
                                                                     train it (paper §2.3, §3.3)
    nx nextflow edit RUN --image a.png --instruction "make the circle blue" --out edited.png
    nx nextflow caption RUN --image a.png [b.png ...]
    nx nextflow eval RUN [--json report.json]                       ShapeEval, edit and caption scores
    nx nextflow grpo RUN --out TUNED --minutes 5 [--prefix-scales 2 --reward shapeeval]
                                                                     prefix-tuning GRPO (paper §3.2.5)

An existing ``--out`` run directory resumes. Images are written as PNG grids with their prompts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

__all__ = ["add_nextflow_commands"]


def _pipeline(args: argparse.Namespace):
    import torch

    from nxrecipes.nextflow.pipeline import NextFlowPipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    return NextFlowPipeline.from_run(args.run_dir, decoder_dir=getattr(args, "decoder_dir", None))


def _sampling(args: argparse.Namespace, pipeline) -> Any:
    from nxrecipes.nextflow.evaluate import default_sampling
    from nxrecipes.nextflow.generate import ImageSampling

    base = default_sampling(len(pipeline.schedule.steps), cfg=args.cfg)
    return ImageSampling(cfg=base.cfg, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)


def _write_grid(images, captions: list[str], out: str, title: str) -> None:
    from nxrecipes.data.shapeworld import to_pil
    from nxrecipes.viz import image_grid

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [to_pil(x) for x in images]
    grid = image_grid(pictures, captions, columns=min(8, len(captions)), tile=128, title=title)
    grid.save(path)
    print(f"wrote {path}")


def cmd_train(args: argparse.Namespace) -> None:
    from nxrecipes.nextflow.train import nextflow_training_tiny, train_nextflow

    given = (("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed),
             ("parallel", args.parallel))
    changes = {k: v for k, v in given if v is not None}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = nextflow_training_tiny(args.out, minutes=args.minutes, steps=args.steps,
                                 tokenizer_dir=args.tokenizer, **changes)
    summary = train_nextflow(cfg, progress=not args.quiet)
    print(f"trained {summary.step} updates; run directory {args.out}")


def cmd_generate(args: argparse.Namespace) -> None:
    pipeline = _pipeline(args)
    sampling = _sampling(args, pipeline)
    if args.think:
        traces, images = pipeline.think_then_draw(args.prompt, sampling=sampling, seed=args.seed,
                                                  decoder=args.decoder)
        captions = [f"{p} | thought: {t}" for p, t in zip(args.prompt, traces, strict=True)]
    else:
        images = pipeline.text_to_image(args.prompt, sampling=sampling, seed=args.seed, ratio=args.ratio,
                                        progress=not args.quiet, decoder=args.decoder)
        captions = list(args.prompt)
    _write_grid(images, captions, args.out, "nx nextflow generate")


def _open(paths: list[str]) -> list[PILImage.Image]:
    return [PILImage.open(p).convert("RGB") for p in paths]


def cmd_edit(args: argparse.Namespace) -> None:
    pipeline = _pipeline(args)
    if len(args.instruction) not in (1, len(args.image)):
        raise ValueError(f"got {len(args.image)} images and {len(args.instruction)} instructions; give one "
                         "instruction, or one per image")
    instructions = args.instruction * (len(args.image) if len(args.instruction) == 1 else 1)
    sources = _open(args.image)
    edited = pipeline.edit(sources, instructions, sampling=_sampling(args, pipeline), seed=args.seed,
                           decoder=args.decoder)
    before = pipeline.decode(pipeline.encode(sources), decoder=args.decoder, seed=args.seed)
    pictures = [x for pair in zip(before, edited, strict=True) for x in pair]
    captions = [c for i in instructions for c in ("source", i)]
    _write_grid(pictures, captions, args.out, "nx nextflow edit")


def cmd_caption(args: argparse.Namespace) -> None:
    pipeline = _pipeline(args)
    for path, caption in zip(args.image, pipeline.caption(_open(args.image)), strict=True):
        print(f"{path}: {caption}")


def cmd_eval(args: argparse.Namespace) -> None:
    from nxrecipes.nextflow.evaluate import EvalSettings, evaluate_pipeline

    pipeline = _pipeline(args)
    half = args.num // 2
    settings = EvalSettings(n=args.num, n_edit=half, n_caption=half, n_knowledge=half)
    report = evaluate_pipeline(pipeline, settings)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


def cmd_train_decoder(args: argparse.Namespace) -> None:
    from nxrecipes.nextflow.decoder_train import decoder_training_tiny, train_decoder

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    given = (("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed),
             ("num_steps", args.sample_steps), ("prediction", args.prediction))
    changes = {k: v for k, v in given if v is not None}
    cfg = decoder_training_tiny(args.run_dir, args.out, denoiser=args.denoiser, upsample=args.upsample,
                                init=args.init, minutes=args.minutes, steps=args.steps, images=args.images,
                                **changes)
    summary = train_decoder(cfg, progress=not args.quiet)
    print(f"trained {summary['step']} updates (loss {summary['loss']}); decoder directory {summary['out']}")


def cmd_grpo(args: argparse.Namespace) -> None:
    from nxrecipes.nextflow.grpo import grpo_tiny, train_grpo
    from nxrecipes.train.plot import plot_run

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    given = {"batch_size": args.prompts, "group_size": args.group_size, "prefix_scales": args.prefix_scales,
             "reward": args.reward, "lr": args.lr, "beta": args.beta, "clip": args.clip, "seed": args.seed,
             "updates_per_rollout": args.updates_per_rollout, "cfg": args.cfg}
    changes = {k: v for k, v in given.items() if v is not None}
    if "prefix_scales" in changes and changes["prefix_scales"] != "all":
        changes["prefix_scales"] = int(changes["prefix_scales"])
    cfg = grpo_tiny(args.out, start=args.run_dir, minutes=args.minutes, steps=args.steps, **changes)
    summary = train_grpo(cfg, progress=not args.quiet)
    curves = plot_run(args.out, keys=["reward", "reward/std", "kl", "clip_fraction", "groups/flat"])
    print(f"tuned {summary.step} updates; run directory {args.out}; reward curves {curves}")


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cfg", type=float, default=3.0, help="guidance weight on every scale after the first")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN", help="run directory of `nx nextflow train`")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _decoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", choices=("vq", "diffusion"), default="vq",
                   help="codes to pixels: the tokenizer's VQ decoder (default) or the trained diffusion "
                   "decoder")
    p.add_argument("--decoder-dir", metavar="DIR",
                   help="the diffusion decoder to use (default RUN/diffusion_decoder; e.g. "
                   "RUN/diffusion_decoder_2x)")


def add_nextflow_commands(commands: Any) -> None:
    """Register ``nx nextflow ...`` on the ``nx`` sub-parsers."""
    parser = commands.add_parser("nextflow", help="train NextFlow and generate, edit, caption with it")
    sub = parser.add_subparsers(dest="nextflow_command", required=True)

    train = sub.add_parser("train", help="train nextflow_tiny on ShapeWorld with a trained tokenizer")
    train.add_argument("--tokenizer", required=True, metavar="DIR",
                       help="run directory of `nx tokenizer train --kind dual` (or --kind vq)")
    train.add_argument("--out", required=True, help="run directory; an existing run resumes")
    train.add_argument("--minutes", type=float, help="wall-clock budget")
    train.add_argument("--steps", type=int, help="updates (a cap with --minutes)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--parallel", choices=("none", "ddp", "fsdp"),
                       help="under torchrun: DistributedDataParallel or FSDP2 (default none)")
    train.add_argument("--threads", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    gen = sub.add_parser("generate", help="text-to-image: a PNG grid with the prompts")
    _run_arg(gen)
    gen.add_argument("--prompt", nargs="+", required=True)
    gen.add_argument("--out", default="out/nextflow-generate.png")
    gen.add_argument("--think", action="store_true",
                     help="write a reasoning trace first (think-before-drawing)")
    gen.add_argument("--ratio", type=float, help="height / width in [0.25, 4] (Table 14); default square")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _decoder_args(gen)
    _sampling_args(gen)
    gen.set_defaults(run=cmd_generate)

    edit = sub.add_parser("edit", help="edit images by instruction: a PNG of sources and results")
    _run_arg(edit)
    edit.add_argument("--image", nargs="+", required=True, help="PNG(s) at the run's image size")
    edit.add_argument("--instruction", nargs="+", required=True)
    edit.add_argument("--out", default="out/nextflow-edit.png")
    _decoder_args(edit)
    _sampling_args(edit)
    edit.set_defaults(run=cmd_edit)

    cap = sub.add_parser("caption", help="print a caption per image")
    _run_arg(cap)
    cap.add_argument("--image", nargs="+", required=True)
    cap.set_defaults(run=cmd_caption)

    ev = sub.add_parser("eval", help="ShapeEval per category, edit and caption scores (JSON)")
    _run_arg(ev)
    ev.add_argument("-n", "--num", type=int, default=64, help="prompts per split")
    ev.add_argument("--json", help="also write the report here")
    ev.set_defaults(run=cmd_eval)

    dec = sub.add_parser("train-decoder", help="train the optional diffusion decoder of a run (paper §2.3)")
    _run_arg(dec)
    dec.add_argument("--out", help="decoder directory (default RUN/diffusion_decoder, "
                     "RUN/diffusion_decoder_2x with --upsample); an existing one resumes")
    dec.add_argument("--denoiser", choices=("unet", "dit"), default="unet", help="the denoiser network")
    dec.add_argument("--prediction", choices=("velocity", "data"),
                     help="the network predicts the velocity (default) or the clean image")
    dec.add_argument("--upsample", action="store_true", help="a 2x decoder (the second stage; see --init)")
    dec.add_argument("--init", metavar="DIR", help="start from this trained decoder's weights")
    dec.add_argument("--minutes", type=float, help="wall-clock budget")
    dec.add_argument("--steps", type=int, help="updates (a cap with --minutes)")
    dec.add_argument("--images", type=int, default=4096, help="ShapeWorld training images (encoded once)")
    dec.add_argument("--batch-size", type=int)
    dec.add_argument("--lr", type=float)
    dec.add_argument("--seed", type=int)
    dec.add_argument("--sample-steps", type=int, help="Euler steps when decoding (default 25)")
    dec.add_argument("--quiet", action="store_true", help="no progress bar")
    dec.set_defaults(run=cmd_train_decoder)

    grpo = sub.add_parser("grpo", help="prefix-tuning GRPO of a trained run on a reward (default ShapeEval)")
    _run_arg(grpo)
    grpo.add_argument("--out", required=True, help="the tuned run directory (an existing one resumes)")
    grpo.add_argument("--minutes", type=float, help="wall-clock budget")
    grpo.add_argument("--steps", type=int, help="updates (a cap with --minutes; default 100)")
    grpo.add_argument("--prefix-scales", metavar="M|all",
                      help="train the policies of the first M scales only (default 8; 'all' for every scale)")
    grpo.add_argument("--reward", help="reward spec: shapeeval (default), shapeeval-strict, "
                      "shapeeval:counting=1,position=2, learned=DIR, or weighted sums like "
                      "0.7*shapeeval+0.3*learned=DIR")
    grpo.add_argument("--prompts", type=int, help="prompts per update (default 4)")
    grpo.add_argument("--group-size", type=int, help="samples per prompt, G (default 8)")
    grpo.add_argument("--updates-per-rollout", type=int, help="updates per rollout, GRPO's mu (default 1)")
    grpo.add_argument("--lr", type=float, help="AdamW learning rate (default 1e-5)")
    grpo.add_argument("--beta", type=float, help="KL weight to the starting model (default 0.01)")
    grpo.add_argument("--clip", type=float, help="ratio clip epsilon (default 0.2)")
    grpo.add_argument("--cfg", type=float, help="rollout guidance on every scale after the first (default 3)")
    grpo.add_argument("--seed", type=int)
    grpo.add_argument("--quiet", action="store_true", help="no progress bar")
    grpo.set_defaults(run=cmd_grpo)

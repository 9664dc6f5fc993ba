"""``nx nextstep1 train|generate|edit``.

    nx nextstep1 train --tokenizer TOKDIR --minutes 10 --out RUN     train nextstep1_tiny on ShapeWorld
    nx nextstep1 generate --run RUN --prompt "a red circle" --prompt "two squares" --hw 64 64 --cfg 3
    nx nextstep1 generate --official ~/NextStep-1-Large --vae ~/NextStep-1-f8ch16-Tokenizer \
        --prompt "A frosty beer mug" --hw 512 512 --cfg 7.5 --steps 50 --use-norm --out beer.png
    nx nextstep1 edit --official ~/NextStep-1-Large-Edit --vae ~/NextStep-1-f8ch16-Tokenizer \
        --image dog.png --instruction "Add a pirate hat" --hw 512 512 --cfg 7.5 --cfg-img 2 --shift 3.2 \
        --steps 50 --use-norm --negative "Copy original image." --out edited.png

Upstream's example settings: text-to-image cfg 7.5, shift 1, 50 steps, --use-norm, positive prompt
"masterpiece, film grained, best quality."; editing cfg 7.5, cfg-img 2, shift 3.2, 50 steps,
--use-norm, negative prompt "Copy original image.". Images are written as PNG grids with their prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

__all__ = ["add_nextstep1_commands"]

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _pipeline(args: argparse.Namespace):
    import torch

    from nxrecipes.nextstep1.pipeline import NextStep1Pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run_dir is not None:
        if args.vae is not None:
            raise ValueError("--vae goes with --official; a --run directory holds its own image tokenizer")
        return NextStep1Pipeline.from_run(args.run_dir)
    if args.vae is None:
        raise ValueError(
            "--official needs --vae VAE_DIR: the official NextStep-1-f8ch16-Tokenizer directory "
            "(config.json and checkpoint.pt)"
        )
    dtype = getattr(torch, DTYPES[args.dtype])
    return NextStep1Pipeline.from_official(args.official, args.vae, dtype=dtype, device=args.device)


def _sampling(args: argparse.Namespace) -> Any:
    from nxrecipes.nextstep1.generate import ImageSampling

    return ImageSampling(
        cfg=args.cfg, cfg_img=getattr(args, "cfg_img", 1.0), cfg_schedule=args.schedule,
        timesteps_shift=args.shift, num_sampling_steps=args.steps, timesteps=args.timesteps,
        method=args.method, use_norm=args.use_norm, noise=args.noise,
    )


def _write_grid(pictures: list[PILImage.Image], captions: list[str], out: str, title: str,
                columns: int) -> None:
    from nxrecipes.viz import image_grid

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tile = max(128, min(256, max(pictures[0].size)))
    grid = image_grid(pictures, captions, columns=min(columns, len(captions)), tile=tile, title=title)
    grid.save(path)
    print(f"wrote {path}")


def _to_pil(images) -> list[PILImage.Image]:
    from nxrecipes.data.shapeworld import to_pil

    return [to_pil(x) for x in images]


def cmd_train(args: argparse.Namespace) -> None:
    from nxrecipes.nextstep1.train import nextstep1_training_tiny, train_nextstep1

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = nextstep1_training_tiny(args.out, minutes=args.minutes, steps=args.steps,
                                  tokenizer_dir=args.tokenizer)
    summary = train_nextstep1(cfg, progress=not args.quiet)
    step = getattr(summary, "step", None)
    print(f"trained {'' if step is None else f'{step} updates; '}run directory {args.out}")


def cmd_generate(args: argparse.Namespace) -> None:
    pipeline = _pipeline(args)
    images = pipeline.text_to_image(
        args.prompt, hw=tuple(args.hw), num_images_per_caption=args.num_images, positive_prompt=args.positive,
        negative_prompt=args.negative, sampling=_sampling(args), seed=args.seed, progress=not args.quiet,
    )
    captions = [p for p in args.prompt for _ in range(args.num_images)]
    _write_grid(_to_pil(images), captions, args.out, "nx nextstep1 generate", columns=max(4, args.num_images))


def cmd_edit(args: argparse.Namespace) -> None:
    if len(args.instruction) not in (1, len(args.image)):
        raise ValueError(f"got {len(args.image)} images and {len(args.instruction)} instructions; give one "
                         "instruction, or one per image")
    instructions = args.instruction * (len(args.image) if len(args.instruction) == 1 else 1)
    sources = [PILImage.open(p).convert("RGB") for p in args.image]
    hw = None if args.hw is None else tuple(args.hw)
    if hw is not None:
        sources = [s.resize((hw[1], hw[0]), PILImage.Resampling.LANCZOS) for s in sources]
    pipeline = _pipeline(args)
    edited = pipeline.edit(
        sources, instructions, hw=hw, num_images_per_caption=args.num_images, positive_prompt=args.positive,
        negative_prompt=args.negative, sampling=_sampling(args), seed=args.seed, progress=not args.quiet,
    )
    outputs = _to_pil(edited)
    pictures, captions = [], []
    for i, (source, instruction) in enumerate(zip(sources, instructions, strict=True)):
        pictures.append(source)
        captions.append("source")
        pictures += outputs[i * args.num_images : (i + 1) * args.num_images]
        captions += [instruction] * args.num_images
    _write_grid(pictures, captions, args.out, "nx nextstep1 edit", columns=1 + args.num_images)


def _model_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", dest="run_dir", metavar="DIR", help="run directory of `nx nextstep1 train`")
    which.add_argument("--official", metavar="MODEL_DIR",
                       help="official checkpoint directory (e.g. NextStep-1-Large); needs --vae")
    p.add_argument("--vae", metavar="VAE_DIR", help="official NextStep-1-f8ch16-Tokenizer directory")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16", help="--official weights (default bf16)")
    p.add_argument("--device", help="--official device (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _sampling_args(p: argparse.ArgumentParser, *, cfg_img: bool) -> None:
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--positive", help="appended to every prompt (upstream: 'masterpiece, film grained, "
                                      "best quality.')")
    p.add_argument("--negative", help="the unconditional rows' prompt (default '')")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="text guidance on velocities (upstream 7.5; 1 = off)")
    if cfg_img:
        p.add_argument("--cfg-img", type=float, default=1.0,
                       help="image guidance, 3-way CFG (upstream 2.0; 1 = off)")
    p.add_argument("--schedule", choices=("constant", "linear"), default="constant",
                   help="guidance over the image tokens: constant, or linear decay to 1")
    p.add_argument("--steps", type=int, default=20,
                   help="flow-matching steps per token (upstream example 50)")
    p.add_argument("--shift", type=float, default=1.0, help="timesteps shift (upstream edit example 3.2)")
    p.add_argument("--timesteps", choices=("nextstep1", "clean"), default="nextstep1",
                   help="time grid: upstream's (official checkpoints) or one ending at t = 1")
    p.add_argument("--method", choices=("sde", "ode"), default="sde")
    p.add_argument("--use-norm", action="store_true",
                   help="LayerNorm every sampled token (upstream examples)")
    p.add_argument("--noise", choices=("tiled", "independent"), default="tiled",
                   help="tiled: upstream's noise shared across prompts; independent: per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_nextstep1_commands(commands: Any) -> None:
    """Register ``nx nextstep1 ...`` on the ``nx`` sub-parsers."""
    parser = commands.add_parser("nextstep1", help="train NextStep-1, generate and edit with it")
    sub = parser.add_subparsers(dest="nextstep1_command", required=True)

    train = sub.add_parser("train", help="train nextstep1_tiny on ShapeWorld with a trained autoencoder")
    train.add_argument("--tokenizer", required=True, metavar="DIR",
                       help="run directory of the image tokenizer (`nx tokenizer train --kind ae`)")
    train.add_argument("--out", required=True, help="run directory; an existing run resumes")
    train.add_argument("--minutes", type=float, help="wall-clock budget")
    train.add_argument("--steps", type=int, help="updates (a cap with --minutes)")
    train.add_argument("--threads", type=int)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=cmd_train)

    gen = sub.add_parser("generate", help="text-to-image: a PNG grid with the prompts")
    _model_args(gen)
    gen.add_argument("--prompt", action="extend", nargs="+", required=True,
                     help="one or more prompts; repeat the flag for more")
    gen.add_argument("--hw", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                     help="output size in pixels, multiples of the tokenizer's downsample (16 official)")
    gen.add_argument("--out", default="out/nextstep1-generate.png")
    _sampling_args(gen, cfg_img=False)
    gen.set_defaults(run=cmd_generate)

    edit = sub.add_parser("edit", help="edit images by instruction: a PNG of sources and results")
    _model_args(edit)
    edit.add_argument("--image", action="extend", nargs="+", required=True, help="source image file(s)")
    edit.add_argument("--instruction", action="extend", nargs="+", required=True,
                      help="one instruction for every image, or one per image")
    edit.add_argument("--hw", type=int, nargs=2, metavar=("H", "W"),
                      help="resize the sources to this size and generate at it (default: the sources' size)")
    edit.add_argument("--out", default="out/nextstep1-edit.png")
    _sampling_args(edit, cfg_img=True)
    edit.set_defaults(run=cmd_edit)

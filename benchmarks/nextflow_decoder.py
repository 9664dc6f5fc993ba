"""VQ decoder versus the optional diffusion decoder of NextFlow (paper §2.3, Figs. 21-23) on ShapeWorld.

The same codes are decoded by every decoder:

- reconstruction: ``--recon`` test-split images (32 px) encoded by the run's frozen tokenizer; PSNR
  and SSIM against the original (the 2x decoder against the 64 px rendering of the same scene, and,
  area-downsampled to 32 px, against the 32 px original), ShapeEval of the decoded images against
  their prompts, and PSNR of each diffusion decode against the VQ decode (how far it moves off it);
- generation: ``--gen`` test-split prompts, codes sampled once by the run's NextFlow (the evaluation
  sampler: CFG 3, top-k 8), decoded by each decoder (the prompt is the diffusion decoders' caption);
  ShapeEval of each.

    .venv/bin/python benchmarks/nextflow_decoder.py --run out/nextflow-quality/main-30 \
        --decoder unet=out/nextflow-decoder/unet --decoder dit=out/nextflow-decoder/dit \
        --decoder unet-2x=out/nextflow-decoder/unet-2x --threads 1

Writes ``benchmarks/results/nextflow-decoder/``: ``results.json``, ``summary.md`` (the table) and
``side_by_side.png`` (original | VQ | each diffusion decoder, reconstruction rows then generated rows).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nxcore.decoder import ImageDecoder, VQDecoder
from nxrecipes.data.shapeworld import ShapeWorld, to_pil
from nxrecipes.eval.shapeeval import evaluate
from nxrecipes.nextflow.decoder_train import load_decoder
from nxrecipes.nextflow.evaluate import default_sampling
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.tokenizer.data import to_model
from nxrecipes.tokenizer.metrics import psnr, ssim
from nxrecipes.viz import image_grid

OUT = Path(__file__).parent / "results" / "nextflow-decoder"


def decode_all(
    decoder: ImageDecoder,
    tokenizer,
    codes: list[torch.Tensor],
    schedule,
    captions: list[str],
    batch: int,
    seed: int,
) -> tuple[torch.Tensor, float]:
    """Images in [-1, 1] and seconds per image."""
    out = []
    started = time.perf_counter()
    for s in range(0, codes[0].shape[0], batch):
        part = [c[s : s + batch] for c in codes]
        g = torch.Generator().manual_seed(seed + s)
        out.append(decoder.decode(tokenizer, part, schedule, captions=captions[s : s + batch], generator=g))
    images = torch.cat(out)
    return images, (time.perf_counter() - started) / images.shape[0]


def shapeeval(images: torch.Tensor, specs) -> float:
    return evaluate([to_pil((x + 1) / 2) for x in images], specs).overall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default="out/nextflow-quality/main-30")
    parser.add_argument("--decoder", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--recon", type=int, default=256)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--steps", type=int, default=25, help="Euler steps of the diffusion decoders")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipeline = NextFlowPipeline.from_run(args.run)
    tokenizer, schedule = pipeline.image_tokenizer, pipeline.schedule
    decoders: dict[str, ImageDecoder] = {"vq": VQDecoder()}
    dirs = {}
    for item in args.decoder:
        name, _, path = item.partition("=")
        decoders[name] = load_decoder(path)
        dirs[name] = path
    size = tokenizer.downsample * schedule.steps[-1][0]
    results: dict = {
        "run": args.run,
        "decoders": dirs,
        "sampling_steps": args.steps,
        "recon_images": args.recon,
        "gen_prompts": args.gen,
        "threads": args.threads,
        "recon": {},
        "gen": {},
    }

    def decode(name, codes, captions):
        d = decoders[name]
        if name == "vq":
            return decode_all(d, tokenizer, codes, schedule, captions, args.batch, 0)
        with torch.no_grad():
            images, per = [], 0.0
            started = time.perf_counter()
            for s in range(0, codes[0].shape[0], args.batch):
                part = [c[s : s + args.batch] for c in codes]
                g = torch.Generator().manual_seed(s)
                images.append(
                    d.decode(
                        tokenizer,
                        part,
                        schedule,
                        captions=captions[s : s + args.batch],
                        generator=g,
                        num_steps=args.steps,
                    )
                )
            images = torch.cat(images)
            per = (time.perf_counter() - started) / images.shape[0]
        return images, per

    # --- reconstruction ----------------------------------------------------------------------------
    rows = list(ShapeWorld(split="test", size=size, tasks=("t2i",), length=args.recon, seed=args.seed))
    big = list(ShapeWorld(split="test", size=2 * size, tasks=("t2i",), length=args.recon, seed=args.seed))
    originals = torch.stack([to_model(r.image) for r in rows])
    originals2x = torch.stack([to_model(r.image) for r in big])
    specs = [r.spec for r in rows]
    prompts = [r.prompt for r in rows]
    with torch.no_grad():
        codes = tokenizer.encode(originals, schedule)
    results["recon"]["original"] = {"shapeeval": shapeeval(originals, specs)}
    recon_images = {}
    for name in decoders:
        images, per = decode(name, codes, prompts)
        recon_images[name] = images
        if images.shape[-1] == size:
            row = {
                "psnr": float(psnr(images, originals).mean()),
                "ssim": float(ssim(images, originals).mean()),
            }
        else:
            down = F.interpolate(images, size=(size, size), mode="area")
            row = {
                "psnr": float(psnr(images, originals2x).mean()),
                "ssim": float(ssim(images, originals2x).mean()),
                "psnr_down": float(psnr(down, originals).mean()),
                "ssim_down": float(ssim(down, originals).mean()),
            }
        if name != "vq":
            vq = recon_images["vq"]
            same = (
                images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")
            )
            row["psnr_vs_vq"] = float(psnr(same, vq).mean())
        row["shapeeval"] = shapeeval(images, specs)
        row["seconds_per_image"] = per
        row["size"] = images.shape[-1]
        results["recon"][name] = row
        print("recon", name, row, flush=True)

    # --- generation ----------------------------------------------------------------------------------
    gen_rows = list(ShapeWorld(split="test", size=size, tasks=("t2i",), length=args.gen, seed=args.seed + 1))
    gen_prompts = [r.prompt for r in gen_rows]
    sampling = default_sampling(len(schedule.steps))
    gen_codes: list[list[torch.Tensor]] = []
    for s in range(0, args.gen, 16):
        gen_codes.append(pipeline.image_codes(gen_prompts[s : s + 16], sampling=sampling, seed=args.seed))
    codes_g = [torch.cat([c[k] for c in gen_codes]) for k in range(len(schedule.steps))]
    gen_specs = [r.spec for r in gen_rows]
    gen_images = {}
    for name in decoders:
        images, per = decode(name, codes_g, gen_prompts)
        gen_images[name] = images
        row = {"shapeeval": shapeeval(images, gen_specs), "seconds_per_image": per}
        if name != "vq":
            same = (
                images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")
            )
            row["psnr_vs_vq"] = float(psnr(same, gen_images["vq"]).mean())
        results["gen"][name] = row
        print("gen", name, row, flush=True)

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    # --- the side-by-side picture ------------------------------------------------------------------
    tile = 2 * size
    pictures, captions = [], []
    names = list(decoders)
    for i in range(6):
        pictures.append(to_pil((originals2x[i] + 1) / 2))
        captions.append("original (64 px render)" if i == 0 else "original")
        for name in names:
            pictures.append(to_pil((recon_images[name][i] + 1) / 2))
            captions.append(f"recon {name}")
    for i in range(6):
        pictures.append(to_pil(torch.ones(3, size, size)))
        captions.append(gen_prompts[i])
        for name in names:
            pictures.append(to_pil((gen_images[name][i] + 1) / 2))
            captions.append(f"gen {name}")
    grid = image_grid(
        pictures,
        captions,
        columns=len(names) + 1,
        tile=tile * 2,
        caption_lines=3,
        title="NextFlow decoders on the same codes: original | " + " | ".join(names),
    )
    grid.save(out / "side_by_side.png")

    # --- the table ---------------------------------------------------------------------------------
    lines = [
        "| decoder | recon PSNR (dB) | recon SSIM | recon PSNR vs VQ | recon ShapeEval | gen ShapeEval | "
        "gen PSNR vs VQ | s / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines.append(f"| original | - | - | - | {results['recon']['original']['shapeeval']:.3f} | - | - | - |")
    for name in names:
        r, g = results["recon"][name], results["gen"][name]
        p = f"{r['psnr']:.2f}" + (f" ({r['psnr_down']:.2f} at 32 px)" if "psnr_down" in r else "")
        s = f"{r['ssim']:.4f}" + (f" ({r['ssim_down']:.4f})" if "ssim_down" in r else "")
        vq = f"{r['psnr_vs_vq']:.2f}" if "psnr_vs_vq" in r else "-"
        gvq = f"{g['psnr_vs_vq']:.2f}" if "psnr_vs_vq" in g else "-"
        lines.append(
            f"| {name} ({r['size']} px) | {p} | {s} | {vq} | {r['shapeeval']:.3f} | {g['shapeeval']:.3f} | "
            f"{gvq} | {r['seconds_per_image']:.4f} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")  # summary.md quotes it
    print("\n".join(lines))


if __name__ == "__main__":
    main()

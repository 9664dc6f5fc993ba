"""How learnable a trained discrete tokenizer's codes are, beside how well it reconstructs (issue 8).

    python benchmarks/tokenizer_codes.py out/tok-dual-32 out/tok-eu-256 out/tok-eu-64

For each tokenizer run directory, on ``--num`` test-split ShapeWorld images at the run's size: PSNR
of the reconstruction, ShapeEval of the reconstructions against the images' prompts (the ceiling a
generator over these codes can reach), the unigram entropy of every step's codes (nats per code; its
sum over an image's codes is what a model that learned nothing but code frequencies would pay), and
how many distinct codes a flat background image gets per step (1 is ideal: nothing to encode), and
the PSNR of the image decoded from the first k steps alone, k = 1..K (how much of the image the coarse
steps carry: a next-scale generator draws each step's codes independently given the coarser ones, so a
tokenizer that leaves the image to its last step leaves it to independent draws), and ShapeEval of
the images whose last step is redrawn from that step's code frequencies (seeded): the score of a
generator that gets every coarser step right and learned nothing at the last. And, on ``--info-num``
training images, how much a step's codes say about the prompt: the mutual information between a cell's
code and the colour words of its image's prompt, averaged over the step's cells (nats per code,
Miller-Madow corrected): what a generator can take from the prompt at that step, cell by cell.
Prints a table; writes ``codes.json`` and ``codes.md`` to ``--out`` (``benchmarks/results/tokenizers``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from harness import environment, markdown, write_json  # noqa: E402

from nxcore.tokenizer.multiscale import code_usage  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld  # noqa: E402
from nxrecipes.data.shapeworld.render import to_float, to_pil  # noqa: E402
from nxrecipes.data.shapeworld.world import BACKGROUND, COLOURS  # noqa: E402
from nxrecipes.eval.shapeeval import evaluate  # noqa: E402
from nxrecipes.tokenizer.train import load_run  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tokenizers"


def _entropies(counts: torch.Tensor) -> torch.Tensor:
    """Miller-Madow entropy (nats) of each row of ``counts`` [rows, values]; 0 for an empty row."""
    n = counts.sum(-1, keepdim=True).clamp(min=1)
    p = counts / n
    plugin = -(p * p.clamp(min=1e-30).log()).sum(-1)
    return plugin + ((counts > 0).sum(-1) - 1).clamp(min=0) / (2 * n[:, 0])


@torch.no_grad()
def prompt_information(tokenizer, schedule, size: int, num: int, batch: int = 256) -> list[float]:
    """Per step: mean over its cells of I(cell's code; the prompt's colour words), in nats."""
    records = list(ShapeWorld(split="train", size=size, tasks=("t2i",), length=num, seed=3))
    keys = [tuple(c for c in COLOURS if c in r.prompt.split()) for r in records]  # "coloured" holds "red"
    index = {key: i for i, key in enumerate(sorted(set(keys)))}
    group = torch.tensor([index[k] for k in keys])
    groups, codes_k = int(group.max()) + 1, tokenizer.codebook_size
    steps = [[] for _ in schedule.steps]
    for i in range(0, num, batch):
        images = torch.stack([to_float(r.image) for r in records[i : i + batch]]) * 2 - 1
        for k, c in enumerate(tokenizer.encode(images, schedule)):
            steps[k].append(c.flatten(1))
    out = []
    for parts in steps:
        codes = torch.cat(parts)  # [num, cells]
        cells = codes.shape[1]
        cell = torch.arange(cells)[None, :]
        marginal = torch.bincount((cell * codes_k + codes).flatten(), minlength=cells * codes_k)
        joint = torch.bincount(((cell * groups + group[:, None]) * codes_k + codes).flatten(),
                               minlength=cells * groups * codes_k).view(cells, groups, codes_k).float()
        weight = joint.sum(-1) / num  # [cells, groups]
        conditional = (weight * _entropies(joint.view(-1, codes_k)).view(cells, groups)).sum(-1)
        info = _entropies(marginal.view(cells, codes_k).float()) - conditional
        out.append(round(float(info.mean()), 3))
    return out


@torch.no_grad()
def measure(run_dir: Path, num: int, info_num: int = 4000) -> dict:
    run = load_run(run_dir)
    tokenizer, schedule = run.model, run.objective.schedule
    size = run.config.data.size
    records = list(ShapeWorld(split="test", size=size, tasks=("t2i",), length=num, seed=11))
    images = torch.stack([to_float(r.image) for r in records]) * 2 - 1
    flat = to_float(Image.new("RGB", (size, size), BACKGROUND))[None] * 2 - 1
    codes = tokenizer.encode(images, schedule)
    prefixes = [tokenizer.decode(codes[:k], schedule) for k in range(1, len(codes) + 1)]
    prefix_mse = [float((x - images).square().mean()) for x in prefixes]
    recon, mse = prefixes[-1], prefix_mse[-1]
    shapeeval = evaluate([to_pil((x + 1) / 2) for x in recon], [r.spec for r in records]).overall
    last = codes[-1]
    frequencies = torch.bincount(last.reshape(-1), minlength=tokenizer.codebook_size).float()
    drawn = torch.multinomial(frequencies, last.numel(), replacement=True,
                              generator=torch.Generator().manual_seed(0)).view_as(last)
    redrawn = tokenizer.decode([*codes[:-1], drawn], schedule)
    redrawn_shapeeval = evaluate([to_pil((x + 1) / 2) for x in redrawn], [r.spec for r in records]).overall
    entropy = code_usage(codes, tokenizer.codebook_size).perplexity.log().tolist()
    cells = [h * w for h, w in schedule.steps]
    t = tokenizer.config
    return {
        "run": str(run_dir), "size": size, "codebook_size": tokenizer.codebook_size,
        "search": "cosine" if getattr(t, "quantizer", t).normalize else "euclidean",  # VQ: under quantizer
        "restart_every": getattr(t, "restart_every", 0), "scale_drop": getattr(t, "scale_drop", 0.0),
        "truncate": getattr(run.objective, "truncate", 0.0), "train_seconds": _train_seconds(run_dir),
        "psnr": 10 * math.log10(4 / mse), "recon_shapeeval": shapeeval,
        "entropy_per_step": [round(e, 3) for e in entropy],
        "nats_per_image": sum(e * n for e, n in zip(entropy, cells, strict=True)),
        "flat_distinct_per_step": [int(c.unique().numel()) for c in tokenizer.encode(flat, schedule)],
        "prefix_psnr": [round(10 * math.log10(4 / m), 1) for m in prefix_mse],
        "last_step_redrawn_shapeeval": redrawn_shapeeval,
        "prompt_info_per_step": prompt_information(tokenizer, schedule, size, info_num),
    }


def _train_seconds(run_dir: Path) -> float | None:
    path = run_dir / "eval.json"
    return json.loads(path.read_text()).get("elapsed_s") if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="tokenizer run directories (nx tokenizer train)")
    parser.add_argument("-n", "--num", type=int, default=256, help="test images")
    parser.add_argument("--info-num", type=int, default=4000, help="training images for prompt_info_per_step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of codes.json and codes.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = [measure(run, args.num, args.info_num) for run in args.runs]
    columns = ["run", "codebook_size", "search", "restart_every", "scale_drop", "truncate", "train_seconds",
               "psnr", "recon_shapeeval", "nats_per_image", "entropy_per_step", "flat_distinct_per_step",
               "prefix_psnr", "last_step_redrawn_shapeeval", "prompt_info_per_step"]
    table = markdown(rows, columns)
    print(table)
    write_json(args.out / "codes.json", {"rows": rows, "num": args.num, "info_num": args.info_num,
                                        "environment": environment(load),
                                        "command": "python benchmarks/tokenizer_codes.py "
                                                   + " ".join(str(r) for r in args.runs)})
    (args.out / "codes.md").write_text(table + "\n")


if __name__ == "__main__":
    main()

"""Held-out evaluation of a tokenizer: PSNR, SSIM, per-scale code usage; reconstruction grids.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels

``evaluate(model, objective, dataset)`` runs ``objective.reconstruct`` (no gradients, eval mode)
over the dataset, clamps the reconstructions to [-1, 1] and returns an ``EvalReport``: mean PSNR
and SSIM, and for a discrete tokenizer the code usage and perplexity of every scale and of all
scales pooled (``metrics.CodeUsage``). ``EvalReport.log_values()`` gives the flat names written to
``metrics.jsonl``: ``eval/psnr``, ``eval/ssim``, ``usage/all``, ``usage/scale_00``, ...,
``perplexity/all``, ``perplexity/scale_00``, ...
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

from nxrecipes.tokenizer.data import CaptionedImages
from nxrecipes.tokenizer.metrics import CodeUsage, psnr, ssim
from nxrecipes.tokenizer.objective import TokenizerObjective, check_objective, no_grad_reconstruct

__all__ = ["EvalReport", "evaluate", "reconstruction_grid"]


@attrs.frozen(kw_only=True)
class EvalReport:
    """Mean PSNR (dB) and SSIM over ``images`` held-out images, their spread, and ``codes`` (a
    ``CodeUsage.summary()``; ``None`` for a continuous tokenizer)."""

    images: int
    psnr: float
    ssim: float
    psnr_std: float
    ssim_min: float
    codes: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(**data)

    def log_values(self) -> dict[str, float]:
        values = {"eval/psnr": self.psnr, "eval/ssim": self.ssim}
        if self.codes is not None:
            values["usage/all"] = self.codes["usage"]
            values["perplexity/all"] = self.codes["perplexity"]
            per = self.codes["per_scale"]
            for k, (u, p) in enumerate(zip(per["usage"], per["perplexity"], strict=True)):
                values[f"usage/scale_{k:02d}"] = u
                values[f"perplexity/scale_{k:02d}"] = p
        return values

    def format_table(self) -> str:
        lines = [
            f"held-out images  {self.images}",
            f"PSNR             {self.psnr:.2f} dB (std {self.psnr_std:.2f})",
            f"SSIM             {self.ssim:.4f} (min {self.ssim_min:.4f})",
        ]
        if self.codes is not None:
            c = self.codes
            lines.append(
                f"codebook         {c['usage']:.1%} of {c['codebook_size']} codes used, perplexity "
                f"{c['perplexity']:.1f}"
            )
            lines.append("scale  tokens  usage   (ceiling)  perplexity")
            per = c["per_scale"]
            for k in range(len(per["usage"])):
                lines.append(
                    f"{k:>5}  {per['tokens'][k]:>6}  {per['usage'][k]:6.1%}  ({per['ceiling'][k]:6.1%})  "
                    f"{per['perplexity'][k]:10.1f}"
                )
        return "\n".join(lines)


def _check_dataset(dataset: object) -> CaptionedImages:
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be map-style (len() and [i] -> float [3, H, W] image in [-1, 1]), got "
            f"{type(dataset).__name__}; build one with ShapeWorldImages(...).build()"
        )
    if len(dataset) == 0:
        raise ValueError("dataset is empty; evaluate on at least one image")
    return dataset  # type: ignore[return-value]


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def evaluate(
    model: nn.Module,
    objective: TokenizerObjective,
    dataset: CaptionedImages,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> EvalReport:
    """Reconstruct every image of ``dataset`` and measure it (module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a tokenizer), got {type(model).__name__}")
    objective = check_objective(objective)
    dataset = _check_dataset(dataset)
    batch_size = _positive("batch_size", batch_size)
    device = next(model.parameters()).device
    psnrs, ssims = [], []
    usage: CodeUsage | None = None
    n = len(dataset)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="eval", unit="batch", disable=not progress, leave=False):
        images = torch.stack([dataset[i] for i in range(start, min(start + batch_size, n))]).to(device)
        rec = no_grad_reconstruct(objective, model, images)
        out = rec.images.float().clamp(-1, 1)
        psnrs.append(psnr(out, images))
        ssims.append(ssim(out, images))
        if rec.codes is not None:
            if usage is None:
                usage = CodeUsage(int(model.codebook_size), len(rec.codes))
            usage.update(rec.codes)
    p, s = torch.cat(psnrs).double(), torch.cat(ssims).double()
    return EvalReport(
        images=n,
        psnr=float(p.mean()),
        ssim=float(s.mean()),
        psnr_std=float(p.std()) if n > 1 else 0.0,
        ssim_min=float(s.min()),
        codes=None if usage is None else usage.summary(),
    )


def reconstruction_grid(
    model: nn.Module,
    objective: TokenizerObjective,
    dataset: CaptionedImages,
    *,
    num: int = 8,
    columns: int = 2,
    side: int = 160,
) -> Image.Image:
    """A PNG-ready picture: each of the first ``num`` images beside its reconstruction (``side`` px
    each, nearest-neighbour so pixels stay visible), ``columns`` pairs per row, each pair captioned
    with its PSNR."""
    from nxrecipes.data.shapeworld.render import to_pil

    objective = check_objective(objective)
    dataset = _check_dataset(dataset)
    num = min(_positive("num", num), len(dataset))
    columns = min(_positive("columns", columns), num)
    device = next(model.parameters()).device
    images = torch.stack([dataset[i] for i in range(num)]).to(device)
    out = no_grad_reconstruct(objective, model, images).images.float().clamp(-1, 1)
    scores = psnr(out, images).tolist()
    pad, gap, text, title = 8, 2, 16, 22
    cell_w, cell_h = 2 * side + gap, side + text
    rows = -(-num // columns)
    canvas = Image.new("RGB", (pad + columns * (cell_w + pad), title + rows * (cell_h + pad) + pad), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((pad, 4), "original | reconstruction", fill=(20, 20, 20))
    for i in range(num):
        r, c = divmod(i, columns)
        x, y = pad + c * (cell_w + pad), title + r * (cell_h + pad)
        for j, picture in enumerate((images[i], out[i])):
            tile = to_pil((picture.cpu() + 1) / 2).resize((side, side), Image.Resampling.NEAREST)
            canvas.paste(tile, (x + j * (side + gap), y))
        pen.text((x, y + side + 2), f"#{i}: PSNR {scores[i]:.1f} dB", fill=(40, 40, 40))
    return canvas

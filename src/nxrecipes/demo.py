"""``make demo``: what next-scale prediction sees, drawn with the library's own schedules.

Until the ShapeWorld training demo lands, this renders a scene at every step of NextFlow's Table 14
schedules (256 level, 12 steps) for three aspect ratios, choosing each row's schedule by the
library's aspect-ratio bucketing, and overlays the multiscale 3D RoPE centres of a coarse step on
the final grid. Output: ``<out>/next_scale_steps.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nxcore.layout import DiscreteImage, SequenceLayout
from nxcore.position import MultiscaleRoPE3D
from nxcore.schedule import nextflow_schedule_for_size

TILE = 96
SCENES = ((256, 256), (192, 384), (384, 192))  # (height, width): 1:1, 1:2, 2:1


def draw_scene(height: int, width: int, supersample: int = 4) -> torch.Tensor:
    """A small anti-aliased scene of three shapes, as float [3, height, width] in [0, 1]."""
    big = Image.new("RGB", (width * supersample, height * supersample), (236, 232, 222))
    pen = ImageDraw.Draw(big)
    w, h = big.size
    pen.ellipse((0.10 * w, 0.15 * h, 0.42 * w, 0.15 * h + 0.32 * w), fill=(214, 48, 49))
    pen.rectangle((0.55 * w, 0.55 * h, 0.85 * w, 0.85 * h), fill=(9, 132, 227))
    pen.polygon([(0.62 * w, 0.08 * h), (0.9 * w, 0.45 * h), (0.45 * w, 0.45 * h)], fill=(0, 184, 148))
    small = big.resize((width, height), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
    return pixels.reshape(height, width, 3).permute(2, 0, 1).float() / 255


def to_tile(image: torch.Tensor, height: int) -> Image.Image:
    width = max(1, round(height * image.shape[2] / image.shape[1]))
    up = F.interpolate(image[None], size=(height, width), mode="nearest")[0]
    data = (up.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (width, height), data.numpy().tobytes())


def rope_overlay(image: torch.Tensor, schedule, step: int, height: int) -> Image.Image:
    """The final image with the 3D RoPE (row, col) centres of ``step``'s tokens as dots."""
    tile = to_tile(image, height)
    rope = MultiscaleRoPE3D(head_dim=16, image_offset="none")
    layout = SequenceLayout.of(DiscreteImage(schedule))
    pos = rope.positions(layout)
    start, end = schedule.offsets[step], schedule.offsets[step + 1]
    gh, gw = schedule.grid
    extent_r = rope.range_factor * gh / (gh * gw) ** 0.5  # coordinate range spanned by the rows
    pen = ImageDraw.Draw(tile)
    for _, r, c in pos[start:end].tolist():
        y, x = r / extent_r * tile.height, c / extent_r * tile.height
        pen.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(20, 20, 20))
    return tile


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for height, width in SCENES:
        scene = draw_scene(height, width)
        schedule = nextflow_schedule_for_size(height, width, level=256)
        tiles = [to_tile(F.interpolate(scene[None], size=hw, mode="area")[0], TILE) for hw in schedule.steps]
        tiles.append(rope_overlay(scene, schedule, step=3, height=TILE))
        rows.append(tiles)
        steps = " ".join(f"{h}x{w}" for h, w in schedule.steps)
        print(f"{height}x{width}: {schedule.num_steps} steps, {schedule.total_tokens} tokens: {steps}")
    gap = 4
    canvas_w = max(sum(t.width + gap for t in row) for row in rows) + gap
    canvas = Image.new("RGB", (canvas_w, len(rows) * (TILE + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        x = gap
        for tile in row:
            canvas.paste(tile, (x, gap + r * (TILE + gap)))
            x += tile.width + gap
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "next_scale_steps.png"
    canvas.save(path)
    print(f"wrote {path} in {time.perf_counter() - started:.1f} s")
    return path


if __name__ == "__main__":
    main()

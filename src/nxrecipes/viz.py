"""Pictures for people: PNG grids of images with their captions."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def image_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    *,
    columns: int = 4,
    tile: int = 160,
    caption_lines: int = 3,
    title: str | None = None,
) -> Image.Image:
    """Images in a grid, each scaled to ``tile`` px (nearest, so pixels stay crisp) with up to
    ``caption_lines`` wrapped lines of its caption underneath, and an optional title on top."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"got {len(captions)} captions for {len(images)} images; pass one per image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    font = _font(12)
    line_h = 14
    text_h = caption_lines * line_h + 6 if captions is not None else 0
    title_h = 26 if title else 0
    pad = 6
    width = columns * (tile + pad) + pad
    height = title_h + rows * (tile + text_h + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    if title:
        pen.text((pad, 6), title, fill=(20, 20, 20), font=_font(16))
    chars = max(8, tile // 7)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        x = pad + c * (tile + pad)
        y = title_h + pad + r * (tile + text_h + pad)
        scale = tile / max(image.width, image.height)
        shown = image.convert("RGB").resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.NEAREST,
        )
        canvas.paste(shown, (x, y))
        if captions is not None:
            lines = textwrap.wrap(captions[k], chars)[:caption_lines]
            for i, line in enumerate(lines):
                pen.text((x, y + tile + 3 + i * line_h), line, fill=(40, 40, 40), font=font)
    return canvas


def side_by_side(images: Sequence[Image.Image], height: int = 160, gap: int = 4) -> Image.Image:
    """Images in one row, each scaled to ``height`` (for before/after pairs and sequences)."""
    scaled = [
        im.convert("RGB").resize(
            (max(1, round(im.width * height / im.height)), height), Image.Resampling.NEAREST
        )
        for im in images
    ]
    width = sum(s.width for s in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    x = 0
    for s in scaled:
        canvas.paste(s, (x, 0))
        x += s.width + gap
    return canvas


def captioned_rows(
    images: Sequence[Image.Image], captions: Sequence[str], *, height: int = 128, title: str | None = None
) -> Image.Image:
    """One image per row, scaled to ``height`` (wide pairs and sequences keep their shape), each
    with its caption wrapped underneath."""
    if len(images) != len(captions) or not images:
        raise ValueError(
            f"need at least one image and one caption per image, got {len(images)} and {len(captions)}"
        )
    pad, line_h = 6, 14
    shown = [side_by_side([im], height=height) for im in images]
    width = max(600, max(s.width for s in shown)) + 2 * pad
    wrapped = [textwrap.wrap(c, max(20, (width - 2 * pad) // 7))[:3] for c in captions]
    title_h = 26 if title else 0
    rows = zip(shown, wrapped, strict=True)
    height_total = title_h + pad + sum(s.height + len(w) * line_h + 2 * pad for s, w in rows)
    canvas = Image.new("RGB", (width, height_total), (255, 255, 255))
    pen = ImageDraw.Draw(canvas)
    if title:
        pen.text((pad, 6), title, fill=(20, 20, 20), font=_font(16))
    y = title_h + pad
    for s, lines in zip(shown, wrapped, strict=True):
        canvas.paste(s, (pad, y))
        y += s.height + 3
        for line in lines:
            pen.text((pad, y), line, fill=(40, 40, 40), font=_font(12))
            y += line_h
        y += 2 * pad - 3
    return canvas

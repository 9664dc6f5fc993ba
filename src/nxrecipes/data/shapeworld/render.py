"""Anti-aliased rendering of ShapeWorld scenes with Pillow (drawn supersampled, then reduced).

Shape outlines are defined on the unit square [-1, 1]^2 (y down) and scaled to the object's square.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from nxrecipes.data.shapeworld.world import COLOURS, Scene, ShapeObject, check_image_size

SUPERSAMPLE = 4


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        radius = 1.0 if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / points
        out.append((radius * math.cos(angle), radius * math.sin(angle) + 0.1))
    return out


_ARM = 0.36
OUTLINES: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,  # drawn as an ellipse
    "square": [(-0.9, -0.9), (0.9, -0.9), (0.9, 0.9), (-0.9, 0.9)],
    "triangle": [(0.0, -0.95), (1.0, 0.8), (-1.0, 0.8)],
    "star": _star(),
    "cross": [
        (-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
        (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM),
    ],
}


def draw_shape(pen: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], half: float,
               fill: tuple[int, int, int] | int) -> None:
    """Draw ``shape`` filling the square of half-side ``half`` (pixels) around ``centre``."""
    cx, cy = centre
    outline = OUTLINES[shape]
    if outline is None:
        pen.ellipse((cx - half, cy - half, cx + half, cy + half), fill=fill)
    else:
        pen.polygon([(cx + half * u, cy + half * v) for u, v in outline], fill=fill)


def _background(scene: Scene, size: int) -> Image.Image:
    base = np.array(scene.background, dtype=np.float32)
    gx, gy = scene.gradient
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    shade = gx * ramp[None, :] + gy * ramp[:, None]  # in colour units
    pixels = np.clip(base[None, None, :] + shade[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image."""
    check_image_size(size)
    big = size * SUPERSAMPLE
    canvas = _background(scene, size).resize((big, big), Image.Resampling.BILINEAR)
    pen = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        draw_shape(pen, obj.shape, (obj.x * big, obj.y * big), obj.extent * big / 2, COLOURS[obj.colour])
    return canvas.resize((size, size), Image.Resampling.BOX)


def object_mask(obj: ShapeObject, size: int) -> np.ndarray:
    """Boolean [size, size] coverage (> 50%) of one object, for tests and edit checks."""
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw_shape(ImageDraw.Draw(canvas), obj.shape, (obj.x * big, obj.y * big), obj.extent * big / 2, 255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) > 127


def to_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 [3, H, W] from an RGB PIL image."""
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def to_float(image: Image.Image) -> torch.Tensor:
    """float32 [3, H, W] in [0, 1] (the RewardModel convention)."""
    return to_tensor(image).float() / 255.0


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """An RGB image from a [3, H, W] tensor (uint8, or float in [0, 1]) or an [H, W, 3] array."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round().to(torch.uint8)
        array = t.permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")

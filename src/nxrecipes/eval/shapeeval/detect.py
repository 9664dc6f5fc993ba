"""The ShapeEval detector: palette objects found in an image by colour unmixing and shape fitting.

A deterministic pipeline with no learned weights:

1. **Background**: a plane per channel fitted robustly to the image border (a flat background and
   ShapeWorld's mild gradient both work; objects touching the border are outliers).
2. **Colour**: each pixel is explained as a mix ``background + alpha * (colour - background)`` of
   the background and one palette colour, which is how anti-aliasing and blur mix them; unmixing is
   done in RGB because that is where Pillow blends. A pixel takes the palette colour whose mix line
   it lies closest to, when it is within ``MAX_RESIDUAL`` of that line and at least half-way to the
   colour (``alpha >= 0.5``, the renderer's own coverage rule).
3. **Components** per colour (holes filled, 4-connected, ``scipy.ndimage.label``); those under
   ``MIN_AREA_FRACTION`` of the smallest object ShapeWorld draws at that image size, or over
   ``MAX_AREA`` of the image, are dropped.
4. **Shape by synthesis**: a component's soft coverage fixes an area and a centroid; every shape of
   ``render.OUTLINES`` is redrawn with that area and centroid by the renderer's own ``draw_shape`` on
   the same pixel grid (sharp, and slightly blurred for mildly blurred images), and compared by soft
   IoU. The best shape wins when its IoU reaches ``MIN_IOU``; otherwise the component is no object.
   The soft coverage weights luma above chroma (``CHROMA_WEIGHT``) because JPEG keeps luma sharp and
   halves the chroma resolution.

``Detection.x, y`` is the centre of the fitted shape's square (the convention of ``ShapeObject``),
``area`` the fraction of the image the object covers.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

from nxrecipes.data.shapeworld.render import SUPERSAMPLE, draw_shape
from nxrecipes.data.shapeworld.spec import Detection
from nxrecipes.data.shapeworld.world import COLOURS, SHAPES, SIZES

__all__ = ["ACCEPTED_FORMS", "detect", "image_array"]

ACCEPTED_FORMS = (
    "a PIL image, a uint8 torch tensor [3, H, W], a float torch tensor [3, H, W] in [0, 1], "
    "or a numpy array [H, W, 3] (uint8, or float in [0, 1])"
)
MAX_RESIDUAL = 45.0  # RGB units (0-255): distance from a pixel to its colour's mix line
MIN_ALPHA = 0.5  # a pixel is object when at least half of it is the colour
MIN_CONTRAST = 30.0  # a palette colour this close to the background cannot be seen
MIN_AREA_FRACTION = 0.35  # of the smallest object ShapeWorld draws at that image size
MIN_AREA_PIXELS = 4.0
MAX_AREA = 0.3  # of the image; the largest ShapeWorld object covers under 0.1
MIN_IOU = 0.75  # soft IoU of a component with its best shape
TEMPLATE_BLURS = (0.0, 0.6)  # Gaussian sigmas (pixels) tried on each template
CHROMA_WEIGHT = 0.1  # weight of the chroma channels in the soft coverage (luma weighs 1)
FLOAT_SLACK = 0.5  # float images within [-0.5, 1.5] are clipped to [0, 1]; further out is an error

_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], dtype=np.float64)  # [colours, 3]
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


# ------------------------------------------------------------------------------------------------
# input


def image_array(image: object, name: str = "image") -> np.ndarray:
    """``image`` in any accepted form (``ACCEPTED_FORMS``) as float64 [H, W, 3] RGB in [0, 255]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(
                f"{name} as a tensor must be [3, H, W], got shape {tuple(image.shape)}; accepted: "
                f"{ACCEPTED_FORMS} (permute an [H, W, 3] tensor with .permute(2, 0, 1))"
            )
        t = image.detach().cpu()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} has dtype {t.dtype}; accepted: {ACCEPTED_FORMS}")
        is_float = t.is_floating_point()
        return _values((t.float() if is_float else t).numpy().transpose(1, 2, 0), is_float, name)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"{name} as a numpy array must be [H, W, 3], got shape {image.shape}; accepted: "
                f"{ACCEPTED_FORMS} (transpose a [3, H, W] array with .transpose(1, 2, 0))"
            )
        if image.dtype.kind not in "uif":
            raise TypeError(f"{name} has dtype {image.dtype}; accepted: {ACCEPTED_FORMS}")
        return _values(image, image.dtype.kind == "f", name)
    raise TypeError(f"{name} must be {ACCEPTED_FORMS}; got {type(image).__name__}")


def _values(array: np.ndarray, is_float: bool, name: str) -> np.ndarray:
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass an image with pixels")
    array = np.asarray(array, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; pass finite values in [0, 1]")
    low, high = float(array.min()), float(array.max())
    if is_float:
        if low < -FLOAT_SLACK or high > 1 + FLOAT_SLACK:
            raise ValueError(
                f"{name} is a float image with values in [{low:.3g}, {high:.3g}]; float images "
                "must lie in [0, 1] (divide 0-255 values by 255)"
            )
        return np.clip(array, 0.0, 1.0) * 255.0
    if low < 0 or high > 255:
        raise ValueError(
            f"{name} is an integer image with values in [{low:.0f}, {high:.0f}]; integer images "
            "must lie in [0, 255]"
        )
    return array


# ------------------------------------------------------------------------------------------------
# background and colour


def estimate_background(pixels: np.ndarray) -> np.ndarray:
    """[H, W, 3] background: a plane per channel fitted to the image border, ignoring outliers."""
    height, width, _ = pixels.shape
    band = 2 if min(height, width) >= 8 else 1
    ring = np.zeros((height, width), dtype=bool)
    ring[:band], ring[-band:], ring[:, :band], ring[:, -band:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    values = pixels[ys, xs]
    design = np.stack([np.ones(len(xs)), (xs + 0.5) / width - 0.5, (ys + 0.5) / height - 0.5], axis=1)
    coef = np.zeros((3, 3))
    coef[0] = np.median(values, axis=0)
    inliers = np.linalg.norm(values - coef[0], axis=1) <= 30.0
    for _ in range(3):
        if inliers.sum() < max(8, len(values) // 4):
            break
        coef = np.linalg.lstsq(design[inliers], values[inliers], rcond=None)[0]
        residual = np.linalg.norm(values - design @ coef, axis=1)
        inliers = residual <= max(12.0, 3.0 * float(np.median(residual[inliers])))
    gx = (np.arange(width) + 0.5) / width - 0.5
    gy = (np.arange(height) + 0.5) / height - 0.5
    plane = coef[0] + gx[None, :, None] * coef[1] + gy[:, None, None] * coef[2]
    return np.clip(plane, 0.0, 255.0)


def _mix(diff: np.ndarray, background: np.ndarray, palette: np.ndarray, weight: np.ndarray
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel and palette colour ([H, W, colours]), in the metric weighted by ``weight``:
    the projection of ``diff`` on ``colour - background`` (``dot``), that vector's squared length
    (``norm2``), and ``diff``'s squared length ([H, W, 1]). Matmuls, no [H, W, colours, 3] array."""
    wdiff = diff * weight
    dot = wdiff @ palette.T - (wdiff * background).sum(-1, keepdims=True)
    wbg = background * weight
    norm2 = (palette * weight * palette).sum(-1) - 2 * wbg @ palette.T
    norm2 = norm2 + (wbg * background).sum(-1, keepdims=True)
    return dot, norm2, (wdiff * diff).sum(-1, keepdims=True)


def unmix(pixels: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel and palette colour, each [H, W, colours]: the mix fraction ``alpha`` (clipped to
    [0, 1]), the RGB distance to the background-colour mix line (``inf`` for a colour too close to
    the background to be seen), and ``coverage``, the mix fraction measured with luma weighted above
    chroma."""
    diff = pixels - background  # [H, W, 3]
    dot, norm2, length2 = _mix(diff, background, _PALETTE, np.ones(3))
    usable = norm2 > MIN_CONTRAST**2
    norm2 = np.where(usable, norm2, 1.0)
    alpha = np.where(usable, np.clip(dot / norm2, 0.0, 1.0), 0.0)
    residual2 = length2 - 2 * alpha * dot + alpha**2 * norm2  # |diff - alpha (colour - background)|^2
    residual = np.where(usable, np.sqrt(np.maximum(residual2, 0.0)), np.inf)
    weight = np.array([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT])
    dot, norm2, _ = _mix(diff @ _YCBCR.T, background @ _YCBCR.T, _PALETTE @ _YCBCR.T, weight)
    coverage = np.where(usable, np.clip(dot / np.where(usable, norm2, 1.0), 0.0, 1.0), 0.0)
    return alpha, residual, coverage


# ------------------------------------------------------------------------------------------------
# shapes


@functools.cache
def shape_geometry(shape: str) -> tuple[float, float, float]:
    """(area as a fraction of its square, centroid offset x, y in half-sides) of a drawn shape."""
    half = 256
    canvas = Image.new("L", (2 * half, 2 * half), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, (half, half), half, 255)
    mask = np.asarray(canvas, dtype=np.float64) / 255.0
    total = mask.sum()
    ys, xs = np.mgrid[0 : 2 * half, 0 : 2 * half] + 0.5
    return (
        float(total / (2 * half) ** 2),
        float(((mask * xs).sum() / total - half) / half),
        float(((mask * ys).sum() / total - half) / half),
    )


def template(shape: str, centre: tuple[float, float], half: float, size: tuple[int, int]) -> np.ndarray:
    """[height, width] coverage in [0, 1] of ``shape`` drawn the way the renderer draws it
    (supersampled, box-reduced) around ``centre`` (x, y pixels) with half-side ``half``."""
    height, width = size
    canvas = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    centre_big = (centre[0] * SUPERSAMPLE, centre[1] * SUPERSAMPLE)
    draw_shape(ImageDraw.Draw(canvas), shape, centre_big, half * SUPERSAMPLE, 255)
    return np.asarray(canvas.resize((width, height), Image.Resampling.BOX), dtype=np.float64) / 255.0


def _soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / np.maximum(a, b).sum())


def fit_shape(coverage: np.ndarray) -> tuple[str, float, float, float]:
    """The shape that best explains a soft mask ``coverage`` [h, w]: (shape, soft IoU, centre x,
    centre y) with the centre in pixels of ``coverage``."""
    area = float(coverage.sum())
    ys, xs = np.mgrid[0 : coverage.shape[0], 0 : coverage.shape[1]] + 0.5
    mx, my = float((coverage * xs).sum() / area), float((coverage * ys).sum() / area)
    best = ("", -1.0, 0.0, 0.0)
    for shape in SHAPES:
        fraction, ox, oy = shape_geometry(shape)
        half = math.sqrt(area / (4.0 * fraction))
        centre = (mx - ox * half, my - oy * half)
        drawn = template(shape, centre, half, coverage.shape)
        for sigma in TEMPLATE_BLURS:
            blurred = ndimage.gaussian_filter(drawn, sigma, mode="constant") if sigma else drawn
            iou = _soft_iou(coverage, blurred)
            if iou > best[1]:
                best = (shape, iou, centre[0], centre[1])
    return best


def smallest_object_area(height: int, width: int) -> float:
    """Pixels covered by the smallest object ShapeWorld draws in an image of this size."""
    side = math.sqrt(height * width) * min(SIZES.values())
    return min(shape_geometry(s)[0] for s in SHAPES) * side * side


# ------------------------------------------------------------------------------------------------
# the detector


def detect(image: object) -> list[Detection]:
    """The palette objects in ``image`` (method in the module docstring), sorted top to bottom, then
    left to right.

    ``image``: a PIL image, a uint8 tensor [3, H, W], a float tensor [3, H, W] in [0, 1], or a numpy
    array [H, W, 3] (uint8, or float in [0, 1]); anything else raises ``TypeError``/``ValueError``.
    """
    pixels = image_array(image)
    height, width, _ = pixels.shape
    alpha, residual, coverage = unmix(pixels, estimate_background(pixels))
    best = residual.argmin(-1)  # the colour whose mix line explains the pixel best
    rows, cols = np.indices(best.shape)
    solid = (residual[rows, cols, best] <= MAX_RESIDUAL) & (alpha[rows, cols, best] >= MIN_ALPHA)
    label = np.where(solid, best, -1)

    min_area = max(MIN_AREA_PIXELS, MIN_AREA_FRACTION * smallest_object_area(height, width))
    max_area = MAX_AREA * height * width
    margin = max(2, math.ceil(0.1 * math.sqrt(height * width)))
    found: list[Detection] = []
    for k, colour in enumerate(_NAMES):
        mask = ndimage.binary_fill_holes(label == k)
        components, count = ndimage.label(mask)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))
        for index, piece in enumerate(ndimage.find_objects(components), start=1):
            if piece is None or not 0.5 * min_area <= sizes[index - 1] <= max_area:
                continue
            y0, y1 = max(0, piece[0].start - margin), min(height, piece[0].stop + margin)
            x0, x1 = max(0, piece[1].start - margin), min(width, piece[1].stop + margin)
            own = components[y0:y1, x0:x1] == index
            others = solid[y0:y1, x0:x1] & ~own  # pixels of other objects stay out of this one
            region = ndimage.binary_dilation(own, iterations=2) & ~others
            soft = np.where(region, coverage[y0:y1, x0:x1, k], 0.0)
            area = float(soft.sum())
            if not min_area <= area <= max_area:
                continue
            shape, iou, cx, cy = fit_shape(soft)
            if iou < MIN_IOU:
                continue
            x = min(max((cx + x0) / width, 0.0), 1.0)
            y = min(max((cy + y0) / height, 0.0), 1.0)
            found.append(Detection(shape, colour, x, y, area / (height * width)))
    found.sort(key=lambda d: (round(d.y, 3), round(d.x, 3), d.shape, d.colour))
    return found

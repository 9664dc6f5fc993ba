"""The ShapeEval detector: accuracy on rendered scenes (clean and mildly degraded), silence on blank
and noise images, every accepted image form, clear errors, and no crash on arbitrary arrays.

The measured accuracies print with ``pytest -s -k accuracy tests/nxrecipes/eval``.
"""

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from nxrecipes.data.shapeworld.render import render, to_float, to_tensor
from nxrecipes.data.shapeworld.scenes import random_scene
from nxrecipes.data.shapeworld.spec import Detection
from nxrecipes.data.shapeworld.world import BACKGROUND, COLOURS, SHAPES, Scene, ShapeObject
from nxrecipes.eval.shapeeval import detect
from nxrecipes.eval.shapeeval.detect import image_array

TOLERANCE = 0.05  # a detection this close to an object's centre (normalised, per axis) finds it


def degrade(image: Image.Image, kind: str, seed: int) -> Image.Image:
    if kind == "clean":
        return image
    if kind == "noise":  # Gaussian noise, sigma 0.03 on [0, 1]
        pixels = np.asarray(image, dtype=np.float64) / 255
        pixels = pixels + np.random.default_rng(seed).normal(0.0, 0.03, pixels.shape)
        return Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(0.8))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    raise ValueError(kind)


def found(scene: Scene, detections: list[Detection]) -> tuple[int, int]:
    """(objects of ``scene`` detected with the right shape and colour at their place, detections
    left over), matching one to one."""
    left = list(detections)
    hits = 0
    for obj in scene.objects:
        match = next((d for d in left if (d.shape, d.colour) == (obj.shape, obj.colour)
                      and abs(d.x - obj.x) < TOLERANCE and abs(d.y - obj.y) < TOLERANCE), None)
        if match is not None:
            hits += 1
            left.remove(match)
    return hits, len(left)


def measure(size: int, kind: str, scenes: int, seed: int = 0) -> tuple[float, int, int]:
    """(fraction of objects found, objects, false positives) over ``scenes`` random scenes, half of
    them with a jittered background and a gradient."""
    rng = np.random.default_rng(seed)
    total = hits = extra = 0
    for i in range(scenes):
        scene = random_scene(rng, size=size, vary_background=bool(i % 2))
        h, e = found(scene, detect(degrade(render(scene, size), kind, seed=i)))
        total, hits, extra = total + len(scene.objects), hits + h, extra + e
    print(f"\nShapeEval detector, size {size}, {kind}: {hits}/{total} objects = {hits / total:.4f}, "
          f"{extra} false positives over {scenes} images")
    return hits / total, total, extra


# --- accuracy ---------------------------------------------------------------------------------


def test_accuracy_on_clean_renders_at_64():
    accuracy, objects, extra = measure(64, "clean", scenes=160)
    assert objects >= 300
    assert accuracy >= 0.99
    assert extra <= 0.01 * objects


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg"])
def test_accuracy_under_mild_degradation_at_64(kind):
    accuracy, objects, extra = measure(64, kind, scenes=120)
    assert objects >= 250
    assert accuracy >= 0.95
    assert extra <= 0.02 * objects


@pytest.mark.parametrize(("size", "scenes"), [(32, 60), (128, 12), (256, 6)])
def test_accuracy_at_other_sizes(size, scenes):
    accuracy, _, extra = measure(size, "clean", scenes=scenes, seed=size)
    assert accuracy >= 0.99
    assert extra == 0
    worst = min(measure(size, kind, scenes=scenes, seed=size)[0] for kind in ("noise", "blur", "jpeg"))
    # 32 px draws small objects 7 px wide; JPEG's half-resolution chroma blurs a few beyond recognition
    assert worst >= (0.9 if size == 32 else 0.95)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("colour", list(COLOURS))
def test_every_shape_and_colour_small_and_large(shape, colour):
    scene = Scene([ShapeObject(shape, colour, "small", 0.2, 0.25), ShapeObject(shape, colour, "large", 0.65, 0.7)])
    detections = detect(render(scene, 64))
    assert found(scene, detections) == (2, 0), detections


def test_positions_and_areas_are_accurate():
    obj = ShapeObject("triangle", "blue", "large", 0.37, 0.61)
    (d,) = detect(render(Scene([obj]), 128))
    assert abs(d.x - obj.x) < 0.01 and abs(d.y - obj.y) < 0.01
    assert abs(d.area - 0.4375 * obj.extent**2) < 0.005  # a triangle covers 7/16 of its square


def test_objects_touching_the_border_and_each_other_closely():
    scene = Scene([ShapeObject("cross", "green", "large", 0.17, 0.17), ShapeObject("circle", "green", "large", 0.54, 0.17),
                   ShapeObject("square", "red", "small", 0.89, 0.89)])
    assert found(scene, detect(render(scene, 64))) == (3, 0)


# --- silence on images without objects ----------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64, 256])
def test_blank_and_uniform_images_hold_nothing(size):
    images = [np.full((size, size, 3), BACKGROUND, dtype=np.uint8),
              render(Scene([], background=(226, 240, 230), gradient=(12.0, -12.0)), size)]
    images += [np.full((size, size, 3), rgb, dtype=np.uint8) for rgb in [*COLOURS.values(), (0, 0, 0), (255, 255, 255)]]
    assert [detect(image) for image in images] == [[]] * len(images)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_noise_images_hold_nothing(size):
    rng = np.random.default_rng(size)
    images = [rng.random((size, size, 3)) for _ in range(6)]
    images += [np.clip(0.5 + 0.2 * rng.standard_normal((size, size, 3)), 0, 1) for _ in range(3)]
    images += [np.clip(np.array(BACKGROUND) / 255 + 0.1 * rng.standard_normal((size, size, 3)), 0, 1) for _ in range(3)]
    sprinkled = np.full((size, size, 3), BACKGROUND, dtype=np.uint8)  # 20% of pixels in palette colours
    where = rng.random((size, size)) < 0.2
    sprinkled[where] = np.array(list(COLOURS.values()), dtype=np.uint8)[rng.integers(len(COLOURS), size=where.sum())]
    images.append(sprinkled)
    counts = [len(detect(image)) for image in images]
    print(f"\nShapeEval detector, size {size}, noise images: {sum(counts)} detections in {len(images)} images")
    assert sum(counts) == 0


# --- image forms ------------------------------------------------------------------------------


def test_every_accepted_form_gives_the_same_detections():
    scene = Scene([ShapeObject("star", "purple", "large", 0.3, 0.3), ShapeObject("square", "yellow", "small", 0.75, 0.7)])
    image = render(scene, 64)
    forms = [image, image.convert("RGBA"), to_tensor(image), to_float(image), np.asarray(image),
             np.asarray(image) / 255.0, np.asarray(image).astype(np.float32) / 255, np.asarray(image).astype(np.int64)]
    results = [[(d.shape, d.colour, round(d.x, 6), round(d.y, 6), round(d.area, 6)) for d in detect(form)]
               for form in forms]  # float forms differ from the bytes by rounding only
    assert found(scene, detect(image)) == (2, 0)
    assert all(r == results[0] for r in results)
    assert detect(image) == detect(image)  # deterministic


def test_non_square_images():
    scene = Scene([ShapeObject("circle", "red", "large", 0.5, 0.5)])
    wide = np.concatenate([np.asarray(render(scene, 64)), np.full((64, 32, 3), BACKGROUND, np.uint8)], axis=1)
    (d,) = detect(wide)
    assert (d.shape, d.colour) == ("circle", "red")
    assert abs(d.x - 32 / 96) < 0.02


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        ("image.png", TypeError, r"must be a PIL image, a uint8 torch tensor \[3, H, W\]"),
        ([[0, 0, 0]], TypeError, "got list"),
        (torch.rand(1, 3, 8, 8), ValueError, r"as a tensor must be \[3, H, W\], got shape \(1, 3, 8, 8\)"),
        (torch.rand(8, 8, 3), ValueError, r"permute"),
        (np.zeros((3, 8, 8)), ValueError, r"numpy array must be \[H, W, 3\].*transpose"),
        (np.zeros((8, 8)), ValueError, r"\[H, W, 3\], got shape \(8, 8\)"),
        (np.zeros((0, 8, 3)), ValueError, "is empty"),
        (np.full((8, 8, 3), np.nan), ValueError, "NaN or infinite"),
        (torch.full((3, 8, 8), float("inf")), ValueError, "NaN or infinite"),
        (np.full((8, 8, 3), 200.0), ValueError, r"float image with values in \[200, 200\].*divide 0-255 values by 255"),
        (np.full((8, 8, 3), 300), ValueError, r"integer image with values in \[300, 300\]"),
        (np.zeros((8, 8, 3), dtype=bool), TypeError, "dtype bool"),
        (torch.zeros((3, 8, 8), dtype=torch.bool), TypeError, "dtype torch.bool"),
        (np.zeros((8, 8, 3), dtype=complex), TypeError, "dtype complex128"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, message):
    with pytest.raises(error, match=message):
        detect(image)


def test_float_images_slightly_out_of_range_are_clipped():
    scene = Scene([ShapeObject("cross", "blue", "large", 0.5, 0.5)])
    image = to_float(render(scene, 64))
    stretched = image * 1.1 - 0.05
    stretched[:, 0, 0], stretched[:, 0, 1] = -0.2, 1.2
    assert [(d.shape, d.colour) for d in detect(stretched)] == [("cross", "blue")]
    assert image_array(stretched).min() == 0 and image_array(stretched).max() == 255


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float16, np.float32, np.float64, np.bool_]),
        shape=st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([3, 3, 3, 1, 4])),
    )  # every value of the dtype, NaN and infinities included
)
def test_never_crashes_on_arbitrary_arrays(array):
    try:
        result = detect(array)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    assert isinstance(result, list) and all(isinstance(d, Detection) for d in result)
    assert all(0 <= d.x <= 1 and 0 <= d.y <= 1 and d.area > 0 for d in result)


@given(
    st.integers(8, 48), st.integers(8, 48), st.integers(0, 2**32 - 1),
    st.sampled_from(["uniform", "blocks", "palette_blocks"]),
)
def test_never_crashes_on_random_images(height, width, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        image = rng.random((height, width, 3))
    else:
        blocks = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        if kind == "palette_blocks":
            blocks = np.array([BACKGROUND, *COLOURS.values()], dtype=np.uint8)[rng.integers(0, 7, size=(4, 4))]
        image = np.asarray(Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST))
    result = detect(image)
    assert all(d.shape in SHAPES and d.colour in COLOURS for d in result)

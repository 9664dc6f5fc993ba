"""Images to train and evaluate tokenizers on: ShapeWorld scenes, or any folder of images.

Shapes:
    channels        image channels (3)
    height, width   image pixels (``size`` x ``size``)

Both configs build an ``ImageDataset``: ``dataset[i]`` is a float32 [3, size, size] image in
[-1, 1] and ``dataset.caption(i)`` its caption (``None`` when there is none). Images are decoded on
first use and kept as uint8 (``cache=True``), so an evaluation set renders once.

- ``ShapeWorldImages``: the ``t2i`` samples of a ShapeWorld split (``train`` to train on; ``test``,
  disjoint from it, as the held-out set); captions are the prompts.
- ``ImageFolder``: every ``.png``/``.jpg``/``.jpeg``/``.webp``/``.bmp`` file under ``path``, sorted by
  path, centre-cropped to a square and resized to ``size``. ``part="heldout"`` takes every
  ``heldout_every``-th file, ``"train"`` the others, ``"all"`` every file. A caption is read from a
  ``.txt`` file beside an image (same stem), when there is one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from nxcore.config import Config, config, integer, one_of
from nxcore.typing import Float

__all__ = ["IMAGE_SUFFIXES", "CaptionedImages", "ImageDataset", "ImageFolder", "ShapeWorldImages", "to_model"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PARTS = ("all", "train", "heldout")


@runtime_checkable
class CaptionedImages(Protocol):
    """Images for tokenizers: ``len``, ``[i]`` -> float [3, H, W] in [-1, 1], ``caption(i)``.
    Reference implementation: ``ImageDataset``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Tensor: ...

    def caption(self, index: int) -> str | None: ...


def to_model(image: Image.Image) -> Float[Tensor, "3 height width"]:
    """An RGB PIL image as float32 [3, H, W] in [-1, 1]."""
    return _to_uint8(image).float() / 127.5 - 1.0


def _to_uint8(image: Image.Image) -> Tensor:
    import numpy as np

    array = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, then resize to ``size`` (Lanczos); untouched when already that."""
    image = image.convert("RGB")
    w, h = image.size
    if (w, h) == (size, size):
        return image
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


class ImageDataset(Dataset):
    """``length`` images made by ``load(i) -> (PIL image, caption or None)``, resized to ``size``.

    ``dataset[i]``: float32 [3, size, size] in [-1, 1]; ``caption(i)``: the caption. With ``cache``
    each image is loaded once and kept as uint8.
    """

    def __init__(self, load: Callable[[int], tuple[Image.Image, str | None]], length: int, size: int, *,
                 cache: bool = True, name: str = "images") -> None:
        self._load = load
        self.length = length
        self.size = size
        self.name = name
        self._cache: dict[int, tuple[Tensor, str | None]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.length

    def _index(self, index: object) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index)  # numpy / 0-d tensor indices
            except (TypeError, ValueError):
                raise TypeError(f"index must be an int, got {type(index).__name__}") from None
        i = index + (self.length if index < 0 else 0)
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} is out of range for {self.name} of length {self.length}")
        return i

    def _get(self, index: object) -> tuple[Tensor, str | None]:
        i = self._index(index)
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        image, caption = self._load(i)
        item = (_to_uint8(_square(image, self.size)), caption)
        if self._cache is not None:
            self._cache[i] = item
        return item

    def __getitem__(self, index: int) -> Tensor:
        return self._get(index)[0].float() / 127.5 - 1.0

    def caption(self, index: int) -> str | None:
        return self._get(index)[1]

    def __repr__(self) -> str:
        return f"ImageDataset({self.name}, length={self.length}, size={self.size})"


def _size(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    integer(at_least=8)(instance, attribute, value)


@config
class ShapeWorldImages(Config):
    """``length`` ShapeWorld ``t2i`` images of ``split`` at ``size`` px (module docstring)."""

    split: str = attrs.field(default="train", validator=one_of("train", "validation", "test", "heldout"))
    size: int = attrs.field(default=64, validator=_size)
    length: int = attrs.field(default=4096, validator=integer(at_least=1))
    seed: int = attrs.field(default=0, validator=integer(at_least=0))
    vary_background: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def build(self, *, cache: bool = True) -> ImageDataset:
        from nxrecipes.data.shapeworld import ShapeWorld

        world = ShapeWorld(split=self.split, size=self.size, tasks=("t2i",), length=self.length,
                           seed=self.seed, vary_background=self.vary_background)

        def load(i: int) -> tuple[Image.Image, str | None]:
            record = world[i]
            return record.image, record.prompt

        return ImageDataset(load, self.length, self.size, cache=cache, name=f"ShapeWorld {self.split}")


def _path(value: Any) -> Path:
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise TypeError(f"ImageFolder.path must be a folder path (str or Path), got {value!r}")


@config
class ImageFolder(Config):
    """The images under ``path`` (recursively), split into train / held-out parts by position."""

    path: Path = attrs.field(converter=_path)
    size: int = attrs.field(default=64, validator=_size)
    part: str = attrs.field(default="all", validator=one_of(*PARTS))
    heldout_every: int = attrs.field(default=20, validator=integer(at_least=2))

    def files(self) -> list[Path]:
        """The image files of ``part``, sorted."""
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"image folder {self.path} does not exist or is not a directory; pass a folder of "
                f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} images"
            )
        found = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if self.part == "heldout":
            found = found[:: self.heldout_every]
        elif self.part == "train":
            found = [p for i, p in enumerate(found) if i % self.heldout_every]
        if not found:
            raise ValueError(
                f"no images for part {self.part!r} under {self.path} (looked for "
                f"{', '.join(IMAGE_SUFFIXES)}); add images or use part='all'"
            )
        return found

    def build(self, *, cache: bool = True) -> ImageDataset:
        files = self.files()

        def load(i: int) -> tuple[Image.Image, str | None]:
            path = files[i]
            with Image.open(path) as image:
                image.load()
                picture = image.convert("RGB")
            text = path.with_suffix(".txt")
            return picture, text.read_text(encoding="utf-8").strip() if text.is_file() else None

        return ImageDataset(load, len(files), self.size, cache=cache, name=f"{self.path} ({self.part})")

"""``nx eval``: score a folder of images against a prompts JSONL."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from nxrecipes.data.shapeworld.dataset import load_jsonl_specs
from nxrecipes.eval.shapeeval.score import ShapeEvalReport, evaluate


def evaluate_folder(
    images: str | os.PathLike, prompts: str | os.PathLike, *, progress: bool = False
) -> ShapeEvalReport:
    """Score ``images/<file>`` against each prompt of ``prompts``.

    Each JSONL line is ``{"prompt": ...}`` with optional ``"spec"`` (else parsed from the prompt),
    ``"image"`` (file name in ``images``; else ``<index>.png`` with the index zero-padded to six
    digits, as ``nx data export`` writes) and ``"index"``.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder {folder} does not exist")
    entries = load_jsonl_specs(prompts)
    if not entries:
        raise ValueError(f"{prompts} holds no text-to-image prompts to score")
    files = [folder / (e.image or f"{e.index:06d}.png") for e in entries]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) named by {prompts} are missing, e.g. {missing[0]}; name each "
            "line's image with an \"image\" field or save it as <index:06d>.png"
        )
    pictures = [Image.open(f).convert("RGB") for f in files]
    return evaluate(pictures, entries, progress=progress)

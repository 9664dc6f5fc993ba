"""A picture per sample for people to look at: ``nx data preview`` and the demo."""

from __future__ import annotations

from collections.abc import Iterable

from PIL import Image

from nxrecipes.data.shapeworld.edits import EditSample
from nxrecipes.data.shapeworld.sequences import InContext, Interleaved
from nxrecipes.data.shapeworld.tasks import Captioning, TextOnly, TextToImage, WorldKnowledge
from nxrecipes.viz import captioned_rows, image_grid, side_by_side

BLANK = (248, 248, 248)


def sample_picture(record: object) -> tuple[Image.Image, str]:
    """One image (pairs and sequences side by side) and a caption for a ShapeWorld record."""
    if isinstance(record, TextToImage):
        return record.image, record.prompt
    if isinstance(record, Captioning):
        return record.image, f"caption: {record.caption}"
    if isinstance(record, WorldKnowledge):
        return record.image, f"{record.prompt} -> {record.reasoning}"
    if isinstance(record, EditSample):
        return side_by_side([record.source_image, record.target_image]), record.instruction
    if isinstance(record, Interleaved):
        images = [p for p in record.parts if isinstance(p, Image.Image)]
        text = " ".join(p for p in record.parts if isinstance(p, str))
        return side_by_side(images), text
    if isinstance(record, InContext):
        (b1, a1), (b2, a2) = record.examples
        return side_by_side([b1, a1, b2, a2, record.query, record.answer]), record.prompt
    if isinstance(record, TextOnly):
        return Image.new("RGB", (64, 64), BLANK), record.text
    raise TypeError(f"no preview for a {type(record).__name__}")


def preview_grid(records: Iterable[object], *, columns: int = 4, title: str | None = None) -> Image.Image:
    """Samples in a grid with their text; wide samples (pairs, sequences) get a row each."""
    pictures = [sample_picture(r) for r in records]
    if not pictures:
        raise ValueError("nothing to preview: the dataset is empty")
    images, captions = [im for im, _ in pictures], [c for _, c in pictures]
    if any(im.width > 1.5 * im.height for im in images):
        return captioned_rows(images, captions, title=title)
    return image_grid(images, captions, columns=columns, tile=160, caption_lines=4, title=title)

import pytest
import torch
from PIL import Image

from nxrecipes.tokenizer.data import CaptionedImages, ImageFolder, ShapeWorldImages


def test_shapeworld_images_are_in_range_with_prompts_and_deterministic():
    data = ShapeWorldImages(split="test", size=32, length=3).build()
    assert isinstance(data, CaptionedImages) and len(data) == 3
    image = data[1]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1 <= float(image.min()) and float(image.max()) <= 1
    assert "square" in data.caption(1)
    assert torch.equal(image, ShapeWorldImages(split="test", size=32, length=3).build(cache=False)[1])


def test_image_folder_crops_resizes_splits_and_reads_captions(tmp_path):
    for i, size in enumerate([(40, 20), (16, 16), (64, 48), (10, 30)]):
        Image.new("RGB", size, (60 * i, 10, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "1.txt").write_text("a blue square\n")
    (tmp_path / "notes.md").write_text("not an image")
    folder = ImageFolder(path=tmp_path, size=16, heldout_every=2)
    assert [p.name for p in folder.files()] == ["0.png", "1.png", "2.png", "3.png"]
    assert [p.name for p in folder.replace(part="heldout").files()] == ["0.png", "2.png"]
    train = folder.replace(part="train").build()
    assert len(train) == 2 and train[0].shape == (3, 16, 16)
    assert train.caption(0) == "a blue square" and train.caption(1) is None
    assert ImageFolder.from_json(folder.to_json()) == folder


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: ImageFolder(path=p / "missing").build(), FileNotFoundError, r"image folder .*missing does not exist"),
        (lambda p: ImageFolder(path=p).build(), ValueError, r"no images for part 'all'"),
        (lambda p: ImageFolder(path=p, part="test"), ValueError, r"ImageFolder.part = 'test' is not allowed"),
        (lambda p: ShapeWorldImages(size=4), ValueError, r"ShapeWorldImages.size = 4 is not allowed"),
        (lambda p: ShapeWorldImages(length=2).build()[5], IndexError, r"index 5 is out of range"),
    ],
)
def test_bad_inputs_are_named(tmp_path, call, error, match):
    with pytest.raises(error, match=match):
        call(tmp_path)

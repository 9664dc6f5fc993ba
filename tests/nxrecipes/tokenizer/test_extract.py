import json

import pytest
import torch
from safetensors import safe_open

from nxcore.schedule import Schedule
from nxrecipes.tokenizer.extract import (
    INDEX_FILE,
    ExtractedIndices,
    SelfCorrectionConfig,
    extract,
)

from .conftest import VQ_STEPS, tiny_ae_config, tiny_vq_config

SCHEDULE = Schedule(VQ_STEPS)


class Captioned:
    """Seven images with captions (a CaptionedImages)."""

    def __init__(self, images):
        self.images = list(images) + [-images[0]]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]

    def caption(self, i):
        return f"image {i}"


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return tiny_vq_config().build().eval()


def test_round_trip_over_uneven_shards(tmp_path, tokenizer, images):
    dataset = Captioned(images)  # 7 samples in shards of 3: 3, 3, 1, written from batches of 2
    index_path = extract(tokenizer, dataset, SCHEDULE, tmp_path / "out", shard_size=3, batch_size=2,
                         progress=False)
    info = json.loads(index_path.read_text())
    assert info["format"] == "nx.extracted_indices" and info["num_samples"] == 7
    assert [(s["start"], s["count"]) for s in info["shards"]] == [(0, 3), (3, 3), (6, 1)]
    assert info["schedule"] == [list(s) for s in VQ_STEPS] and info["codebook_size"] == 16
    assert info["dtype"] == "int16" and info["self_correction"] is None
    assert info["tokenizer"]["type"].endswith(":MultiScaleVQTokenizer")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        INDEX_FILE, "shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors",
    ]
    with safe_open(str(tmp_path / "out" / "shard-00001.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == [f"scale_{k:02d}" for k in range(4)]
        assert f.get_tensor("scale_03").shape == (3, 8, 8)

    expected = tokenizer.encode(torch.stack(dataset.images), SCHEDULE)
    read = ExtractedIndices(tmp_path / "out")
    assert len(read) == 7 and read.schedule == SCHEDULE and read.codebook_size == 16
    for i in range(7):
        sample = read[i]
        assert sample["caption"] == f"image {i}" and sample["index"] == i
        assert all(c.dtype == torch.int64 for c in sample["codes"])
        assert all(torch.equal(c, e[i]) for c, e in zip(sample["codes"], expected, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(read[-1]["codes"], read.codes(6), strict=True))
    batch = torch.utils.data.default_collate([read[i] for i in range(4)])
    assert batch["codes"][3].shape == (4, 8, 8)


def test_extracting_again_replaces_the_whole_directory(tmp_path, tokenizer, images):
    out = tmp_path / "out"
    extract(tokenizer, Captioned(images), SCHEDULE, out, shard_size=2, progress=False)
    extract(tokenizer, list(images[:2]), SCHEDULE, out, shard_size=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [INDEX_FILE, "shard-00000.safetensors"]
    read = ExtractedIndices(out)
    assert len(read) == 2 and read[0]["caption"] is None


def test_self_correction_variants_are_stored_and_read_back(tmp_path, tokenizer, images):
    dataset = Captioned(images)
    settings = SelfCorrectionConfig(fraction=0.6, k=4, variants=2)
    extract(tokenizer, dataset, SCHEDULE, tmp_path / "a", shard_size=4, batch_size=4, self_correction=settings,
            seed=1, progress=False)
    read = ExtractedIndices(tmp_path / "a")
    assert read.variants == 2 and read.info["self_correction"]["k"] == 4
    clean = tokenizer.encode(torch.stack(dataset.images), SCHEDULE)
    changed = [0] * len(VQ_STEPS)
    for i in range(len(read)):
        sample = read[i]
        assert len(sample["inputs"]) == len(sample["targets"]) == 2
        for v in range(2):
            # the first scale's target is the clean top-1; later targets follow the corrupted inputs
            assert torch.equal(sample["targets"][v][0], clean[0][i])
            for k, (h, w) in enumerate(VQ_STEPS):
                diff = int((sample["inputs"][v][k] != sample["targets"][v][k]).sum())
                assert diff <= round(0.6 * h * w)  # only the selected cells may change
                changed[k] += diff
    assert changed[-1] > 0
    extract(tokenizer, dataset, SCHEDULE, tmp_path / "b", shard_size=4, batch_size=4, self_correction=settings,
            seed=1, progress=False)
    again = ExtractedIndices(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(again[6]["inputs"][1], read[6]["inputs"][1], strict=True))


def test_self_correction_with_nothing_selected_is_the_plain_encode(tmp_path, tokenizer, images):
    extract(tokenizer, list(images), SCHEDULE, tmp_path, self_correction=SelfCorrectionConfig(fraction=0.0),
            progress=False)
    sample = ExtractedIndices(tmp_path)[2]
    for codes, inputs, targets in zip(sample["codes"], sample["inputs"][0], sample["targets"][0], strict=True):
        assert torch.equal(codes, inputs) and torch.equal(codes, targets)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda t, i, p: extract(tiny_ae_config().build(), list(i), SCHEDULE, p, progress=False), TypeError,
         r"tokenizer must be a discrete image tokenizer.*NextStepAutoencoder"),
        (lambda t, i, p: extract(t, [], SCHEDULE, p, progress=False), ValueError, r"dataset is empty"),
        (lambda t, i, p: extract(t, list(i), SCHEDULE, p, shard_size=0, progress=False), ValueError,
         r"shard_size must be an int >= 1, got 0"),
        (lambda t, i, p: extract(t, list(i), VQ_STEPS, p, progress=False), TypeError,
         r"schedule must be a ScaleSchedule.*got tuple"),
        (lambda t, i, p: extract(t, [i[0].half().long()], SCHEDULE, p, progress=False), TypeError,
         r"dataset\[0\] must be a float \[3, height, width\] image"),
        (lambda t, i, p: extract(t, list(i), Schedule(((1, 1), (2, 2))), p, progress=False), ValueError,
         r"final grid 2x2 needs 8x8 images"),
        (lambda t, i, p: extract(t, list(i), SCHEDULE, p, self_correction={"fraction": 0.6}, progress=False),
         TypeError, r"self_correction must be a SelfCorrectionConfig or None, got dict"),
    ],
)
def test_bad_inputs_are_named(tmp_path, tokenizer, images, call, error, match):
    with pytest.raises(error, match=match):
        call(tokenizer, images, tmp_path / "out")


def test_a_failed_extraction_leaves_nothing_behind(tmp_path, tokenizer, images):
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 16\]"):
        extract(tokenizer, list(images), SCHEDULE, tmp_path / "x", self_correction=SelfCorrectionConfig(k=99),
                progress=False)
    assert not (tmp_path / "x").exists()


def test_refuses_to_replace_a_folder_that_is_not_an_extraction(tmp_path, tokenizer, images):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty and holds no index.json"):
        extract(tokenizer, list(images), SCHEDULE, tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"index.json does not exist.*not an extraction"):
        ExtractedIndices(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match=r"is not an nx extraction index"):
        ExtractedIndices(tmp_path)

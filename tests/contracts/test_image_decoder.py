"""Every ImageDecoder in nx decodes a tokenizer's codes to images of the promised size, seeded."""

import pytest
import torch

from nxcore.decoder import ImageDecoder
from nxcore.schedule import Schedule
from nxcore.testing.discovery import conformance_cases
from nxcore.tokenizer.dual import dual_tiny

SCHEDULE = Schedule(((1, 1), (2, 2), (4, 4)))


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return dual_tiny().build().eval()


@pytest.mark.parametrize("decoder", conformance_cases(ImageDecoder))
def test_image_decoder_conforms(decoder, tokenizer):
    assert isinstance(decoder, ImageDecoder) and decoder.scale_factor in (1, 2)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    codes = tokenizer.encode(images, SCHEDULE)
    side = 8 * decoder.scale_factor

    def run(seed, captions=None):
        return decoder.decode(tokenizer, codes, SCHEDULE, captions=captions,
                              generator=torch.Generator().manual_seed(seed))

    out = run(0, ["a red circle", "", "two blue squares"])
    assert out.shape == (3, 3, side, side) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert torch.equal(run(0), run(0))
    prefix = decoder.decode(tokenizer, codes[:2], SCHEDULE, generator=torch.Generator().manual_seed(0))
    assert prefix.shape == out.shape  # the image so far, from a prefix of the steps

"""Every Tokenizer in nx passes its conformance check; the checks reject broken tokenizers.

The small tokenizers below are real (a byte tokenizer, a colour-palette multi-scale residual VQ, a
pixel-unshuffle patchifier) and serve to show the checks pass a correct implementation and catch
a broken one, before the full tokenizers of nxcore.tokenizer exist.
"""

import pytest
import torch
import torch.nn.functional as F

from nxcore.schedule import Schedule
from nxcore.testing.check_tokenizer import (
    check_continuous_image_tokenizer,
    check_discrete_image_tokenizer,
    check_text_tokenizer,
)
from nxcore.testing.discovery import conformance_cases
from nxcore.tokenizer.protocol import (
    ContinuousImageTokenizer,
    DiscreteImageTokenizer,
    TextTokenizer,
)

SCHEDULE = Schedule(((1, 1), (2, 2), (3, 4)))


class ByteTokenizer(TextTokenizer):
    vocab_size = 258

    @property
    def special_tokens(self):
        return {"<boi>": 256, "<eoi>": 257}

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8")


class PaletteVQ(DiscreteImageTokenizer):
    """Multi-scale residual VQ on 2x2-average-pooled pixels with a fixed colour codebook."""

    codebook_size, code_dim, downsample = 16, 3, 2

    def __init__(self):
        self.codebook = torch.rand(16, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def _lookup(self, codes):
        return self.codebook[codes].permute(0, 3, 1, 2)

    def embed_codes(self, codes, step):
        return self._lookup(codes)

    def encode(self, images, schedule):
        rest = F.avg_pool2d(images, self.downsample)
        codes = []
        for h, w in schedule.steps:
            z = F.interpolate(rest, size=(h, w), mode="area").permute(0, 2, 3, 1)
            idx = torch.cdist(z.reshape(-1, 3), self.codebook).argmin(-1).reshape(z.shape[:3])
            codes.append(idx)
            rest = rest - F.interpolate(self._lookup(idx), size=rest.shape[-2:], mode="nearest")
        return codes

    def decode(self, codes, schedule):
        grid = schedule.grid
        f = sum(F.interpolate(self._lookup(c), size=grid, mode="nearest") for c in codes)
        return F.interpolate(f, scale_factor=self.downsample, mode="nearest").clamp(-1, 1)

    def next_scale_inputs(self, codes, schedule):
        return [
            F.interpolate(self._lookup(c), size=nxt, mode="bilinear")
            for c, nxt in zip(codes[:-1], schedule.steps[1:], strict=True)
        ]


class Patchify(ContinuousImageTokenizer):
    latent_dim, downsample = 12, 2

    def encode(self, images):
        return F.pixel_unshuffle(images, 2).permute(0, 2, 3, 1)

    def decode(self, latents):
        return F.pixel_shuffle(latents.permute(0, 3, 1, 2), 2)


@pytest.mark.parametrize("tokenizer", conformance_cases(TextTokenizer))
def test_text_tokenizers_conform(tokenizer):
    check_text_tokenizer(tokenizer)


@pytest.mark.parametrize("tokenizer", conformance_cases(DiscreteImageTokenizer))
def test_discrete_tokenizers_conform(tokenizer):
    check_discrete_image_tokenizer(tokenizer, SCHEDULE)


@pytest.mark.parametrize("tokenizer", conformance_cases(ContinuousImageTokenizer))
def test_continuous_tokenizers_conform(tokenizer):
    check_continuous_image_tokenizer(tokenizer)


def test_checks_pass_correct_tokenizers():
    check_text_tokenizer(ByteTokenizer())
    check_discrete_image_tokenizer(PaletteVQ(), SCHEDULE)
    check_continuous_image_tokenizer(Patchify())


class _Lowercasing(ByteTokenizer):
    def decode(self, ids):
        return super().decode(ids).lower()


class _SpecialClash(ByteTokenizer):
    @property
    def special_tokens(self):
        return {"<boi>": 256, "<eoi>": 256}


class _Transposed(PaletteVQ):
    def encode(self, images, schedule):
        return [c.transpose(1, 2) for c in super().encode(images, schedule)]


class _OneInputTooMany(PaletteVQ):
    def next_scale_inputs(self, codes, schedule):
        inputs = super().next_scale_inputs(codes, schedule)
        return inputs + inputs[-1:]


class _Random(PaletteVQ):
    def encode(self, images, schedule):
        return [torch.randint(0, 16, (images.shape[0], h, w)) for h, w in schedule.steps]


class _ChannelsFirst(Patchify):
    def encode(self, images):
        return F.pixel_unshuffle(images, 2)


@pytest.mark.parametrize(
    ("check", "tokenizer", "message"),
    [
        (check_text_tokenizer, _Lowercasing(), r"decode\(encode"),
        (check_text_tokenizer, _SpecialClash(), "distinct"),
        (lambda t: check_discrete_image_tokenizer(t, SCHEDULE), _Transposed(), r"codes\[2\] must be int64 \[2, 3, 4\]"),
        (lambda t: check_discrete_image_tokenizer(t, SCHEDULE), _OneInputTooMany(), "must give 2 maps"),
        (lambda t: check_discrete_image_tokenizer(t, SCHEDULE), _Random(), "not deterministic"),
        (check_continuous_image_tokenizer, _ChannelsFirst(), r"latents \[2, 2, 3, 12\]"),
        (check_text_tokenizer, Patchify(), "does not implement TextTokenizer"),
    ],
)
def test_checks_reject_broken_tokenizers(check, tokenizer, message):
    with pytest.raises(AssertionError, match=message):
        check(tokenizer)

"""Conformance checks for the Tokenizer family."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.protocol import (
    ContinuousImageTokenizer,
    DiscreteImageTokenizer,
    TextTokenizer,
)

SAMPLE_TEXTS = (
    "a red circle",
    "two blue squares to the left of a green triangle",
    "Three yellow stars, above one purple hexagon.",
)


def check_text_tokenizer(
    tokenizer: TextTokenizer, texts: Sequence[str] = SAMPLE_TEXTS, *, roundtrip: bool = True
) -> None:
    """ids in [0, vocab_size); decode(encode(s)) == s (when ``roundtrip``); specials distinct."""
    if not isinstance(tokenizer, TextTokenizer):
        raise AssertionError(f"{type(tokenizer).__name__} does not implement TextTokenizer")
    for text in texts:
        ids = tokenizer.encode(text)
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise AssertionError(f"encode({text!r}) must return a list of int, got {ids!r}")
        if not ids or min(ids) < 0 or max(ids) >= tokenizer.vocab_size:
            raise AssertionError(f"encode({text!r}) gave ids outside [0, {tokenizer.vocab_size})")
        if tokenizer.encode(text) != ids:
            raise AssertionError(f"encode({text!r}) is not deterministic")
        if roundtrip and tokenizer.decode(ids) != text:
            raise AssertionError(f"decode(encode({text!r})) == {tokenizer.decode(ids)!r}")
    specials = dict(tokenizer.special_tokens)
    ids = list(specials.values())
    if len(set(ids)) != len(ids) or any(not 0 <= i < tokenizer.vocab_size for i in ids):
        raise AssertionError(f"special token ids must be distinct and in range, got {specials}")


def _images(tokenizer, schedule: ScaleSchedule, batch: int, seed: int) -> Tensor:
    gh, gw = schedule.grid
    gen = torch.Generator().manual_seed(seed)
    size = (batch, 3, gh * tokenizer.downsample, gw * tokenizer.downsample)
    return torch.rand(size, generator=gen) * 2 - 1


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_discrete_image_tokenizer(
    tokenizer: DiscreteImageTokenizer, schedule: ScaleSchedule, *, batch: int = 2, seed: int = 0
) -> None:
    """Codes per step with the schedule's shapes and range; decode, embed and next-scale inputs
    with the documented shapes; deterministic encoding."""
    if not isinstance(tokenizer, DiscreteImageTokenizer):
        raise AssertionError(f"{type(tokenizer).__name__} does not implement DiscreteImageTokenizer")
    images = _images(tokenizer, schedule, batch, seed)
    codes = tokenizer.encode(images, schedule)
    if len(codes) != schedule.num_steps:
        raise AssertionError(f"encode gave {len(codes)} code grids for {schedule.num_steps} steps")
    for k, ((h, w), c) in enumerate(zip(schedule.steps, codes, strict=True)):
        if not isinstance(c, Tensor) or tuple(c.shape) != (batch, h, w) or c.dtype != torch.int64:
            raise AssertionError(f"codes[{k}] must be int64 [{batch}, {h}, {w}], got {_shape(c)}")
        if c.min() < 0 or c.max() >= tokenizer.codebook_size:
            raise AssertionError(f"codes[{k}] has values outside [0, {tokenizer.codebook_size})")
    again = tokenizer.encode(images, schedule)
    if any(not torch.equal(a, b) for a, b in zip(codes, again, strict=True)):
        raise AssertionError("encode is not deterministic for the same images")
    decoded = tokenizer.decode(codes, schedule)
    if tuple(decoded.shape) != tuple(images.shape) or not torch.isfinite(decoded).all():
        raise AssertionError(f"decode must give finite images {tuple(images.shape)}, got {_shape(decoded)}")
    for k, ((h, w), c) in enumerate(zip(schedule.steps, codes, strict=True)):
        emb = tokenizer.embed_codes(c, k)
        if tuple(emb.shape) != (batch, tokenizer.code_dim, h, w):
            raise AssertionError(
                f"embed_codes(codes[{k}]) must be [{batch}, {tokenizer.code_dim}, {h}, {w}], "
                f"got {_shape(emb)}"
            )
    inputs = tokenizer.next_scale_inputs(codes, schedule)
    if len(inputs) != schedule.num_steps - 1:
        raise AssertionError(
            f"next_scale_inputs must give {schedule.num_steps - 1} maps (steps 2..K), got {len(inputs)}"
        )
    for k, (x, (h, w)) in enumerate(zip(inputs, schedule.steps[1:], strict=True)):
        if tuple(x.shape) != (batch, tokenizer.code_dim, h, w) or not torch.isfinite(x).all():
            raise AssertionError(
                f"next_scale_inputs[{k}] must be finite [{batch}, {tokenizer.code_dim}, {h}, {w}], "
                f"got {_shape(x)}"
            )


def check_continuous_image_tokenizer(
    tokenizer: ContinuousImageTokenizer, *, grid: tuple[int, int] = (2, 3), batch: int = 2, seed: int = 0
) -> None:
    """Latents [batch, h, w, latent_dim] for an image of h*downsample x w*downsample, and back."""
    if not isinstance(tokenizer, ContinuousImageTokenizer):
        raise AssertionError(f"{type(tokenizer).__name__} does not implement ContinuousImageTokenizer")
    h, w = grid
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, h * tokenizer.downsample, w * tokenizer.downsample, generator=gen) * 2 - 1
    latents = tokenizer.encode(images)
    if tuple(latents.shape) != (batch, h, w, tokenizer.latent_dim) or not torch.isfinite(latents).all():
        raise AssertionError(
            f"encode must give finite latents [{batch}, {h}, {w}, {tokenizer.latent_dim}], "
            f"got {_shape(latents)}"
        )
    decoded = tokenizer.decode(latents)
    if tuple(decoded.shape) != tuple(images.shape) or not torch.isfinite(decoded).all():
        raise AssertionError(f"decode must give finite images {tuple(images.shape)}, got {_shape(decoded)}")

"""NextStep-1's prompt template (official ``_build_captions`` / ``_add_prefix_ids``, fact sheet §1.7):
caption rows, their classifier-free-guidance twins, the image-generation prefix, and the source
images of an edit placed in context.

Shape legend: rows = branches x images, stacked branch-major (every conditional row, then every
first unconditional row, then every second); images = captions x num_images_per_caption
(caption-major); seq = prompt tokens, left-padded; context = the source-image tokens of all rows
(row-major, in placeholder order); h, w = a token grid (pixels / the image tokenizer's downsample);
latent_dim = one image token (64).

One conditional row, text-to-image::

    caption [" " positive_prompt]   <|image_area|> "{h}*{w}" <|begin_of_image|>   -> generation starts

The row text and the generation prefix are tokenized separately and concatenated (as upstream, so
BPE merges never cross them); "{h}*{w}" is ordinary BPE text (digits and "*") in token-grid units,
e.g. "32*32" for 512x512 pixels. Rows are left-padded with the pad id (masked out).

Editing: a caption holding exactly one ``<image>`` gets it replaced by the source's image string
``<|image_area|>{hs}*{ws}<|begin_of_image|>`` + hs*ws ``<|image_placeholder|>`` + ``<|end_of_image|>``
(``SpecialTokens.image_string``); the placeholders take the source's latent tokens.

Guidance rows (``guidance_branches``):

- 1 branch, ``cfg == cfg_img == 1``: [cond];
- 2 branches, ``cfg != 1``: [cond; negative prompt] (``negative_prompt`` defaults to "");
- 3 branches, ``cfg_img != 1`` (needs a source image): [cond; image string + negative prompt;
  negative prompt], mixed as ``u2 + cfg_img (u1 - u2) + cfg (c - u1)``.

(Upstream builds 3 rows only when both weights differ from 1 and breaks on cfg == 1, cfg_img != 1;
here that case gets its 3 rows too.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.tokenizer.text import BPETokenizer
from nxcore.typing import Bool, Float, Int

__all__ = [
    "IMAGE_TAG",
    "PromptBatch",
    "build_prompts",
    "generation_prefix",
    "guidance_branches",
    "model_special_ids",
    "row_texts",
    "token_grid",
]

IMAGE_TAG = "<image>"
"""Where an edit's source image goes in its caption (upstream's literal tag)."""

_ROLES = (("pad", "pad_id"), ("image_area", "image_area_id"), ("boi", "boi"), ("eoi", "eoi"),
          ("image_placeholder", "image_placeholder_id"))


def model_special_ids(tokenizer: BPETokenizer) -> dict[str, int]:
    """The ``NextStep1Config`` special-id fields (pad_id, image_area_id, boi, eoi,
    image_placeholder_id) of a tokenizer whose roles are ``SpecialTokens.nextstep1()``'s."""
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"tokenizer must be a BPETokenizer, got {type(tokenizer).__name__}")
    out = {}
    for role, field in _ROLES:
        text = getattr(tokenizer.specials, role)
        if text is None:
            raise ValueError(
                f"the tokenizer names no {role} token; load it with special_tokens="
                "SpecialTokens.nextstep1() (or .with_special_tokens(SpecialTokens.nextstep1()))"
            )
        out[field] = tokenizer.special_id(text)
    return out


def token_grid(hw: Sequence[int], downsample: int, name: str = "hw") -> tuple[int, int]:
    """(h, w) token grid of an (H, W) pixel size; H and W must be multiples of ``downsample``."""
    if isinstance(hw, str | bytes) or not isinstance(hw, Sequence) or len(hw) != 2:
        raise ValueError(f"{name} = {hw!r} must be (H, W): two pixel sizes")
    for side, value in zip("HW", hw, strict=True):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} = {tuple(hw)!r}: {side} = {value!r} must be an int >= 1 (pixels)")
        if value % downsample:
            fit = max(downsample, round(value / downsample) * downsample)
            raise ValueError(
                f"{name} = {tuple(hw)!r}: {side} = {value} is not divisible by {downsample}, the image "
                f"tokenizer's downsample (pixels per token side); use a multiple of {downsample}, e.g. {fit}"
            )
    return hw[0] // downsample, hw[1] // downsample


def guidance_branches(cfg: float, cfg_img: float) -> int:
    """Rows per image: 1 (no guidance), 2 (text CFG) or 3 (text and image CFG, editing)."""
    for name, value in (("cfg", cfg), ("cfg_img", cfg_img)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} = {value!r} must be a finite number (1 = no guidance)")
    if cfg_img != 1:
        return 3
    return 2 if cfg != 1 else 1


def generation_prefix(tokenizer: BPETokenizer, grid: tuple[int, int]) -> list[int]:
    """Ids of ``<|image_area|>`` + "{h}*{w}" + ``<|begin_of_image|>``: the end of every row."""
    h, w = grid
    specials = tokenizer.specials
    model_special_ids(tokenizer)  # the roles exist
    return tokenizer.encode(f"{specials.image_area}{h}*{w}") + [tokenizer.special_id(specials.boi)]


@attrs.frozen(eq=False)
class PromptBatch:
    """The rows of one generation request (module docstring for the layout).

    ``ids`` int64 [rows, seq] left-padded; ``attention_mask`` bool [rows, seq], False on padding;
    ``context`` float [context, latent_dim] latents of the placeholders (None without sources);
    ``grid`` (h, w) of the image to generate; ``branches`` 1, 2 or 3; ``num_captions`` and
    ``per_caption`` (images per caption) give ``images = num_captions * per_caption``.
    """

    ids: Int[Tensor, "rows seq"]
    attention_mask: Bool[Tensor, "rows seq"]
    context: Float[Tensor, "context latent_dim"] | None
    grid: tuple[int, int]
    branches: int
    num_captions: int
    per_caption: int

    @property
    def images(self) -> int:
        return self.num_captions * self.per_caption

    @property
    def rows(self) -> int:
        return self.ids.shape[0]

    def to(self, device: torch.device | str) -> PromptBatch:
        context = None if self.context is None else self.context.to(device)
        return attrs.evolve(self, ids=self.ids.to(device), attention_mask=self.attention_mask.to(device),
                            context=context)


def _check_captions(captions: object) -> list[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence) or not captions:
        raise TypeError(f"captions must be a non-empty list of strings, got {captions!r:.80}")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"captions[{i}] must be a str, got {type(c).__name__}")
    return list(captions)


def _check_sources(sources: object, count: int) -> list[Tensor] | None:
    if sources is None:
        return None
    if isinstance(sources, Tensor):
        check_tensor("sources", sources, ndim=4, kind="float")
        sources = list(sources)
    if not isinstance(sources, Sequence):
        raise TypeError(
            f"sources must be latents [images, h, w, latent_dim] or a list of [h, w, latent_dim], got "
            f"{type(sources).__name__}"
        )
    if len(sources) != count:
        raise ValueError(
            f"got {len(sources)} source images for {count} captions; pass one source per caption (each "
            f"caption holds one {IMAGE_TAG!r})"
        )
    for i, s in enumerate(sources):
        check_tensor(f"sources[{i}]", s, ndim=3, kind="float")
    return list(sources)


def _check_tags(captions: list[str], has_sources: bool) -> None:
    for i, caption in enumerate(captions):
        n = caption.count(IMAGE_TAG)
        if n > 1:
            raise ValueError(
                f"captions[{i}] holds {n} {IMAGE_TAG!r} tags; NextStep-1 places one source image per "
                "caption: keep a single tag"
            )
        if n == 1 and not has_sources:
            raise ValueError(
                f"captions[{i}] holds {IMAGE_TAG!r} but no source image was given; pass sources (the "
                "edit's input image) or remove the tag"
            )
        if n == 0 and has_sources:
            raise ValueError(
                f"captions[{i}] = {caption!r} holds no {IMAGE_TAG!r} tag but a source image was given; "
                f"put {IMAGE_TAG!r} where the image goes, e.g. {IMAGE_TAG + caption!r}"
            )


def row_texts(
    tokenizer: BPETokenizer,
    captions: Sequence[str],
    *,
    source_grids: Sequence[tuple[int, int]] | None = None,
    num_images_per_caption: int = 1,
    positive_prompt: str | None = None,
    negative_prompt: str | None = None,
    branches: int = 1,
) -> list[str]:
    """The text of every row before the generation prefix, branch-major (module docstring)."""
    captions = _check_captions(captions)
    _check_tags(captions, source_grids is not None)
    specials = tokenizer.specials
    grids = [None] * len(captions) if source_grids is None else list(source_grids)
    cond, with_image = [], []
    for caption, grid in zip(captions, grids, strict=True):
        image = "" if grid is None else specials.image_string(*grid)
        text = caption.replace(IMAGE_TAG, image)
        if positive_prompt:
            text = f"{text} {positive_prompt}"
        cond += [text] * num_images_per_caption
        with_image += [image] * num_images_per_caption
    negative = negative_prompt or ""
    rows = list(cond)
    if branches == 3:
        rows += [image + negative for image in with_image]
    if branches >= 2:
        rows += [negative] * len(cond)
    return rows


def build_prompts(
    tokenizer: BPETokenizer,
    captions: Sequence[str],
    grid: tuple[int, int],
    *,
    sources: Sequence[Tensor] | Tensor | None = None,
    num_images_per_caption: int = 1,
    positive_prompt: str | None = None,
    negative_prompt: str | None = None,
    cfg: float = 1.0,
    cfg_img: float = 1.0,
) -> PromptBatch:
    """Tokenized, left-padded rows for ``grid`` (h, w tokens) with the guidance rows ``cfg`` and
    ``cfg_img`` need. ``sources``: one latent map [hs, ws, latent_dim] per caption (editing)."""
    captions = _check_captions(captions)
    if not isinstance(num_images_per_caption, int) or isinstance(num_images_per_caption, bool) \
            or num_images_per_caption < 1:
        raise ValueError(f"num_images_per_caption = {num_images_per_caption!r} must be an int >= 1")
    for name, value in (("positive_prompt", positive_prompt), ("negative_prompt", negative_prompt)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not (isinstance(grid, Sequence) and len(grid) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in grid)):
        raise ValueError(f"grid = {grid!r} must be (h, w): two ints >= 1 (token-grid sides)")
    branches = guidance_branches(cfg, cfg_img)
    src = _check_sources(sources, len(captions))
    if branches == 3 and src is None:
        raise ValueError(
            f"cfg_img = {cfg_img!r} needs an input image: image guidance contrasts rows with and without "
            "the source; pass sources (edit an image) or set cfg_img=1.0"
        )
    ids_of = model_special_ids(tokenizer)
    grids = None if src is None else [(s.shape[0], s.shape[1]) for s in src]
    texts = row_texts(tokenizer, captions, source_grids=grids, num_images_per_caption=num_images_per_caption,
                      positive_prompt=positive_prompt, negative_prompt=negative_prompt, branches=branches)
    prefix = generation_prefix(tokenizer, grid)
    rows = [tokenizer.encode(t) + prefix for t in texts]
    n = len(captions) * num_images_per_caption
    context = None
    if src is not None:
        placeholder = ids_of["image_placeholder_id"]
        per_row = [src[i // num_images_per_caption] for i in range(n)]
        per_row = per_row * (2 if branches == 3 else 1)
        for r, latents in enumerate(per_row):
            found = rows[r].count(placeholder)
            if found != latents.shape[0] * latents.shape[1]:
                raise ValueError(
                    f"row {r} holds {found} image placeholders but its source has "
                    f"{latents.shape[0] * latents.shape[1]} tokens; captions must not contain special-token "
                    "text such as <|image_placeholder|>"
                )
        context = torch.cat([s.reshape(-1, s.shape[-1]) for s in per_row])
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), ids_of["pad_id"], dtype=torch.int64)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for b, row in enumerate(rows):
        ids[b, longest - len(row):] = torch.tensor(row, dtype=torch.int64)
        mask[b, longest - len(row):] = True
    return PromptBatch(ids, mask, context, (int(grid[0]), int(grid[1])), branches, len(captions),
                       num_images_per_caption)

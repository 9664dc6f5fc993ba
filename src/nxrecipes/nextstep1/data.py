"""ShapeWorld records as NextStep-1 training rows: the official template, CFG text dropout, the
frozen autoencoder's latents, and right-padded batches.

Shape legend: batch = rows, seq = the longest row, images = image tokens of a batch (every
placeholder, row-major), latent_dim = one image token (64), h, w = an image's token grid.

Rows (fact sheet §1.3, §1.7; ``IMAGE(h, w)`` is ``<|image_area|>`` + ``"h*w"`` + ``<|begin_of_image|>``
+ h*w ``<|image_placeholder|>`` + ``<|end_of_image|>``; "·" = no flow-matching loss)::

    t2i    caption  IMAGE(target)                 [<eos> when the tokenizer has one]
    edit   ·IMAGE(source)  instruction  IMAGE(target)  [<eos>]

Every text token is a next-token target (the model weighs the text loss by ``lm_loss_weight``,
0.01, and skips placeholder and padding targets); only the target image's tokens carry the
flow-matching loss (``image_weights`` 1 there, 0 on the source's). The caption and the ``"h*w"``
digits are encoded apart, as the official pipeline appends its generation prefix to the encoded
caption.

**CFG dropout** (per example, coins from ``numpy.random.default_rng([seed, epoch, index])``):
with probability ``drop_text_prob`` the caption / the instruction becomes "" (the unconditional
row of text CFG, and the image-only row of editing's 3-way CFG); with probability
``drop_image_prob`` an edit also loses its source image and instruction (the negative-only row of
3-way CFG; t2i's dropped rows train that row too, so it defaults to 0). Upstream uses 0.3 at scale;
the default here is 0.1 (as NextFlow's ``cfg_dropout``): a 10-minute CPU run needs every
conditional row it can get, and 0.1 still gives CFG a usable unconditional branch.

**Input noise** (``input_noise`` γ, 0 = off): the target image's latents as the backbone reads them
become x + σ·ε, σ ~ U[0, γ] per token and ε ~ N(0, I) (from ``numpy.random.default_rng([seed, epoch,
index, 1])``), while the flow-matching targets stay clean (``NextStep1Batch.targets``). At generation the
backbone reads the head's own samples, which are never quite on the data; a model trained only on clean
latents is brittle to that (teacher-forced on a test set, noise of std 0.2 on the context, which the
autoencoder decodes to the same image, halves ShapeEval). This is the continuous counterpart of
NextFlow's self-correction; upstream's GH-v2 trainer has a default-off ``noise_strength`` on the
transformer's input latents. The source image of an edit is read clean, as at inference.

**Latents**: ``encode`` runs the frozen autoencoder (eval, no grad) on every image of a batch in
one call and returns normalised tokens in raster order; ``Encoded`` keeps a record's latents and
texts so a caller may cache them per dataset index (``NextStep1Batches`` in ``train.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image as PILImage
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.config import finite_number, in_range, integer, non_negative
from nxcore.tokenizer import SpecialTokens
from nxcore.tokenizer.protocol import TextTokenizer
from nxcore.typing import Bool, Float, Int
from nxrecipes.data.shapeworld.tasks import task_of
from nxrecipes.tokenizer.data import to_model

__all__ = ["NEXTSTEP1_SPECIALS", "TASKS", "Encoded", "NextStep1Batch", "RowBuilder", "collate"]

NEXTSTEP1_SPECIALS = SpecialTokens.nextstep1()
"""NextStep-1's added tokens (``[PAD]``, ``<|image_area|>``, ``<|begin_of_image|>``, ...)."""

TASKS: tuple[str, ...] = ("t2i", "edit")
"""The record tasks ``RowBuilder`` formats."""

_ROLES = ("pad", "image_area", "boi", "eoi", "image_placeholder")


@attrs.frozen(kw_only=True, eq=False)
class Encoded:
    """One record, ready to format: its ``task``, its ``text`` (t2i caption or edit instruction), the
    ``target`` image's latents [h*w, latent_dim] and, for an edit, the ``source``'s."""

    task: str
    text: str
    target: Tensor
    grid: tuple[int, int]
    source: Tensor | None = None


@attrs.frozen(kw_only=True, eq=False)
class Row:
    """One formatted example: ``ids``, the latents of its placeholders in order (as the backbone
    reads them), whether each image carries the flow-matching loss, and ``targets``: the clean
    latents when ``images`` were perturbed (input noise), else None."""

    ids: tuple[int, ...]
    images: tuple[Tensor, ...]
    loss: tuple[bool, ...]
    task: str
    targets: tuple[Tensor, ...] | None = None


@attrs.frozen(kw_only=True, eq=False)
class NextStep1Batch:
    """Right-padded rows: ``ids`` [batch, seq] (``pad_id`` after each row), ``attention_mask`` (True on
    real tokens), ``latents`` [images, latent_dim] of every placeholder in row-major order (the
    backbone's inputs), ``image_weights`` [images] (1: target image, 0: source image), the ``tasks``
    of the rows, and ``targets``: the clean flow-matching targets when input noise perturbed
    ``latents`` (None: the targets are ``latents``)."""

    ids: Int[Tensor, "batch seq"]
    attention_mask: Bool[Tensor, "batch seq"]
    latents: Float[Tensor, "images latent_dim"]
    image_weights: Float[Tensor, " images"]
    tasks: tuple[str, ...]
    targets: Float[Tensor, "images latent_dim"] | None = None

    def to(self, device: torch.device | str) -> NextStep1Batch:
        return attrs.evolve(self, ids=self.ids.to(device), attention_mask=self.attention_mask.to(device),
                            latents=self.latents.to(device), image_weights=self.image_weights.to(device),
                            targets=None if self.targets is None else self.targets.to(device))

    @property
    def tokens(self) -> int:
        """Real (unpadded) tokens in the batch."""
        return int(self.attention_mask.sum())


def collate(rows: Sequence[Row], pad_id: int) -> NextStep1Batch:
    """Right-pad ``rows`` to the longest with ``pad_id``; stack their latents (and, when any row was
    perturbed, every row's clean targets) in row-major order."""
    if not rows:
        raise ValueError("collate needs at least one row")
    longest = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    latents, weights, targets = [], [], []
    for b, row in enumerate(rows):
        ids[b, : len(row.ids)] = torch.tensor(row.ids, dtype=torch.int64)
        mask[b, : len(row.ids)] = True
        for image, loss in zip(row.images, row.loss, strict=True):
            latents.append(image)
            weights.append(torch.full((image.shape[0],), float(loss)))
        targets += row.images if row.targets is None else row.targets
    dim = rows[0].images[0].shape[1] if latents else 0
    perturbed = any(r.targets is not None for r in rows)
    return NextStep1Batch(
        ids=ids, attention_mask=mask,
        latents=torch.cat(latents) if latents else torch.zeros(0, dim),
        image_weights=torch.cat(weights) if weights else torch.zeros(0),
        tasks=tuple(r.task for r in rows),
        targets=torch.cat(targets) if perturbed else None,
    )


@attrs.frozen(kw_only=True, eq=False)
class RowBuilder:
    """ShapeWorld records -> ``NextStep1Batch`` (module docstring): ``build(records, indices, epoch)``.

    ``text``: the text tokenizer (its special tokens must include ``NEXTSTEP1_SPECIALS``' pad,
    image area, begin/end of image and placeholder); ``image_tokenizer``: the frozen autoencoder
    (``encode`` images [B, 3, H, W] in [-1, 1] -> [B, H/d, W/d, latent_dim]); put in eval mode with
    gradients off. ``drop_text_prob`` / ``drop_image_prob``: CFG dropout; ``input_noise``: the largest
    std of the noise on the target image's input latents (module docstring; 0 = off).
    """

    text: TextTokenizer
    image_tokenizer: nn.Module
    drop_text_prob: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    drop_image_prob: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
    input_noise: float = attrs.field(default=0.0, validator=[finite_number(), non_negative()])
    seed: int = attrs.field(default=0, validator=integer(at_least=0))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.image_tokenizer, nn.Module) or not hasattr(self.image_tokenizer, "encode"):
            raise TypeError(
                "image_tokenizer must be a continuous image tokenizer module (NextStepAutoencoder), got "
                f"{type(self.image_tokenizer).__name__}"
            )
        if not hasattr(self.image_tokenizer, "latent_dim"):
            raise TypeError(
                f"image_tokenizer {type(self.image_tokenizer).__name__} has no latent_dim: NextStep-1 needs "
                "a continuous tokenizer (nx tokenizer train --kind ae), not a codebook"
            )
        specials = self.text.special_tokens
        missing = [s for s in self._special_strings() if s not in specials]
        if missing:
            raise ValueError(
                f"the text tokenizer lacks the special tokens {missing}; train it with "
                "special_tokens=SpecialTokens.nextstep1() (nextstep1_text_tokenizer() in train.py)"
            )
        self.image_tokenizer.eval()
        self.image_tokenizer.requires_grad_(False)

    @staticmethod
    def _special_strings() -> list[str]:
        return [getattr(NEXTSTEP1_SPECIALS, role) for role in _ROLES]

    def special_id(self, role: str) -> int:
        """The id of NextStep-1's ``role`` token (``pad``, ``image_area``, ``boi``, ``eoi``,
        ``image_placeholder``)."""
        return self.text.special_tokens[getattr(NEXTSTEP1_SPECIALS, role)]

    # --- text -----------------------------------------------------------------------------------

    def image_ids(self, h: int, w: int) -> list[int]:
        """Ids of ``SpecialTokens.image_string(h, w)``: area, "h*w", boi, h*w placeholders, eoi."""
        return ([self.special_id("image_area"), *self.text.encode(f"{h}*{w}"), self.special_id("boi")]
                + [self.special_id("image_placeholder")] * (h * w) + [self.special_id("eoi")])

    def coins(self, index: int, epoch: int = 0) -> tuple[bool, bool]:
        """(drop_text, drop_image) of example ``index`` in ``epoch``: both drawn for every example."""
        u = np.random.default_rng([self.seed, epoch, index]).random(2)
        return bool(u[0] < self.drop_text_prob), bool(u[1] < self.drop_image_prob)

    def noisy(self, latents: Tensor, index: int, epoch: int = 0) -> Tensor:
        """``latents`` [tokens, latent_dim] + σ·ε with σ ~ U[0, input_noise] per token (example
        ``index`` of ``epoch``; module docstring)."""
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        sigma = rng.uniform(0.0, self.input_noise, size=(latents.shape[0], 1))
        noise = torch.from_numpy(sigma * rng.standard_normal(tuple(latents.shape)))
        return latents + noise.to(latents.dtype)

    def format(self, encoded: Encoded, index: int, epoch: int = 0) -> Row:
        """The row of one encoded record (module docstring's template, with its dropout coins and
        input noise)."""
        drop_text, drop_image = self.coins(index, epoch)
        h, w = encoded.grid
        text = [] if drop_text else self.text.encode(encoded.text)
        eos = [] if self.text.eos_id is None else [self.text.eos_id]
        perturb = self.input_noise > 0
        target = self.noisy(encoded.target, index, epoch) if perturb else encoded.target
        if encoded.task == "t2i" or (encoded.task == "edit" and drop_image):
            ids = text if encoded.task == "t2i" else []
            return Row(ids=tuple(ids + self.image_ids(h, w) + eos), images=(target,), loss=(True,),
                       task=encoded.task, targets=(encoded.target,) if perturb else None)
        if encoded.task == "edit":
            ids = self.image_ids(h, w) + text + self.image_ids(h, w) + eos
            return Row(ids=tuple(ids), images=(encoded.source, target), loss=(False, True), task="edit",
                       targets=(encoded.source, encoded.target) if perturb else None)
        raise ValueError(f"no NextStep-1 row for task {encoded.task!r}; formatted tasks are {list(TASKS)}")

    # --- images ---------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        param = next(self.image_tokenizer.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def encode(self, images: Sequence[Any]) -> Float[Tensor, "n tokens latent_dim"]:
        """Latents [n, h*w, latent_dim] (fp32, CPU, raster order) of same-size PIL images, one call."""
        pixels = []
        for im in images:
            if not isinstance(im, PILImage.Image):
                raise TypeError(f"record images must be PIL images, got {type(im).__name__}")
            pixels.append(to_model(im.convert("RGB")))
        sizes = {tuple(p.shape[1:]) for p in pixels}
        if len(sizes) > 1:
            raise ValueError(
                f"the images of one batch have different sizes {sorted(sizes)}; render every record at "
                "one size (NextStep1DataConfig.size)"
            )
        d = int(self.image_tokenizer.downsample)
        (height, width), = sizes
        if height % d or width % d:
            raise ValueError(
                f"images are {height}x{width} px, not multiples of the tokenizer's downsample {d}; use a "
                f"size that is a multiple of {d}"
            )
        with torch.no_grad():
            latents = self.image_tokenizer.encode(torch.stack(pixels).to(self._device()))
        check_tensor("latents", latents, ndim=4, kind="float")
        return latents.float().flatten(1, 2).cpu()

    def prepare(self, records: Sequence[Any]) -> list[Encoded]:
        """``Encoded`` records: every image of ``records`` through ``encode`` in one call."""
        images, plans = [], []
        for record in records:
            task = task_of(record)
            if task == "t2i":
                plans.append((task, record.prompt, len(images), None))
                images.append(record.image)
            elif task == "edit":
                plans.append((task, record.instruction, len(images) + 1, len(images)))
                images += [record.source_image, record.target_image]
            else:
                raise ValueError(f"no NextStep-1 row for task {task!r}; formatted tasks are {list(TASKS)}")
        latents = self.encode(images)
        d = int(self.image_tokenizer.downsample)
        grid = (images[0].height // d, images[0].width // d)
        return [Encoded(task=task, text=text, target=latents[t], grid=grid,
                        source=None if s is None else latents[s]) for task, text, t, s in plans]

    def build(self, records: Sequence[Any], indices: Sequence[int], *, epoch: int = 0) -> NextStep1Batch:
        """The batch of ``records`` (record ``n`` has dataset index ``indices[n]``)."""
        if len(records) != len(indices):
            raise ValueError(
                f"got {len(records)} records but {len(indices)} indices; give one index per record"
            )
        return self.collate(self.prepare(records), indices, epoch=epoch)

    def collate(self, encoded: Sequence[Encoded], indices: Sequence[int], *,
                epoch: int = 0) -> NextStep1Batch:
        """Format already-encoded records (e.g. from a cache) and collate them."""
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0:
                raise ValueError(f"indices must be ints >= 0, got {i!r}")
        rows = [self.format(e, int(i), epoch) for e, i in zip(encoded, indices, strict=True)]
        return collate(rows, self.special_id("pad"))

"""ShapeWorld records as NextFlow ``Example``s: the formats of every task, the image encodes (clean
for context, self-corrected for images the model learns to draw), task inversion and CFG dropout.

Shape legend: images = the images of one ``build`` call, h, w = the grid of one schedule step.

Formats (``Text`` ids are the text tokenizer's ids, which are the unified vocabulary's text ids;
``collate`` writes ``<boi>``/``<eoi>`` around each ``Image`` part; "·" marks ``loss=False``)::

    t2i              ·prompt  image  <eos>
    captioning       ·image  caption  <eos>           (also a t2i record under task inversion)
    edit             ·source  ·instruction  target  <eos>
    interleaved      text  image  text  image ...  <eos>
    in_context       ·prompt  ·before ·after ·before ·after ·query  answer  <eos>
    world_knowledge  ·prompt  <think> reasoning </think>  image  <eos>
    text_only        text  <eos>

Every example ends with ``<eos>`` (a target), so a model generating interleaved content learns when
to stop. ``NEXTFLOW_SPECIALS`` is ``SpecialTokens.nextflow()`` plus that ``<eos>``.

Per example (paper §2.2, §A):

- **task inversion**: a t2i record becomes a captioning example with probability
  ``caption_inversion`` (10%: "text-to-image samples were converted into image captioning samples");
- **CFG dropout**: with probability ``cfg_dropout`` the condition text is left out — the prompt of
  t2i (the example is then just the image), the instruction of edit (source image, then target);
- **self-correction** of the image *inputs* (``self_correction_encode``: with probability
  ``self_correction_p`` an image has ``self_correction_fraction`` of the cells of every step drawn
  from its ``self_correction_k`` nearest codes; the targets stay the top-1 of the residual) for the
  images with ``loss=True``; context images (``loss=False``) use the clean ``encode``. A fraction or
  p of 0 turns it off.

Randomness. The inversion and dropout coins of an example come from
``numpy.random.default_rng([seed, epoch, index])`` alone, so a record's format depends on its index
and epoch, never on the batch around it. The self-correction draws come from one torch generator per
``build`` call seeded with ``(seed, epoch, indices)``: a batch is reproduced exactly whenever the
same indices are drawn together (the ``NextFlowBatches`` order is resumable, so resumed runs draw the
same batches). Images are encoded in at most two batched calls (clean context images, self-corrected
target images), in eval mode, without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image as PILImage
from torch import Tensor, nn

from nxcore.config import in_range, integer
from nxcore.schedule import Schedule
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer import SpecialTokens, Vocabulary
from nxcore.tokenizer.dual.self_correction import self_correction_encode
from nxcore.tokenizer.protocol import TextTokenizer
from nxrecipes.data.shapeworld.tasks import task_of
from nxrecipes.nextflow.sequence import Example, Image, Text
from nxrecipes.tokenizer.data import to_model

__all__ = ["EOS", "NEXTFLOW_SPECIALS", "TASK_FORMATS", "ExampleBuilder"]

EOS = "<eos>"
NEXTFLOW_SPECIALS = SpecialTokens.nextflow().replace(eos=EOS)
"""NextFlow's special tokens (pad, ``<boi>``, ``<eoi>``, ``<think>``, ``</think>``) and ``<eos>``."""

TASK_FORMATS: tuple[str, ...] = (
    "t2i", "captioning", "edit", "interleaved", "in_context", "world_knowledge", "text_only",
)
"""The record tasks ``ExampleBuilder`` formats (module docstring)."""

_SC_SALT = 0x5C  # keeps the self-correction stream apart from the per-example coin streams


@attrs.frozen
class _Pending:
    """An image part waiting for its codes: which encode it belongs to and its row there."""

    clean: bool
    row: int
    loss: bool


def _schedule(value: Any) -> ScaleSchedule:
    return value if isinstance(value, ScaleSchedule) else Schedule(value)


@attrs.frozen(kw_only=True, eq=False)
class ExampleBuilder:
    """Makes ``Example``s from ShapeWorld records (module docstring): ``build(records, indices)``.

    ``text``: the text tokenizer whose ids are the vocabulary's text ids; ``vocabulary``: the unified
    vocabulary (it must hold ``<boi>``, ``<eoi>``, ``<eos>``, ``<think>`` and ``</think>``);
    ``image_tokenizer``: the frozen image tokenizer (put in eval mode, gradients off);
    ``schedule``: the scale schedule of every image. Images are resized (Lanczos) to the
    schedule's final grid times the tokenizer's ``downsample`` when they are another size.
    """

    text: TextTokenizer
    vocabulary: Vocabulary
    image_tokenizer: nn.Module
    schedule: ScaleSchedule = attrs.field(converter=_schedule)
    self_correction_p: float = attrs.field(default=1.0, validator=in_range(0.0, 1.0))
    self_correction_fraction: float = attrs.field(default=0.6, validator=in_range(0.0, 1.0))
    self_correction_k: int = attrs.field(default=8, validator=integer(at_least=1))
    cfg_dropout: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    caption_inversion: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0))
    seed: int = attrs.field(default=0, validator=integer(at_least=0))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.vocabulary, Vocabulary):
            raise TypeError(f"vocabulary must be a Vocabulary, got {type(self.vocabulary).__name__}")
        if not isinstance(self.image_tokenizer, nn.Module) or not hasattr(self.image_tokenizer, "encode"):
            raise TypeError(
                "image_tokenizer must be an image tokenizer module (DualCodebookTokenizer, "
                f"MultiScaleVQTokenizer), got {type(self.image_tokenizer).__name__}"
            )
        missing = [s for s in NEXTFLOW_SPECIALS.strings if s not in self.vocabulary.special_tokens]
        if missing:
            raise ValueError(
                f"the vocabulary lacks the special tokens {missing}; build it with "
                "Vocabulary.from_tokenizer(text, codebook_size, NEXTFLOW_SPECIALS)"
            )
        size = getattr(self.image_tokenizer, "codebook_size", None)
        if size != self.vocabulary.codebook_size:
            raise ValueError(
                f"the image tokenizer has {size} codes but the vocabulary has codebook_size "
                f"{self.vocabulary.codebook_size}; build the vocabulary from this tokenizer"
            )
        if self.self_correction_k > size:
            raise ValueError(
                f"self_correction_k = {self.self_correction_k} is more than the codebook's {size} codes; "
                f"use k <= {size}"
            )
        self.image_tokenizer.eval()
        self.image_tokenizer.requires_grad_(False)

    # --- sizes and switches ---------------------------------------------------------------------

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of the images the tokenizer encodes with ``schedule``."""
        (gh, gw), d = self.schedule.grid, int(self.image_tokenizer.downsample)
        return gh * d, gw * d

    @property
    def self_correction(self) -> bool:
        """Whether loss images get self-corrected inputs (p and fraction both > 0)."""
        return self.self_correction_p > 0 and self.self_correction_fraction > 0

    def _id(self, name: str) -> int:
        return self.vocabulary.special_id(name)

    def _text(self, text: str, loss: bool) -> Text:
        return Text(self.text.encode(text), loss)

    # --- formats ---------------------------------------------------------------------------------

    def coins(self, index: int, epoch: int = 0) -> tuple[bool, bool]:
        """(invert, drop) of example ``index``: the task-inversion and CFG-dropout coins (both drawn
        for every example, in this order, so the two rates are independent of the task mix)."""
        u = np.random.default_rng([self.seed, epoch, index]).random(2)
        return bool(u[0] < self.caption_inversion), bool(u[1] < self.cfg_dropout)

    def plan(self, record: Any, index: int, epoch: int = 0) -> tuple[str, list[Text | tuple[Any, bool]]]:
        """(task, parts) of one record: ``Text`` parts, and (PIL image, loss) for each image."""
        task = task_of(record)
        invert, drop = self.coins(index, epoch)
        eos = Text((self._id(EOS),), True)
        parts: list[Text | tuple[Any, bool]]
        if task == "t2i" and invert:
            task = "captioning"
            parts = [(record.image, False), self._text(record.prompt, True)]
        elif task == "t2i":
            parts = ([] if drop else [self._text(record.prompt, False)]) + [(record.image, True)]
        elif task == "captioning":
            parts = [(record.image, False), self._text(record.caption, True)]
        elif task == "edit":
            parts = [(record.source_image, False)]
            parts += [] if drop else [self._text(record.instruction, False)]
            parts += [(record.target_image, True)]
        elif task == "interleaved":
            parts = [self._text(p, True) if isinstance(p, str) else (p, True) for p in record.parts]
        elif task == "in_context":
            (b1, a1), (b2, a2) = record.examples
            context = (b1, a1, b2, a2, record.query)
            parts = [self._text(record.prompt, False)] + [(im, False) for im in context]
            parts += [(record.answer, True)]
        elif task == "world_knowledge":
            think = (self._id("<think>"), *self.text.encode(record.reasoning), self._id("</think>"))
            parts = [self._text(record.prompt, False), Text(think, True), (record.image, True)]
        elif task == "text_only":
            parts = [self._text(record.text, True)]
        else:
            raise ValueError(
                f"no NextFlow format for task {task!r}; formatted tasks are {list(TASK_FORMATS)}"
            )
        return task, parts + [eos]

    # --- images ----------------------------------------------------------------------------------

    def _pixels(self, images: Sequence[Any]) -> Tensor:
        """float32 [images, 3, height, width] in [-1, 1], resized to ``image_size`` when needed."""
        h, w = self.image_size
        out = []
        for im in images:
            if not isinstance(im, PILImage.Image):
                raise TypeError(f"record images must be PIL images, got {type(im).__name__}")
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), PILImage.Resampling.LANCZOS)
            out.append(to_model(im))
        return torch.stack(out)

    def _device(self) -> torch.device:
        param = next(self.image_tokenizer.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def encode(self, images: Sequence[Any], *, correct: bool, generator: torch.Generator | None = None
               ) -> tuple[list[Tensor], list[Tensor]]:
        """(inputs, targets): int64 [images, h, w] per step, on the CPU. ``correct``: self-correct
        the inputs (module docstring), else both are the clean ``encode``."""
        x = self._pixels(images).to(self._device())
        with torch.no_grad():
            if correct:
                sc = self_correction_encode(
                    self.image_tokenizer, x, self.schedule, p=self.self_correction_p,
                    fraction=self.self_correction_fraction, k=self.self_correction_k, generator=generator,
                )
                inputs, targets = sc.inputs, sc.targets
            else:
                inputs = targets = self.image_tokenizer.encode(x, self.schedule)
        return [g.long().cpu() for g in inputs], [g.long().cpu() for g in targets]

    def generator(self, indices: Sequence[int], epoch: int = 0) -> torch.Generator:
        """The self-correction generator of one ``build`` call (module docstring)."""
        seed = np.random.default_rng([self.seed, epoch, _SC_SALT, *map(int, indices)]).integers(2**63)
        return torch.Generator().manual_seed(int(seed))

    # --- the whole call --------------------------------------------------------------------------

    def build(self, records: Sequence[Any], indices: Sequence[int], *, epoch: int = 0) -> list[Example]:
        """The examples of ``records`` (record ``n`` has dataset index ``indices[n]``; ``epoch`` is
        mixed into every seed so a record drawn again in a later epoch gets fresh coins)."""
        if len(records) != len(indices):
            raise ValueError(
                f"got {len(records)} records but {len(indices)} indices; give one index per record"
            )
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, int | np.integer) or i < 0:
                raise ValueError(f"indices must be ints >= 0, got {i!r}")
        plans = [self.plan(r, int(i), epoch) for r, i in zip(records, indices, strict=True)]
        groups: dict[bool, list[Any]] = {True: [], False: []}  # clean?
        slots: list[list[Text | _Pending]] = []
        for _, parts in plans:
            row: list[Text | _Pending] = []
            for part in parts:
                if isinstance(part, Text):
                    row.append(part)
                    continue
                image, loss = part
                clean = not (loss and self.self_correction)
                row.append(_Pending(clean, len(groups[clean]), loss))
                groups[clean].append(image)
            slots.append(row)
        codes: dict[bool, tuple[list[Tensor], list[Tensor]]] = {}
        if groups[True]:
            codes[True] = self.encode(groups[True], correct=False)
        if groups[False]:
            codes[False] = self.encode(groups[False], correct=True, generator=self.generator(indices, epoch))
        examples = []
        for (task, _), row in zip(plans, slots, strict=True):
            parts = []
            for part in row:
                if isinstance(part, Text):
                    parts.append(part)
                    continue
                inputs, targets = codes[part.clean]
                parts.append(Image(self.schedule, tuple(g[part.row] for g in inputs),
                                   tuple(g[part.row] for g in targets), part.loss))
            examples.append(Example(tuple(parts), task))
        return examples

"""``LearnedShapeReward``: a small network that predicts ShapeEval's partial credit of (image, prompt).

Two parts, both learned (``train.train_learned_reward``):

1. **Image encoder** (a CNN, prompt-independent): the image, resized to ``image_size``, becomes a
   grid of ``image_size / 8`` cells a side. Each cell predicts whether an object's centre lies in it
   (objectness), that object's colour and shape (softmaxes over the palette and the shapes) and the
   centre's offset within the cell. ShapeWorld keeps object centres at least a quarter of the
   image apart, so no cell holds two centres. Training supervises these maps with the scene's truth.
2. **Scorer** (an MLP): for a prompt's ``Spec`` (``captions.parse_prompt``), each object query
   gets a soft match map (the probability that a cell holds an object of the query's shape and
   colour) whose sum is a soft count; a position prompt's relation gets a soft truth value, the
   best over pairs of matched cells of their match probabilities times a sigmoid of how far the
   centres are apart along the relation's axis beyond ``RELATION_MARGIN``. The MLP reads these
   (``evidence``: counts against asked counts, the relation) with an encoding of the spec
   (category, shapes, colours, counts, relation) and gives a logit; the reward is its sigmoid.

Computing the image part once and scoring many prompts against it is what makes training cheap:
each training image is paired with several prompts per step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.config import Config, config, integer
from nxcore.reward.callable import check_reward_inputs
from nxcore.reward.protocol import RewardModel
from nxcore.typing import Float, typecheck
from nxrecipes.data.shapeworld.spec import CATEGORIES, Spec
from nxrecipes.data.shapeworld.world import (
    COLOURS,
    MAX_OBJECTS,
    RELATION_MARGIN,
    RELATIONS,
    SHAPES,
    check_image_size,
)
from nxrecipes.eval.shapeeval.reward import prompt_spec

__all__ = [
    "CELL",
    "LearnedShapeReward",
    "LearnedShapeRewardConfig",
    "SpecBatch",
    "spec_batch",
]

CELL = 8  # pixels per grid cell along each side, at image_size
RELATION_SOFTNESS = 0.02  # temperature (normalised units) of the soft relation test
_COLOURS = tuple(COLOURS)
NUM_CLASSES = len(_COLOURS) * len(SHAPES)  # (colour, shape) classes, colour-major: colour * 5 + shape
_SLOT = len(SHAPES) + len(_COLOURS) + 1 + 4  # shape, colour (or any), count 1-4
SPEC_DIM = len(CATEGORIES) + 2 * _SLOT + 1 + len(RELATIONS) + 1
_STATS = 11  # per query (2 each): count, asked count, difference, exact, at least; relation
_MAP_CHANNELS = 1 + len(_COLOURS) + len(SHAPES) + 2  # objectness, colour, shape, offset (x, y)


def _image_size(instance: object, attribute: attrs.Attribute, value: object) -> None:
    check_image_size(value)
    if value % CELL:
        raise ValueError(
            f"LearnedShapeRewardConfig.image_size = {value} must be a multiple of {CELL} (the grid cell); "
            f"use {max(32, value - value % CELL)}"
        )


def _width(instance: object, attribute: attrs.Attribute, value: object) -> None:
    integer(at_least=16)(instance, attribute, value)
    if value % 16:
        raise ValueError(
            f"LearnedShapeRewardConfig.width = {value} must be a multiple of 16 (the encoder's widths "
            f"width, 1.5 * width and 2 * width are normalised in groups of 8); use {value - value % 16 or 16}"
        )


@config
class LearnedShapeRewardConfig(Config):
    """``image_size``: the side images are scored at (others are resized to it); ``width``: the
    encoder's base channel count; ``hidden``: the scorer MLP's width."""

    image_size: int = attrs.field(default=64, validator=_image_size)
    width: int = attrs.field(default=32, validator=_width)
    hidden: int = attrs.field(default=64, validator=integer(at_least=1))

    @property
    def grid(self) -> int:
        return self.image_size // CELL

    def build(self) -> LearnedShapeReward:
        return LearnedShapeReward(self)


@attrs.frozen
class SpecBatch:
    """Prompt specs as tensors: ``features`` [P, SPEC_DIM] (the encoding the MLP reads), ``match``
    [P, 2, NUM_CLASSES] (1 where a (colour, shape) class matches query 0 / 1; zeros for a missing
    second query), ``counts`` [P, 2] (asked counts, 0 when missing), ``relation`` [P] (index into
    ``RELATIONS``, ``len(RELATIONS)`` for none)."""

    features: Tensor
    match: Tensor
    counts: Tensor
    relation: Tensor

    def __len__(self) -> int:
        return self.features.shape[0]


@functools.lru_cache(maxsize=8192)
def _spec_tensors(spec: Spec) -> tuple[Tensor, Tensor, Tensor, int]:
    features = torch.zeros(SPEC_DIM)
    match = torch.zeros(2, NUM_CLASSES)
    counts = torch.zeros(2)
    features[CATEGORIES.index(spec.category)] = 1.0
    for k, query in enumerate(spec.objects):
        at = len(CATEGORIES) + k * _SLOT
        features[at + SHAPES.index(query.shape)] = 1.0
        at += len(SHAPES)
        features[at + (_COLOURS.index(query.colour) if query.colour else len(_COLOURS))] = 1.0
        at += len(_COLOURS) + 1
        features[at + query.count - 1] = 1.0
        counts[k] = query.count
        for c, colour in enumerate(_COLOURS):
            if query.matches(query.shape, colour):
                match[k, c * len(SHAPES) + SHAPES.index(query.shape)] = 1.0
    at = len(CATEGORIES) + 2 * _SLOT
    features[at] = float(len(spec.objects) == 2)
    relation = RELATIONS.index(spec.relation) if spec.relation is not None else len(RELATIONS)
    features[at + 1 + relation] = 1.0
    return features, match, counts, relation


def spec_batch(specs: Sequence[Spec], device: torch.device | str = "cpu") -> SpecBatch:
    """``specs`` as a ``SpecBatch`` on ``device``."""
    if not specs:
        raise ValueError("spec_batch needs at least one Spec")
    for i, spec in enumerate(specs):
        if not isinstance(spec, Spec):
            raise TypeError(f"specs[{i}] must be a Spec (parse a prompt with parse_prompt), got "
                            f"{type(spec).__name__}")
    parts = [_spec_tensors(s) for s in specs]
    return SpecBatch(
        features=torch.stack([p[0] for p in parts]).to(device),
        match=torch.stack([p[1] for p in parts]).to(device),
        counts=torch.stack([p[2] for p in parts]).to(device),
        relation=torch.tensor([p[3] for p in parts], dtype=torch.long, device=device),
    )


def _block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]


class LearnedShapeReward(nn.Module, RewardModel):
    """A learned ShapeWorld reward: images + ShapeWorld prompts -> predicted ShapeEval partial
    credit in [0, 1] (design in the module docstring; train it with ``train_learned_reward``).

    As a ``RewardModel`` (``model(images, prompts)``): images float [batch, 3, H, W] in [0, 1] of any
    size are resized (bilinear, antialiased) to ``config.image_size`` when they differ, and scored
    on the model's device without gradients; the result is float32 [batch] on the images' device.
    Prompts ``parse_prompt`` cannot read raise ``ValueError`` naming them. Save and load it like any
    component: ``save_pretrained(model, dir)`` / ``from_pretrained(dir)``.
    """

    def __init__(self, config: LearnedShapeRewardConfig | None = None) -> None:
        super().__init__()
        config = LearnedShapeRewardConfig() if config is None else config
        if not isinstance(config, LearnedShapeRewardConfig):
            raise TypeError(f"config must be a LearnedShapeRewardConfig, got {type(config).__name__}")
        self.config = config
        w, m = config.width, config.width * 3 // 2
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, 4), nn.GroupNorm(8, w), nn.SiLU(),  # 4 x 4 patches
            *_block(w, m), *_block(m, m),
            *_block(m, 2 * w, stride=2), *_block(2 * w, 2 * w),  # one cell per CELL x CELL pixels
            nn.Conv2d(2 * w, _MAP_CHANNELS, 1),
        )
        self.scorer = nn.Sequential(
            nn.Linear(SPEC_DIM + _STATS, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, config.hidden), nn.SiLU(),
            nn.Linear(config.hidden, 1),
        )
        g = config.grid
        centres = torch.arange(g, dtype=torch.float32) + 0.5
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("distinct", 1.0 - torch.eye(g * g), persistent=False)

    @classmethod
    def examples(cls) -> list[LearnedShapeReward]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return [
                cls(LearnedShapeRewardConfig(image_size=32, width=16, hidden=16)),
                cls(LearnedShapeRewardConfig(image_size=48, width=16, hidden=8)),
            ]

    # --- the two parts, differentiable (training uses these) --------------------------------

    def maps(self, images: Float[Tensor, "batch 3 size size"]) -> tuple[Tensor, Tensor]:
        """(logits [batch, 12, grid, grid]: objectness, 6 colours, 5 shapes; offsets [batch, 2, grid,
        grid] in (-0.5, 0.5) cells: the centre's x, y relative to the cell's middle) of images at
        ``image_size``."""
        out = self.encoder(images * 2.0 - 1.0)
        return out[:, :-2], torch.tanh(out[:, -2:]) * 0.5

    def class_probs(self, logits: Tensor) -> Tensor:
        """[batch, NUM_CLASSES, cells]: probability that a cell holds the centre of an object of
        each (colour, shape) class."""
        n = len(_COLOURS)
        obj = torch.sigmoid(logits[:, 0])
        colour = logits[:, 1:1 + n].softmax(1)
        shape = logits[:, 1 + n:].softmax(1)
        probs = obj[:, None, None] * colour[:, :, None] * shape[:, None, :]  # [b, colours, shapes, g, g]
        return probs.flatten(1, 2).flatten(2)

    def evidence(self, logits: Tensor, offsets: Tensor, owner: Tensor, specs: SpecBatch) -> Tensor:
        """What the scorer reads about ``specs`` (P of them) in image ``owner[p]`` of the maps,
        [P, 11]: for each of the two queries (zeros for a missing second one), the soft count of
        its matches (capped at ``MAX_OBJECTS + 1``), the asked count, their difference (clamped to
        [-2, 2]), ``exact`` (1 - |difference|, floored at 0) and ``at_least`` (difference + 1 in
        [0, 1]), each as [P, 2]; then the relation's soft truth [P, 1] (0 without a relation).
        Bounded features keep counts the training data rarely shows (a prompt asking for one
        circle in an image of four) inside the range the scorer has learnt."""
        g = self.config.grid
        probs = self.class_probs(logits)[owner]  # [P, classes, cells]
        matched = torch.einsum("pkc,pcn->pkn", specs.match.to(probs.dtype), probs)  # [P, 2, cells]
        counts = matched.sum(-1)
        asked = specs.counts.to(counts.dtype)
        relation = counts.new_zeros(len(specs))
        which = (specs.relation < len(RELATIONS)).nonzero().squeeze(-1)
        if len(which):
            rel = specs.relation[which]
            xs = ((self.centres[None, None, :] + offsets[:, 0]) / g).flatten(1)  # [batch, cells]
            ys = ((self.centres[None, :, None] + offsets[:, 1]) / g).flatten(1)
            axis = torch.where((rel < 2)[:, None], xs[owner[which]], ys[owner[which]])  # left/right: x
            sign = torch.where(rel % 2 == 0, 1.0, -1.0).to(axis.dtype)[:, None, None]  # left of, above: +
            ahead = sign * (axis[:, None, :] - axis[:, :, None])  # [S, a, b]: b's coord - a's, signed
            holds = torch.sigmoid((ahead - RELATION_MARGIN) / RELATION_SOFTNESS) * self.distinct
            pairs = matched[which, 0, :, None] * matched[which, 1, None, :] * holds
            relation = relation.index_put((which,), pairs.flatten(1).amax(-1))
        diff = counts - asked
        exact = (1.0 - diff.abs()).clamp_min(0.0)  # 1 when the count is the asked one, 0 when 1 off
        at_least = (diff + 1.0).clamp(0.0, 1.0)  # 1 when at least the asked count, 0 when 1 short
        present = (asked > 0).to(counts.dtype)  # zero the features of a missing second query
        per_query = [counts.clamp(max=MAX_OBJECTS + 1), asked, diff.clamp(-2.0, 2.0), exact, at_least]
        return torch.cat([f * present for f in per_query] + [relation[:, None]], 1)

    def score_logits(self, logits: Tensor, offsets: Tensor, owner: Tensor, specs: SpecBatch) -> Tensor:
        """Logits [P] of the predicted credit of ``specs`` (P of them) against image ``owner[p]``
        of the maps: the scorer MLP on the spec's encoding and its ``evidence``."""
        stats = self.evidence(logits, offsets, owner, specs)
        return self.scorer(torch.cat([specs.features.to(stats.dtype), stats], 1)).squeeze(-1)

    # --- the RewardModel ------------------------------------------------------------------------

    def prepare(self, images: Tensor) -> Tensor:
        """Images [batch, 3, H, W] in [0, 1] as the encoder takes them: on the model's device and
        dtype, clamped to [0, 1], resized to ``image_size`` when H or W differ."""
        param = next(self.parameters())
        x = images.detach().to(device=param.device, dtype=param.dtype).clamp(0.0, 1.0)
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x

    @typecheck
    def forward(
        self, images: Float[Tensor, "batch 3 height width"], prompts: Sequence[str]
    ) -> Float[Tensor, " batch"]:
        check_reward_inputs(images, prompts)
        specs = [prompt_spec(p) for p in prompts]
        bad = (~torch.isfinite(images.detach())).flatten(1).any(1)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise ValueError(f"images[{first}] contains NaN or inf; rewards need finite pixels")
        with torch.no_grad():
            x = self.prepare(images)
            logits, offsets = self.maps(x)
            owner = torch.arange(x.shape[0], device=x.device)
            scores = torch.sigmoid(self.score_logits(logits, offsets, owner, spec_batch(specs, x.device)))
        return scores.float().to(images.device)

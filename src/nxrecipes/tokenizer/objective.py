"""``TokenizerObjective``: the one training interface every image tokenizer fits.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels
    h, w            the code grid of one scale

An objective knows how to call one kind of tokenizer; the trainer, the evaluation and the CLI know
nothing else about it::

    out = objective.loss(model, images)         # TokenizerLoss: total, parts, codes
    rec = objective.reconstruct(model, images)  # Reconstruction: images, codes (deterministic)

- ``loss``: one training forward. ``total`` is the scalar to minimise; ``parts`` are named scalars
  to log (``loss/<name>`` in ``metrics.jsonl``); ``codes`` are the per-scale indices of a discrete
  tokenizer (``None`` for a continuous one), for codebook statistics.
- ``reconstruct``: the inference path (no noise, no sampling): encode then decode. ``codes`` as above.

Objectives are frozen configs (JSON round trip) holding the loss hyper-parameters and, for discrete
tokenizers, the scale ``schedule``; ``build()`` returns the objective itself. References:
``AutoencoderObjective`` (NextStep-1 autoencoder, ``reconstruction_loss``),
``MultiScaleVQObjective`` (the VAR-compatible multi-scale VQ, or any tokenizer whose
``forward(images, schedule)`` returns ``reconstruction``, ``loss`` and ``codes``, as
``MultiScaleVQOutput`` does) and ``DualCodebookObjective`` (NextFlow's dual-codebook tokenizer,
whose forward weighs its own terms into ``total``).

An objective may also train in stages (``StagedObjective``: ``stage_index`` and ``enter_stage``,
which the trainer calls before updates); ``DualCodebookObjective.stages`` is the reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Self, runtime_checkable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.config import Config, config, finite_number, non_negative
from nxcore.schedule import Schedule
from nxcore.tokenizer.autoencoder import NextStepAutoencoder, reconstruction_loss
from nxcore.typing import Float, Int

__all__ = [
    "AutoencoderObjective",
    "DualCodebookObjective",
    "MultiScaleVQObjective",
    "Reconstruction",
    "StagedObjective",
    "TokenizerLoss",
    "TokenizerObjective",
    "check_objective",
    "no_grad_reconstruct",
    "square_schedule",
]


@attrs.frozen(kw_only=True)
class TokenizerLoss:
    """One training forward: ``total`` (scalar with grad), ``parts`` (named detached scalars to
    log), ``codes`` (one int grid per scale, or None) and, when the forward gives it, the
    ``reconstruction`` [batch, 3, H, W] (detached)."""

    total: Tensor
    parts: Mapping[str, Tensor]
    codes: Sequence[Int[Tensor, "batch h w"]] | None = None
    reconstruction: Float[Tensor, "batch channels height width"] | None = None


@attrs.frozen(kw_only=True)
class Reconstruction:
    """The inference round trip: ``images`` (decoded, not clamped) and ``codes`` (or None)."""

    images: Float[Tensor, "batch channels height width"]
    codes: Sequence[Int[Tensor, "batch h w"]] | None = None


@runtime_checkable
class TokenizerObjective(Protocol):
    """How to train and run one kind of image tokenizer (module docstring). References:
    ``AutoencoderObjective``, ``MultiScaleVQObjective``."""

    def loss(self, model: nn.Module, images: Tensor) -> TokenizerLoss: ...

    def reconstruct(self, model: nn.Module, images: Tensor) -> Reconstruction: ...


@runtime_checkable
class StagedObjective(Protocol):
    """An objective that trains its model in stages (reference: ``DualCodebookObjective.stages``).

    Before every update the trainer asks ``stage_index(step, total)`` (``total``: the updates of the
    current plan) and, when the answer is past the stage it is in (or it is in none yet, as at the
    start and after a resume), calls ``enter_stage(model, index)``, which makes only that stage's
    parameters trainable and returns the stage's name. Stages only move forward. ``stage_index``
    returns None when the objective has no stages (the model trains as built)."""

    def stage_index(self, step: int, total: int) -> int | None: ...

    def enter_stage(self, model: nn.Module, index: int) -> str: ...


def _check_images(images: object) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(
            f"images must be a float tensor [batch, channels, height, width] in [-1, 1], got {got}"
        )
    return images


# --- the continuous autoencoder ---------------------------------------------------------------------


@config
class AutoencoderObjective(Config, TokenizerObjective):
    """NextStep-1's autoencoder loss: L2 reconstruction of a latent perturbed by α·ε, α ~ U[0, γ],
    plus ``kl_weight`` times the KL of the posterior (``nxcore.tokenizer.reconstruction_loss``).

    ``gamma`` = 0.2 is NextStep-1's noise (latents robust for generation, at some cost in PSNR); 0
    trains a plain autoencoder. ``sample`` draws z from the posterior instead of its mean.
    """

    kl_weight: float = attrs.field(default=0.0, validator=[finite_number(), non_negative()])
    gamma: float = attrs.field(default=0.0, validator=[finite_number(), non_negative()])
    sample: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def build(self) -> Self:
        return self

    def _model(self, model: object) -> NextStepAutoencoder:
        if not isinstance(model, NextStepAutoencoder):
            raise TypeError(
                f"AutoencoderObjective trains a NextStepAutoencoder, got {type(model).__name__}; pick "
                "the objective of your tokenizer (MultiScaleVQObjective for multi-scale VQ)"
            )
        return model

    def loss(self, model: nn.Module, images: Tensor) -> TokenizerLoss:
        ae = self._model(model)
        images = _check_images(images)
        out = reconstruction_loss(ae, images, kl_weight=self.kl_weight, gamma=self.gamma, sample=self.sample)
        parts = {"l2": out.l2.detach()}
        if self.kl_weight > 0:
            parts["kl"] = out.kl.detach()
        return TokenizerLoss(total=out.total, parts=parts)

    def reconstruct(self, model: nn.Module, images: Tensor) -> Reconstruction:
        ae = self._model(model)
        return Reconstruction(images=ae(_check_images(images)), codes=None)


# --- discrete multi-scale tokenizers ----------------------------------------------------------------


def square_schedule(grid: int) -> tuple[tuple[int, int], ...]:
    """VAR-style square steps ending at ``grid``: 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, then +25%
    (rounded up) per step, cut at ``grid``; the last step is always ``grid``."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be an int >= 1 (the final code grid side), got {grid!r}")
    sides = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
    while sides[-1] < grid:
        sides.append(-(-sides[-1] * 5 // 4))
    kept = [s for s in sides if s < grid] + [grid]
    return tuple((s, s) for s in kept)


def _steps(value: Any) -> tuple[tuple[int, int], ...]:
    return Schedule(value).steps if not isinstance(value, Schedule) else value.steps


@config
class MultiScaleVQObjective(Config, TokenizerObjective):
    """Multi-scale residual VQ: ``l2_weight·MSE + l1_weight·L1`` of the straight-through
    reconstruction plus ``vq_weight`` times the tokenizer's VQ loss (``codebook + β·commitment``).

    ``steps``: the scale schedule the tokenizer is trained and evaluated on (its last step is the
    latent grid: image side / ``downsample``). Works for any tokenizer whose ``forward(images,
    schedule)`` returns ``reconstruction``, ``loss`` and ``codes``; scalar attributes named
    ``*_loss`` are logged as parts (``codebook``, ``commitment``).
    """

    steps: tuple[tuple[int, int], ...] = attrs.field(converter=_steps)
    l2_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])
    l1_weight: float = attrs.field(default=0.0, validator=[finite_number(), non_negative()])
    vq_weight: float = attrs.field(default=1.0, validator=[finite_number(), non_negative()])

    def build(self) -> Self:
        return self

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.steps)

    def loss(self, model: nn.Module, images: Tensor) -> TokenizerLoss:
        images = _check_images(images)
        out = model(images, self.schedule)
        missing = [a for a in ("reconstruction", "loss", "codes") if not hasattr(out, a)]
        if missing:
            raise TypeError(
                f"{type(model).__name__}(images, schedule) returned {type(out).__name__}, which lacks "
                f"{missing}; MultiScaleVQObjective needs a training forward like MultiScaleVQTokenizer's"
            )
        recon = out.reconstruction.float()
        l2 = F.mse_loss(recon, images.float())
        total = self.l2_weight * l2 + self.vq_weight * out.loss
        parts = {"l2": l2.detach(), "vq": out.loss.detach()}
        if self.l1_weight > 0:
            l1 = F.l1_loss(recon, images.float())
            total = total + self.l1_weight * l1
            parts["l1"] = l1.detach()
        for name in dir(out):
            value = getattr(out, name, None)
            if name.endswith("_loss") and isinstance(value, Tensor) and value.numel() == 1:
                parts[name.removesuffix("_loss")] = value.detach()
        return TokenizerLoss(total=total, parts=parts, reconstruction=out.reconstruction.detach(),
                             codes=list(out.codes))

    def reconstruct(self, model: nn.Module, images: Tensor) -> Reconstruction:
        return _discrete_reconstruct(model, images, self.schedule)


def _discrete_reconstruct(model: nn.Module, images: Tensor, schedule: Schedule) -> Reconstruction:
    images = _check_images(images)
    encode = getattr(model, "encode", None)
    if encode is None:
        raise TypeError(
            f"{type(model).__name__} has no encode(images, schedule); is it a discrete tokenizer?"
        )
    codes = encode(images, schedule)
    return Reconstruction(images=model.decode(codes, schedule), codes=list(codes))


def _stage_list(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(tuple(item) if isinstance(item, list) else item for item in value)
    return value


def _check_stages(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    from nxcore.tokenizer.dual import STAGES

    example = "(('pixel', 0.5), ('joint', 0.5))"
    if not isinstance(value, tuple):
        raise TypeError(f"DualCodebookObjective.stages must be a tuple of (stage, fraction) pairs such as "
                        f"{example}, got {type(value).__name__}")
    for i, item in enumerate(value):
        ok = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
        if ok:
            name, fraction = item
            ok = (isinstance(fraction, int | float) and not isinstance(fraction, bool)
                  and 0 < fraction <= 1)
        if not ok:
            raise ValueError(f"DualCodebookObjective.stages[{i}] = {item!r} is not allowed; expected a "
                             f"(stage, fraction) pair with a fraction in (0, 1], e.g. {example}")
        if name not in STAGES:
            raise ValueError(f"DualCodebookObjective.stages[{i}] names stage {name!r}; the stages are "
                             f"{list(STAGES)} (DualCodebookTokenizer.set_stage)")
    total = sum(f for _, f in value)
    if value and abs(total - 1) > 1e-6:
        raise ValueError(f"DualCodebookObjective.stages: the fractions sum to {total:g}, not 1; give each "
                         f"stage its share of the updates, e.g. {example}")


@config
class DualCodebookObjective(Config, TokenizerObjective, StagedObjective):
    """NextFlow's dual-codebook tokenizer: its own training forward's ``total`` (VQ + semantic
    cosine + L2 reconstruction + optional perceptual, weighted by its config), the named terms of
    ``DualCodebookOutput.losses`` as parts, and the codes of every kept scale (scale dropping,
    ``config.scale_drop``, applies in training). ``steps``: the schedule, as for
    ``MultiScaleVQObjective``.

    ``stages``: branch-wise staged training (NextFlow §3.1), ``(stage, fraction)`` pairs in order,
    the fractions of the run's updates summing to 1, each stage a ``DualCodebookTokenizer.STAGES``
    name (``"pixel"``, ``"semantic"``, ``"joint"``, ``"decoder"``); e.g. ``(("pixel", 0.3),
    ("joint", 0.7))``. The trainer enters each stage at its first update (``StagedObjective``),
    resumed runs included. Empty (default): every branch trains throughout, as built.

    ``truncate``: the share of training forwards that quantize and decode only the first j steps, j
    uniform in 1..K-1 (``keep_steps``), so the decoder learns to draw the image so far and the coarse
    steps must carry it; the other forwards use the tokenizer's own choice (all steps, or its
    ``scale_drop``). 0 (default): never.
    """

    steps: tuple[tuple[int, int], ...] = attrs.field(converter=_steps)
    stages: tuple[tuple[str, float], ...] = attrs.field(default=(), converter=_stage_list,
                                                        validator=_check_stages)
    truncate: float = attrs.field(default=0.0, validator=[finite_number(at_most=1.0), non_negative()])

    def build(self) -> Self:
        return self

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.steps)

    def loss(self, model: nn.Module, images: Tensor) -> TokenizerLoss:
        from nxcore.tokenizer.dual import DualCodebookTokenizer

        if not isinstance(model, DualCodebookTokenizer):
            raise TypeError(
                f"DualCodebookObjective trains a DualCodebookTokenizer, got {type(model).__name__}; pick "
                "the objective of your tokenizer (MultiScaleVQObjective for the VAR-style VQ)"
            )
        out = model(_check_images(images), self.schedule, keep=self.keep_steps())
        parts = {name: value.detach() for name, value in out.losses.items()}
        parts["vq"] = out.loss.detach()
        return TokenizerLoss(total=out.total, parts=parts, codes=list(out.codes),
                             reconstruction=out.reconstruction.detach())

    def keep_steps(self, generator: torch.Generator | None = None) -> tuple[int, ...] | None:
        """The steps one training forward keeps: with probability ``truncate`` the first j, j uniform in
        1..K-1; otherwise None (the tokenizer decides)."""
        k = len(self.steps)
        if k < 2 or self.truncate == 0 or float(torch.rand((), generator=generator)) >= self.truncate:
            return None
        return tuple(range(int(torch.randint(1, k, (), generator=generator))))

    def reconstruct(self, model: nn.Module, images: Tensor) -> Reconstruction:
        return _discrete_reconstruct(model, images, self.schedule)

    def stage_index(self, step: int, total: int) -> int | None:
        """The stage of update ``step`` (0-based) of ``total``: stage i covers the updates from
        ``round(c_i·total)`` up to ``round(c_{i+1}·total)``, c the running sums of the fractions (the
        last stage runs to the end); None without stages."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"total must be an int >= 1 (the planned updates), got {total!r}")
        if not self.stages:
            return None
        end = 0.0
        for i, (_, fraction) in enumerate(self.stages[:-1]):
            end += fraction
            if step < round(end * total):
                return i
        return len(self.stages) - 1

    def enter_stage(self, model: nn.Module, index: int) -> str:
        """``model.set_stage`` of ``stages[index]``: only that stage's branches stay trainable."""
        from nxcore.tokenizer.dual import DualCodebookTokenizer

        if not isinstance(model, DualCodebookTokenizer):
            raise TypeError(
                f"DualCodebookObjective trains a DualCodebookTokenizer, got {type(model).__name__}"
            )
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.stages):
            raise ValueError(f"index must be a stage index in [0, {len(self.stages)}), got {index!r}")
        name = self.stages[index][0]
        model.set_stage(name)
        return name


def check_objective(objective: object) -> TokenizerObjective:
    """``objective`` checked to be a ``TokenizerObjective`` (a clear error otherwise)."""
    if not isinstance(objective, TokenizerObjective):
        raise TypeError(
            f"objective must be a TokenizerObjective (loss(model, images), reconstruct(model, images)), "
            f"got {type(objective).__name__}; use AutoencoderObjective or MultiScaleVQObjective"
        )
    return objective


def no_grad_reconstruct(objective: TokenizerObjective, model: nn.Module, images: Tensor) -> Reconstruction:
    """``objective.reconstruct`` in eval mode without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return objective.reconstruct(model, images)
    finally:
        model.train(was_training)

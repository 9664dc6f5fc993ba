"""``DualCodebookTokenizer``: NextFlow's TokenFlow-style dual-codebook multi-scale VQ tokenizer.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels: the schedule's final grid times ``downsample``
    sem_dim         semantic codebook width;  pix_dim: pixel codebook width
    code_dim        sem_dim + pix_dim: the two halves concatenated (semantic first)
    teacher_dim     width of the teacher features
    h, w            the grid of one schedule step
    gh, gw          the final latent grid (the schedule's last step)

Pipeline::

    f_sem = semantic_encoder(images)                  # ViT over downsample-pixel patches (semantic.py)
    f_pix = quant_conv(encoder(images))               # the VAR/LDM CNN (multiscale/cnn.py), 1x1 conv
    codes = residual loop over the schedule, both streams searched jointly in fp32:
            idx = argmin_i  w_sem·‖ẑ_sem − ê_sem[i]‖² + w_pix·‖ẑ_pix − ê_pix[i]‖²    (^: L2-normalised)
            one index space, two codebooks; each step adds the codewords e[idx] (up-sampled):
            unit ones ê[idx] with config.unit_codewords (TokenFlow), raw ones otherwise (VAR)
    images   = decoder(post_quant_conv(f̂_pix))        # decode: the pixel half only (TokenFlow)
    semantic = semantic_decoder(f̂_sem)                # decode_semantic: predicted teacher features
    condition = (f̂_sem, f̂_pix, semantic)              # decoder_condition: a diffusion decoder's input

(``nxcore.tokenizer.multiscale.quantizer``: ``residual_quantize(normalize=config.normalize,
loss=config.vq_loss)`` with two ``CodebookStream``s, ``normalized=config.unit_codewords``, weights
``w_sem`` / ``w_pix``; no φ convs, as TokenFlow.)

**What the protocol methods return.** ``embed_codes(codes, step)``: [batch, code_dim, h, w], the
semantic codeword followed by the pixel codeword of every cell, each L2-normalised with
``unit_codewords`` (the features a step contributes before up-sampling; ``step`` is checked, not
used).
``next_scale_inputs(codes, schedule)``: one [batch, code_dim, h_{k+1}, w_{k+1}] map per given grid
k < K, both halves concatenated; ``config.inputs = "residual"`` (default, NextFlow §2.2: step k's
own codewords up-sampled to the next grid, no accumulation) or ``"accumulated"`` (VAR: the running
f̂ of both halves down-sampled to the next grid). ``mode=`` overrides per call.

**Training** (``forward``): returns ``DualCodebookOutput`` with the multiscale tokenizer's fields
(``reconstruction``, ``loss``, ``codebook_loss``, ``commitment_loss``, ``codes``, ``steps``) plus the
semantic prediction and every named loss; ``loss`` is the tokenizer-owned part (VQ + semantic), so
``reconstruction_loss(out.reconstruction, images) + out.loss`` is the objective for both tokenizers,
and ``out.total`` adds the weighted L2 and perceptual terms. Tricks of NextFlow §3.1: random dropping
of ``scale_drop`` (50%) of the steps after the first in every forward in training mode (``keep``
overrides), quantization in fp32 with autocast off whatever the caller's autocast, and branch-wise
staged training (``set_stage``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.decoder.protocol import DecoderCondition
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.dual.config import DualCodebookConfig, dual_tiny
from nxcore.tokenizer.dual.losses import drop_scales, reconstruction_loss, semantic_loss
from nxcore.tokenizer.dual.semantic import (
    EncoderTeacher,
    SemanticDecoder,
    SemanticEncoder,
    freeze,
    teacher_features,
)
from nxcore.tokenizer.multiscale.cnn import Decoder, Encoder
from nxcore.tokenizer.multiscale.quantizer import (
    CodebookStream,
    ResidualQuantization,
    as_steps,
    check_codes,
    lookup,
    next_scale_inputs,
    reconstruct,
    residual_quantize,
)
from nxcore.tokenizer.multiscale.restart import CodeRestarts
from nxcore.tokenizer.protocol import DiscreteImageTokenizer
from nxcore.typing import Float, Int, typecheck

__all__ = ["STAGES", "DualCodebookOutput", "DualCodebookTokenizer"]

SEMANTIC_BRANCH = ("semantic_encoder", "codebook_sem", "semantic_decoder")
PIXEL_BRANCH = ("encoder", "quant_conv", "codebook_pix", "post_quant_conv", "decoder")
STAGES: dict[str, tuple[str, ...]] = {
    "semantic": SEMANTIC_BRANCH,
    "pixel": PIXEL_BRANCH,
    "joint": SEMANTIC_BRANCH + PIXEL_BRANCH,
    "decoder": ("post_quant_conv", "decoder"),
}
"""Which sub-modules train in each stage of branch-wise training (the teacher never trains).
NextFlow §3.1: ``"pixel"`` first (build it with ``w_sem=0.0`` so the untrained semantic half does not
pick the indices), then ``"joint"``, then ``"decoder"`` (with a larger decoder: ``decoder_ch``)."""


@attrs.frozen
class DualCodebookOutput:
    """One training forward.

    Shared with ``MultiScaleVQOutput``: ``reconstruction`` (pixel decoder output, not clamped),
    ``loss`` = ``codebook_loss + beta·commitment_loss + semantic_weight·semantic_loss`` (everything
    but the pixel terms, fp32), ``codebook_loss``, ``commitment_loss``, ``codes`` per quantized step
    and ``steps`` (their indices in the schedule). Added: ``semantic`` (predicted teacher features
    [batch, teacher_dim, gh, gw]), ``semantic_loss`` (1 − cos), ``reconstruction_loss`` (L2),
    ``perceptual_loss`` (the hook's value, 0 without one) and ``total`` = ``loss +
    recon_weight·reconstruction_loss + perceptual_weight·perceptual_loss``.
    """

    reconstruction: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    codes: list[Tensor]
    steps: tuple[int, ...]
    semantic: Tensor
    semantic_loss: Tensor
    reconstruction_loss: Tensor
    perceptual_loss: Tensor
    total: Tensor

    @property
    def losses(self) -> dict[str, Tensor]:
        """The unweighted named terms, for logging."""
        return {
            "reconstruction": self.reconstruction_loss,
            "perceptual": self.perceptual_loss,
            "codebook": self.codebook_loss,
            "commitment": self.commitment_loss,
            "semantic": self.semantic_loss,
        }


class DualCodebookTokenizer(nn.Module, DiscreteImageTokenizer):
    """Images [B, 3, H, W] in [-1, 1] <-> one code grid per schedule step, two codebooks sharing one
    index (module docstring).

    ``teacher``: the semantic target, any module images → features (``semantic.py``); None builds
    the frozen copy of the ViT trunk. It is a frozen sub-module (saved with the state dict, never
    trained, kept in eval mode by ``train()``).
    """

    def __init__(self, config: DualCodebookConfig | None = None, *, teacher: nn.Module | None = None) -> None:
        super().__init__()
        if config is None:
            config = DualCodebookConfig()
        if not isinstance(config, DualCodebookConfig):
            raise TypeError(
                f"config must be a DualCodebookConfig, got {type(config).__name__}; build one with "
                "dual_tiny() or tokenflow_like()"
            )
        self.config = config
        self.codebook_size = config.codebook_size
        self.code_dim = config.code_dim
        self.downsample = config.downsample
        s, p = config.semantic, config.pixel
        self.semantic_encoder = SemanticEncoder(
            in_channels=p.in_channels, patch=config.downsample, width=s.width, depth=s.depth, heads=s.heads,
            mlp_ratio=s.mlp_ratio, sem_dim=config.sem_dim,
        )
        self.encoder = Encoder(p.cnn(decoder=False))
        self.quant_conv = nn.Conv2d(p.z_channels, config.pix_dim, kernel_size=1)
        self.codebook_sem = nn.Embedding(config.codebook_size, config.sem_dim)
        self.codebook_pix = nn.Embedding(config.codebook_size, config.pix_dim)
        self.post_quant_conv = nn.Conv2d(config.pix_dim, p.z_channels, kernel_size=1)
        self.decoder = Decoder(p.cnn(decoder=True))
        self.semantic_decoder = SemanticDecoder(
            sem_dim=config.sem_dim, width=s.decoder_width, depth=s.decoder_depth, heads=s.heads,
            mlp_ratio=s.mlp_ratio, teacher_dim=s.target_dim,
        )
        every = config.restart_every
        self.restarts = CodeRestarts(config.codebook_size, every) if every else None
        self.stage = "joint"
        self.set_teacher(teacher)

    @classmethod
    def examples(cls) -> list[DualCodebookTokenizer]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return [
                cls(dual_tiny()),
                cls(dual_tiny(inputs="accumulated", up="bilinear", w_pix=0.5, ch_mult=(1, 2, 2),
                              norm_groups=8)),
                cls(dual_tiny(w_sem=0.0, decoder_ch=16, decoder_res_blocks=2, mid_attention=True)),
            ]

    # --- teacher and stages ----------------------------------------------------------------------

    def set_teacher(self, teacher: nn.Module | None) -> None:
        """Use ``teacher`` (frozen here) as the semantic target; None: a frozen copy of the ViT trunk
        as it is now (call again after loading pretrained ViT weights)."""
        dim = self.config.semantic.target_dim
        if teacher is None:
            if dim != self.config.semantic.width:
                raise ValueError(
                    f"semantic.teacher_dim = {dim} but no teacher was given; the frozen-copy teacher has the "
                    f"ViT width {self.config.semantic.width}. Pass teacher=... (e.g. load_teacher(module, "
                    "path)) or leave teacher_dim None"
                )
            teacher = EncoderTeacher(self.semantic_encoder)
        elif not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher must be a torch.nn.Module mapping images to features, got {type(teacher).__name__}"
            )
        self.teacher = freeze(teacher)

    def train(self, mode: bool = True) -> DualCodebookTokenizer:
        super().train(mode)
        self.teacher.eval()
        return self

    def set_stage(self, stage: str) -> DualCodebookTokenizer:
        """Branch-wise training: only the sub-modules of ``STAGES[stage]`` require grad (``"semantic"``,
        ``"pixel"``, ``"joint"``, ``"decoder"``); the teacher stays frozen. Returns ``self``."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}")
        trained = set(STAGES[stage])
        for name, child in self.named_children():
            if name == "teacher":
                continue
            for param in child.parameters():
                param.requires_grad_(name in trained)
        self.stage = stage
        return self

    # --- pieces ----------------------------------------------------------------------------------

    @property
    def streams(self) -> tuple[CodebookStream, CodebookStream]:
        """(semantic, pixel) streams of the residual loop: weights w_sem / w_pix, codewords
        L2-normalised at lookup when ``config.unit_codewords``."""
        c = self.config
        return (
            CodebookStream(self.codebook_sem.weight, weight=c.w_sem, normalized=c.unit_codewords),
            CodebookStream(self.codebook_pix.weight, weight=c.w_pix, normalized=c.unit_codewords),
        )

    def check_images(self, images: object, schedule: ScaleSchedule) -> Tensor:
        """Raise a clear error unless ``images`` is float [B, in_channels, gh·d, gw·d] for the final grid
        (gh, gw) of ``schedule`` and d = ``downsample``."""
        check_tensor("images", images, ndim=4, kind="float")
        c, height, width = images.shape[1:]
        want = self.config.pixel.in_channels
        if c != want:
            raise ValueError(
                f"images have {c} channels but the tokenizer takes in_channels = {want}; pass "
                f"[batch, {want}, height, width] images"
            )
        (gh, gw), d = _schedule(schedule).grid, self.downsample
        if (height, width) != (gh * d, gw * d):
            raise ValueError(
                f"images are {height}x{width} (height x width) but the schedule's final grid {gh}x{gw} needs "
                f"{gh * d}x{gw * d} images (downsample = {d}); resize them, or use a schedule whose last "
                f"step is (height / {d}, width / {d})"
            )
        return images

    @typecheck
    def features(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> tuple[Float[Tensor, "batch sem_dim gh gw"], Float[Tensor, "batch pix_dim gh gw"]]:
        """(f_sem, f_pix): the two maps the residual loop quantizes."""
        return self.semantic_encoder(images), self.quant_conv(self.encoder(images))

    def quantize(
        self, images: Tensor, schedule: ScaleSchedule, *, keep: Sequence[int] | None = None
    ) -> ResidualQuantization:
        """``residual_quantize`` of both streams (fp32, autocast off): ``ResidualQuantization``."""
        c = self.config
        return residual_quantize(
            self.features(images), self.streams, as_steps(_schedule(schedule)), down=c.down, up=c.up,
            normalize=c.normalize, keep=keep, loss=c.vq_loss,
        )

    # --- the protocol ----------------------------------------------------------------------------

    @typecheck
    def encode(
        self, images: Float[Tensor, "batch channels height width"], schedule: ScaleSchedule
    ) -> list[Int[Tensor, "batch _h _w"]]:
        """One int64 [batch, h_k, w_k] code grid per schedule step (no gradients)."""
        self.check_images(images, schedule)
        with torch.no_grad():
            return self.quantize(images, schedule).codes

    @typecheck
    def quantized_features(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> tuple[Float[Tensor, "batch sem_dim gh gw"], Float[Tensor, "batch pix_dim gh gw"]]:
        """(f̂_sem, f̂_pix) = Σ_k up(e[codes_k]) over the given grids (a prefix of the schedule), fp32."""
        steps = as_steps(_schedule(schedule))
        codes = check_codes(codes, steps, self.codebook_size)
        return reconstruct(self.streams, codes, steps, up=self.config.up)

    @typecheck
    def decode(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> Float[Tensor, "batch channels height width"]:
        """Images from the pixel half of the codes of every step (or of a prefix: the image so far)."""
        f_pix = self.quantized_features(codes, schedule)[1]
        images = self.decoder(self.post_quant_conv(f_pix.to(self.post_quant_conv.weight.dtype)))
        return images.clamp(-1, 1) if self.config.clamp else images

    @typecheck
    def decode_semantic(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> Float[Tensor, "batch teacher_dim gh gw"]:
        """Predicted teacher features from the semantic half (e.g. a diffusion decoder's condition)."""
        return self.semantic_decoder(self.quantized_features(codes, schedule)[0])

    @property
    def decoder_condition_dims(self) -> tuple[int, int, int]:
        """Widths of ``decoder_condition``'s maps: (sem_dim, pix_dim, teacher_dim)."""
        return (self.config.sem_dim, self.config.pix_dim, self.config.semantic.target_dim)

    def decoder_condition(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> DecoderCondition:
        """The diffusion decoder's condition (NextFlow §2.3): the quantized semantic and pixel maps
        (f̂_sem, f̂_pix: the code embeddings summed over the given steps, fp32) and the semantic decoder's
        features on f̂_sem, all at the final grid (``nxcore.decoder.DecoderCondition``)."""
        f_sem, f_pix = self.quantized_features(codes, schedule)
        return DecoderCondition(f_sem, f_pix, self.semantic_decoder(f_sem))

    @typecheck
    def embed_codes(self, codes: Int[Tensor, "batch h w"], step: int) -> Float[Tensor, "batch code_dim h w"]:
        """[e_sem ‖ e_pix] of every cell (unit codewords with ``config.unit_codewords``): [batch,
        sem_dim + pix_dim, h, w], fp32 (``step`` is checked, not used: one codebook pair serves every
        step)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0 (a schedule step index), got {step!r}")
        check_tensor("codes", codes, ndim=3, kind="int")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes hold values in [{int(codes.min())}, {int(codes.max())}], outside [0, "
                f"{self.codebook_size}) (the codebook size); pass indices of this tokenizer's codebook"
            )
        codes = codes.long()
        return torch.cat([lookup(s.codebook, codes, normalized=s.normalized) for s in self.streams], dim=1)

    @typecheck
    def next_scale_inputs(
        self,
        codes: Sequence[Int[Tensor, "batch _h _w"]],
        schedule: ScaleSchedule,
        *,
        mode: str | None = None,
    ) -> list[Float[Tensor, "batch code_dim _h _w"]]:
        """Transformer inputs of steps 2..K, both halves concatenated (module docstring), one per given
        grid k < K; ``mode`` (default ``config.inputs``): ``"residual"`` or ``"accumulated"``."""
        steps = as_steps(_schedule(schedule))
        codes = check_codes(codes, steps, self.codebook_size)
        c = self.config
        return next_scale_inputs(
            self.streams, codes, steps, mode=c.inputs if mode is None else mode, down=c.down, up=c.up
        )

    # --- training --------------------------------------------------------------------------------

    def forward(
        self,
        images: Tensor,
        schedule: ScaleSchedule,
        *,
        keep: Sequence[int] | None = None,
        perceptual: Callable[[Tensor, Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> DualCodebookOutput:
        """Encode, quantize (fp32, straight-through), decode both halves; every loss term.

        ``keep``: the step indices to quantize. None: in training mode, ``drop_scales(K,
        config.scale_drop, generator=generator)`` (the first step always kept); in eval mode, all.
        ``perceptual``: optional ``(reconstruction, images) -> scalar`` loss (e.g. LPIPS).
        With ``config.restart_every``, a training forward in the ``"joint"`` or ``"pixel"`` stage first
        restarts the codes unused since the last restart (``CodeRestarts``), then counts its own.
        """
        schedule = _schedule(schedule)
        self.check_images(images, schedule)
        if keep is None and self.training and self.config.scale_drop > 0:
            keep = drop_scales(schedule.num_steps, self.config.scale_drop, generator=generator)
        c = self.config
        restarting = self.training and self.restarts is not None and self.stage in ("joint", "pixel")
        if restarting:
            searched = [w > 0 for w in (c.w_sem, c.w_pix)]
            books = (self.codebook_sem.weight, self.codebook_pix.weight)
            self.restarts.step([b if s else None for b, s in zip(books, searched, strict=True)], generator)
        q = self.quantize(images, schedule, keep=keep)
        if restarting:
            self.restarts.observe(q)
        f_sem, f_pix = q.quantized
        reconstruction = self.decoder(self.post_quant_conv(f_pix.to(self.post_quant_conv.weight.dtype)))
        semantic = self.semantic_decoder(f_sem)
        target = teacher_features(self.teacher, images, schedule.grid, c.semantic.target_dim)
        sem_loss = semantic_loss(semantic, target)
        recon_loss = reconstruction_loss(reconstruction, images)
        if perceptual is None:
            perc_loss = recon_loss.new_zeros(())
        elif callable(perceptual):
            perc_loss = perceptual(reconstruction, images).float()
            if perc_loss.numel() != 1:
                raise ValueError(
                    f"perceptual(reconstruction, images) must give a scalar loss, got shape "
                    f"{tuple(perc_loss.shape)}; reduce it (e.g. .mean()) inside the callable"
                )
            perc_loss = perc_loss.reshape(())
        else:
            raise TypeError(f"perceptual must be a callable (reconstruction, images) -> scalar, got "
                            f"{type(perceptual).__name__}")
        loss = q.codebook_loss + c.beta * q.commitment_loss + c.semantic_weight * sem_loss
        total = loss + c.recon_weight * recon_loss + c.perceptual_weight * perc_loss
        return DualCodebookOutput(
            reconstruction, loss, q.codebook_loss, q.commitment_loss, q.codes, q.steps, semantic, sem_loss,
            recon_loss, perc_loss, total,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"codes={c.codebook_size}, sem_dim={c.sem_dim}, pix_dim={c.pix_dim}, w_sem={c.w_sem}, "
            f"w_pix={c.w_pix}, inputs={c.inputs!r}, stage={self.stage!r}"
        )


def _schedule(schedule: object) -> ScaleSchedule:
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(
            f"schedule must be a ScaleSchedule (e.g. nxcore.schedule.Schedule(((1, 1), (2, 3)))), got "
            f"{type(schedule).__name__}"
        )
    return schedule

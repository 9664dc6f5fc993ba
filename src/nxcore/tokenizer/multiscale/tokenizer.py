"""``MultiScaleVQTokenizer``: VAR's multi-scale residual VQVAE as a ``DiscreteImageTokenizer``.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels: the schedule's final grid times ``downsample``
    code_dim        codebook width (z_channels, 32 for VAR)
    h, w            the grid of one schedule step
    gh, gw          the final latent grid (the schedule's last step)

Pipeline (VAR ``models/vqvae.py``)::

    encode:  f = quant_conv(encoder(images)); codes = residual loop over the schedule (quantizer.py)
    decode:  f_hat = Σ_k φ_k(up(e[codes_k])); images = decoder(post_quant_conv(f_hat)).clamp(-1, 1)

Any schedule whose last step is the latent grid works, square or not; images of another size raise
a ``ValueError`` that names the size the schedule needs. ``decode`` and ``next_scale_inputs`` also
take the codes of a prefix of the schedule (generation in progress): ``decode`` then shows the image
so far, and ``next_scale_inputs`` gives the input of the step after each given grid.

Training (``forward``): reconstruction through the straight-through f_hat, the VQ loss
``codebook + β·commitment`` (VAR's), and the per-step codes for usage / perplexity statistics
(``code_usage``). ``keep`` quantizes only some steps (scale dropout).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.multiscale.cnn import Decoder, Encoder
from nxcore.tokenizer.multiscale.config import MultiScaleVQConfig, multiscale_vq_tiny
from nxcore.tokenizer.multiscale.quantizer import MultiScaleQuantizer
from nxcore.tokenizer.protocol import DiscreteImageTokenizer
from nxcore.typing import Float, Int, typecheck

__all__ = ["CodeUsage", "MultiScaleVQOutput", "MultiScaleVQTokenizer", "code_usage"]


@attrs.frozen
class MultiScaleVQOutput:
    """One training forward: ``reconstruction`` (decoder output, not clamped), ``loss`` =
    ``codebook_loss + beta * commitment_loss`` (fp32 scalars), ``codes`` per quantized step and
    ``steps`` (their indices in the schedule)."""

    reconstruction: Tensor
    loss: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    codes: list[Tensor]
    steps: tuple[int, ...]


class MultiScaleVQTokenizer(nn.Module, DiscreteImageTokenizer):
    """Images [B, 3, H, W] in [-1, 1] <-> one code grid per schedule step (VAR-compatible).

    Sub-modules carry VAR's key names (``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv``,
    ``quantize.embedding``, ``quantize.quant_resi.qresi_ls``), so the official
    ``vae_ch160v4096z32.pth`` loads with ``from_official`` (``official.py``).
    """

    def __init__(self, config: MultiScaleVQConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = MultiScaleVQConfig()
        if not isinstance(config, MultiScaleVQConfig):
            raise TypeError(
                f"config must be a MultiScaleVQConfig, got {type(config).__name__}; build one with "
                "var_vqvae() or multiscale_vq_tiny()"
            )
        self.config = config
        self.codebook_size = config.quantizer.codebook_size
        self.code_dim = config.quantizer.code_dim
        self.downsample = config.downsample
        z, kernel = config.z_channels, config.quant_conv_kernel
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = MultiScaleQuantizer(config.quantizer)
        self.quant_conv = nn.Conv2d(z, z, kernel_size=kernel, padding=kernel // 2)
        self.post_quant_conv = nn.Conv2d(z, z, kernel_size=kernel, padding=kernel // 2)

    @classmethod
    def examples(cls) -> list[MultiScaleVQTokenizer]:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return [
                cls(multiscale_vq_tiny()),
                cls(multiscale_vq_tiny(inputs="residual", phi_count=0, up="bilinear", ch_mult=(1, 1, 2))),
                cls(multiscale_vq_tiny(phi_count=4, level_attention=False, mid_attention=False,
                                       quant_conv_kernel=1, normalize=True, clamp=False)),
            ]

    # --- checks ----------------------------------------------------------------------------------

    def check_images(self, images: object, schedule: ScaleSchedule) -> Tensor:
        """Raise a clear error unless ``images`` is float [B, in_channels, gh·d, gw·d] for the final
        grid (gh, gw) of ``schedule`` and d = ``downsample``."""
        check_tensor("images", images, ndim=4, kind="float")
        c, height, width = images.shape[1:]
        if c != self.config.in_channels:
            raise ValueError(
                f"images have {c} channels but the tokenizer takes in_channels = {self.config.in_channels}; "
                f"pass [batch, {self.config.in_channels}, height, width] images"
            )
        (gh, gw), d = _schedule(schedule).grid, self.downsample
        if (height, width) != (gh * d, gw * d):
            fits = f"{height // d}x{width // d}" if height % d == 0 and width % d == 0 else None
            hint = (
                f"or use a schedule whose last step is ({height // d}, {width // d})" if fits
                else f"(sides must be multiples of downsample = {d})"
            )
            raise ValueError(
                f"images are {height}x{width} (height x width) but the schedule's final grid {gh}x{gw} "
                f"needs {gh * d}x{gw * d} images (downsample = {d}); resize or crop them to "
                f"{gh * d}x{gw * d}, {hint}"
            )
        return images

    # --- the protocol ----------------------------------------------------------------------------

    @typecheck
    def features(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> Float[Tensor, "batch code_dim gh gw"]:
        """f = quant_conv(encoder(images)), the map the residual loop quantizes."""
        return self.quant_conv(self.encoder(images))

    @typecheck
    def encode(
        self, images: Float[Tensor, "batch channels height width"], schedule: ScaleSchedule
    ) -> list[Int[Tensor, "batch _h _w"]]:
        """One int64 [batch, h_k, w_k] code grid per schedule step (no gradients)."""
        schedule = _schedule(schedule)
        self.check_images(images, schedule)
        with torch.no_grad():
            return self.quantize.encode(self.features(images), schedule)

    @typecheck
    def quantized_features(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> Float[Tensor, "batch code_dim gh gw"]:
        """f_hat = Σ_k φ_k(up(e[codes_k])) over the given grids (a prefix of the schedule)."""
        return self.quantize.features(codes, _schedule(schedule))

    @typecheck
    def decode_features(
        self, f_hat: Float[Tensor, "batch code_dim gh gw"]
    ) -> Float[Tensor, "batch channels height width"]:
        """decoder(post_quant_conv(f_hat)), clamped to [-1, 1] when ``config.clamp``."""
        images = self.decoder(self.post_quant_conv(f_hat.to(self.post_quant_conv.weight.dtype)))
        return images.clamp(-1, 1) if self.config.clamp else images

    @typecheck
    def decode(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> Float[Tensor, "batch channels height width"]:
        """Images from the codes of every step (or of a prefix: the image so far)."""
        return self.decode_features(self.quantized_features(codes, schedule))

    @typecheck
    def embed_codes(self, codes: Int[Tensor, "batch h w"], step: int) -> Float[Tensor, "batch code_dim h w"]:
        """Codebook features [batch, code_dim, h, w] of one grid (one shared codebook: ``step`` is
        checked, not used)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0 (a schedule step index), got {step!r}")
        check_tensor("codes", codes, ndim=3, kind="int")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes hold values in [{int(codes.min())}, {int(codes.max())}], outside [0, "
                f"{self.codebook_size}) (the codebook size)"
            )
        return self.quantize.embed(codes)

    @typecheck
    def next_scale_inputs(
        self, codes: Sequence[Int[Tensor, "batch _h _w"]], schedule: ScaleSchedule
    ) -> list[Float[Tensor, "batch code_dim _h _w"]]:
        """Transformer inputs of steps 2..K (``config.quantizer.inputs``: accumulated or residual),
        one per given grid k < K."""
        return self.quantize.next_scale_inputs(codes, _schedule(schedule))

    # --- training --------------------------------------------------------------------------------

    def forward(
        self, images: Tensor, schedule: ScaleSchedule, *, keep: Sequence[int] | None = None
    ) -> MultiScaleVQOutput:
        """Encode, quantize (straight-through), decode; the VQ loss and the codes of each step.

        ``keep``: indices of the steps to quantize (default all); skipped steps add nothing.
        """
        schedule = _schedule(schedule)
        self.check_images(images, schedule)
        q = self.quantize(self.features(images), schedule, keep=keep)
        f_hat = q.quantized[0].to(self.post_quant_conv.weight.dtype)
        reconstruction = self.decoder(self.post_quant_conv(f_hat))
        loss = q.codebook_loss + self.config.quantizer.beta * q.commitment_loss
        return MultiScaleVQOutput(
            reconstruction, loss, q.codebook_loss, q.commitment_loss, q.codes, q.steps
        )


@attrs.frozen
class CodeUsage:
    """Per-step code statistics: ``counts`` [steps, codebook_size] (float32), ``usage`` (fraction of
    codes hit at least once) and ``perplexity`` (exp of the entropy of the code frequencies)."""

    counts: Tensor
    usage: Tensor
    perplexity: Tensor


def code_usage(codes: Sequence[Tensor], codebook_size: int) -> CodeUsage:
    """Usage and perplexity of every step's codes (e.g. ``MultiScaleVQOutput.codes``)."""
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an int >= 1, got {codebook_size!r}")
    if isinstance(codes, Tensor) or not isinstance(codes, Sequence) or not codes:
        raise TypeError("codes must be a non-empty list of int64 code grids, one per step")
    counts = torch.stack([
        torch.bincount(check_tensor(f"codes[{i}]", c, kind="int").reshape(-1).long(), minlength=codebook_size)
        .float()[:codebook_size]
        for i, c in enumerate(codes)
    ])
    probs = counts / counts.sum(1, keepdim=True).clamp_min(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    return CodeUsage(counts, (counts > 0).float().mean(1), entropy.exp())


def _schedule(schedule: object) -> ScaleSchedule:
    if not isinstance(schedule, ScaleSchedule):
        raise TypeError(
            f"schedule must be a ScaleSchedule (e.g. nxcore.schedule.var_schedule(256) or "
            f"Schedule(((1, 1), (2, 3)))), got {type(schedule).__name__}"
        )
    return schedule

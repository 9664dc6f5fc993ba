"""The semantic branch: a small ViT encoder, the semantic decoder, and the pluggable teacher.

Shapes:
    batch           images
    channels        image channels (3)
    height, width   image pixels
    gh, gw          the latent grid: height / patch, width / patch
    width           ViT width (channels of the trunk's feature map)
    sem_dim         width of the semantic codebook half
    teacher_dim     width of the teacher features the semantic decoder predicts

``SemanticEncoder`` (TokenFlow's ``encoder_vqkd`` + ``encode_task_layer``): a ``patch``-stride conv
patch embedding, fixed 2-D sin-cos positions computed for each grid (so any size and aspect ratio
works, as NextFlow's NaFlex SigLIP2 does), pre-LayerNorm blocks, a final LayerNorm (``trunk``: the
[batch, width, gh, gw] feature map), then Linear → Tanh → Linear to ``sem_dim`` (``forward``).

``SemanticDecoder`` (``decoder_vqkd`` + ``decode_task_layer``): the quantized semantic map, one token
per cell (patch size 1), Linear to the decoder width, the same blocks, then Linear → Tanh → Linear
to ``teacher_dim``.

**Teacher.** Any ``nn.Module`` mapping images [batch, 3, height, width] in [-1, 1] to features,
either a map [batch, teacher_dim, h, w] (resized to the latent grid when its grid differs: area when
shrinking, bilinear otherwise) or tokens [batch, gh·gw, teacher_dim] in raster order. Wrap a model
that needs other input normalisation or returns hidden states (SigLIP2: the penultimate hidden
state, as TokenFlow uses) in a small module. ``load_teacher(module, path)`` fills a user-built module
from a local ``.safetensors`` (or ``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``)
file, executing nothing from it, and freezes it. Without a teacher the target is
``EncoderTeacher``: a frozen copy of the ViT trunk taken when the tokenizer is built (or when
``set_teacher(None)`` is called again, e.g. after loading pretrained ViT weights): TokenFlow's layout
(a trainable encoder initialised from the frozen teacher) with the ViT as its own teacher, so the
semantic loss keeps the quantized semantic half predictive of the initial features.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checkpoint import load_into
from nxcore.checks import check_tensor
from nxcore.typing import Float, typecheck

__all__ = [
    "EncoderTeacher",
    "SemanticDecoder",
    "SemanticEncoder",
    "ViTBlock",
    "freeze",
    "load_teacher",
    "sincos_2d",
    "teacher_features",
]


def sincos_2d(h: int, w: int, dim: int, *, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sin-cos positions [h·w, dim] (raster order): the first half of the channels encodes
    the row, the second the column, each as sin then cos of the ``dim / 4`` frequencies
    1 / 10000^(i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    rows = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freqs  # [h, quarter]
    cols = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freqs  # [w, quarter]
    row = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(h, w, 2 * quarter)
    col = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([row, col], dim=-1).reshape(h * w, dim)


class ViTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); full attention
    over the tokens of one image (``qkv`` fused, GELU MLP)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        hidden = max(1, round(width * mlp_ratio))
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Float[Tensor, "batch tokens width"]) -> Float[Tensor, "batch tokens width"]:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _task_layer(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))


def _run_blocks(blocks: nn.ModuleList, norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """x [batch, width, gh, gw] + positions → blocks → norm, as tokens [batch, gh·gw, width]."""
    b, c, h, w = x.shape
    tokens = x.flatten(2).transpose(1, 2) + sincos_2d(h, w, c, device=x.device).to(x.dtype)
    for block in blocks:
        tokens = block(tokens)
    return norm(tokens)


def _as_map(tokens: Tensor, h: int, w: int) -> Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class SemanticEncoder(nn.Module):
    """Images → semantic features [batch, sem_dim, gh, gw] (``trunk``: the ViT map before the task
    layer). ``patch`` is the pixel branch's downsample, so both branches share the latent grid."""

    def __init__(
        self, *, in_channels: int, patch: int, width: int, depth: int, heads: int, mlp_ratio: float,
        sem_dim: int,
    ) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.encode_task_layer = _task_layer(width, sem_dim)

    @typecheck
    def trunk(self, images: Float[Tensor, "batch channels height width"]) -> Float[Tensor, "batch dim gh gw"]:
        """The ViT feature map [batch, width, gh, gw] (what the frozen-copy teacher gives)."""
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        return _as_map(_run_blocks(self.blocks, self.norm, x), h, w)

    @typecheck
    def forward(
        self, images: Float[Tensor, "batch channels height width"]
    ) -> Float[Tensor, "batch sem_dim gh gw"]:
        x = self.patch_embed(images)
        h, w = x.shape[-2:]
        return _as_map(self.encode_task_layer(_run_blocks(self.blocks, self.norm, x)), h, w)


class SemanticDecoder(nn.Module):
    """Quantized semantic map [batch, sem_dim, gh, gw] → predicted teacher features
    [batch, teacher_dim, gh, gw] (a ViT with patch size 1)."""

    def __init__(
        self, *, sem_dim: int, width: int, depth: int, heads: int, mlp_ratio: float, teacher_dim: int
    ) -> None:
        super().__init__()
        self.embed = nn.Conv2d(sem_dim, width, kernel_size=1)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.decode_task_layer = _task_layer(width, teacher_dim)

    @typecheck
    def forward(
        self, codes: Float[Tensor, "batch sem_dim gh gw"]
    ) -> Float[Tensor, "batch teacher_dim gh gw"]:
        x = self.embed(codes.to(self.embed.weight.dtype))
        h, w = x.shape[-2:]
        return _as_map(self.decode_task_layer(_run_blocks(self.blocks, self.norm, x)), h, w)


def freeze(module: nn.Module) -> nn.Module:
    """No parameter of ``module`` requires grad; eval mode. Returns ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class EncoderTeacher(nn.Module):
    """A frozen copy of a ``SemanticEncoder``'s trunk: images → [batch, width, gh, gw]."""

    def __init__(self, encoder: SemanticEncoder) -> None:
        super().__init__()
        if not isinstance(encoder, SemanticEncoder):
            raise TypeError(f"encoder must be a SemanticEncoder, got {type(encoder).__name__}")
        self.encoder = freeze(copy.deepcopy(encoder))

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder.trunk(images)


def load_teacher(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    key_map: Mapping[str, str] | Callable[[str], str | None] | None = None,
    strict: bool = True,
) -> nn.Module:
    """Fill ``module`` (built by the caller, e.g. a SigLIP2 vision tower) with the weights at the local
    ``path`` and freeze it; returns ``module``. ``path``: ``.safetensors``, a ``.pt``/``.pth``/``.bin``
    state dict (``torch.load(weights_only=True)``) or a checkpoint directory
    (``nxcore.checkpoint.load_state``); nothing in the file is executed. ``key_map`` renames keys
    (``nxcore.checkpoint.remap_keys``); with ``strict`` any missing, unexpected or mis-shaped key
    raises ``CheckpointMismatchError`` listing them."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"module must be a torch.nn.Module (the teacher architecture to load into), got "
            f"{type(module).__name__}"
        )
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a local file or directory path, got {type(path).__name__}")
    load_into(module, path, key_map=key_map, strict=strict)
    return freeze(module)


def teacher_features(teacher: nn.Module, images: Tensor, grid: tuple[int, int], dim: int) -> Tensor:
    """The teacher's features for ``images`` as a fp32 map [batch, dim, *grid] (no gradients).

    Accepts a teacher output map [batch, dim, h, w] (resized to ``grid``: area when both sides
    shrink, bilinear otherwise) or tokens [batch, gh·gw, dim] in raster order."""
    with torch.no_grad():
        out = teacher(images)
    if isinstance(out, tuple | list) and out and isinstance(out[0], Tensor):
        out = out[0]
    check_tensor("teacher(images)", out, ndim=(3, 4), kind="float")
    b, (gh, gw) = images.shape[0], grid
    if out.ndim == 3:
        if tuple(out.shape) != (b, gh * gw, dim):
            raise ValueError(
                f"teacher(images) gave tokens {tuple(out.shape)} but the tokenizer needs [{b}, {gh * gw}, "
                f"{dim}] (batch, gh·gw for the {gh}x{gw} latent grid, semantic.teacher_dim); return a map "
                f"[batch, {dim}, h, w] instead, or set SemanticConfig.teacher_dim to the teacher's width"
            )
        out = out.transpose(1, 2).reshape(b, dim, gh, gw)
    elif out.shape[0] != b or out.shape[1] != dim:
        raise ValueError(
            f"teacher(images) gave a map {tuple(out.shape)} but the tokenizer needs [{b}, {dim}, h, w] "
            f"(semantic.teacher_dim = {dim}); set SemanticConfig.teacher_dim to the teacher's width"
        )
    out = out.float()
    if tuple(out.shape[-2:]) != (gh, gw):
        shrink = out.shape[-2] >= gh and out.shape[-1] >= gw
        out = F.interpolate(out, size=(gh, gw), mode="area" if shrink else "bilinear", align_corners=None)
    return out


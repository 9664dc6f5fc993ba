"""AdaLN blocks of NextStep-1's flow-matching head (MAR-style "SimpleMLPAdaLN"): ``AdaLNResBlock``
and ``AdaLNFinalLayer``, conditioned on one vector per token.

Shape legend (see ``nxcore.typing``): tokens = rows (one noisy image token each), dim = the head
width (1536 in NextStep-1), out = output channels (64: one 2x2 patch of 16 latent channels).
``y`` is the conditioning (time embedding + projected backbone state), one row per token of ``x``.

    AdaLNResBlock:   shift, scale, gate = adaLN_modulation(y)        (SiLU -> Linear(dim, 3 dim))
                     out = x + gate * mlp(in_ln(x) * (1 + scale) + shift)
    AdaLNFinalLayer: shift, scale = adaLN_modulation(y)               (SiLU -> Linear(dim, 2 dim))
                     out = linear(LayerNorm(x) * (1 + scale) + shift)   (LayerNorm without affine)

``in_ln`` is a LayerNorm *with* affine (gamma, beta; eps 1e-6). Its affine is folded exactly into
the modulation, so the fused ``nxkernels.adaln.adaln_modulate`` (LayerNorm without affine, then
modulate) computes the block::

    (n gamma + beta)(1 + scale) + shift = n (1 + scale') + shift'
    scale' = gamma (1 + scale) - 1,  shift' = beta (1 + scale) + shift       (fp32, [tokens, dim])

and ``nxkernels.adaln.gated_residual`` adds the gated branch. Chunk order of every adaLN output is
shift, scale[, gate]. Module and parameter names follow the official checkpoints
(``res_blocks.N.in_ln``, ``mlp.0``, ``mlp.2``, ``adaLN_modulation.1``; ``final_layer.linear``,
``final_layer.adaLN_modulation.1``). Initialisation (``init_weights``, run by the constructors):
xavier-uniform linear weights with zero biases, zero adaLN projections, zero final linear — so a
fresh block is the identity and a fresh final layer outputs zeros.
"""

from __future__ import annotations

from torch import Tensor, nn

from nxcore.nn._checks import check_dim, check_eps, check_width
from nxcore.typing import Float, typecheck
from nxkernels.adaln import adaln_modulate, gated_residual

__all__ = ["AdaLNFinalLayer", "AdaLNResBlock", "fold_affine"]


@typecheck
def fold_affine(
    weight: Float[Tensor, " dim"],
    bias: Float[Tensor, " dim"],
    shift: Float[Tensor, "*batch dim"],
    scale: Float[Tensor, "*batch dim"],
) -> tuple[Float[Tensor, "*batch dim"], Float[Tensor, "*batch dim"]]:
    """``(shift', scale')`` with ``(n w + b)(1 + scale) + shift = n (1 + scale') + shift'``.

    Computed in fp32 (``scale' = w scale + (w - 1)`` avoids cancelling against 1), returned in
    ``scale``'s dtype.
    """
    w, b, s = weight.float(), bias.float(), scale.float()
    new_scale = w * s + (w - 1)
    new_shift = b * (1 + s) + shift.float()
    return new_shift.to(scale.dtype), new_scale.to(scale.dtype)


def _check_condition(owner: nn.Module, x: Tensor, y: object, width: int) -> None:
    check_width(owner, "x", x, width)
    check_width(owner, "y", y, width)
    if x.ndim != 2 or y.shape != x.shape:
        raise ValueError(
            f"x and y must both be [tokens, {width}] (one conditioning row per token), got x "
            f"{tuple(x.shape)} and y {tuple(y.shape)}; repeat y per token (y.repeat_interleave)"
        )


def _xavier_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AdaLNResBlock(nn.Module):
    """``x + gate * mlp(modulate(in_ln(x), shift, scale))``, (shift, scale, gate) from ``y``."""

    def __init__(self, width: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.width = check_dim("width", width)
        self.in_ln = nn.LayerNorm(width, eps=check_eps("eps", eps))
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform linears, zero biases, unit LayerNorm, zero adaLN projection (identity block)."""
        _xavier_linears(self)
        self.in_ln.reset_parameters()
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    @typecheck
    def forward(
        self, x: Float[Tensor, "tokens dim"], y: Float[Tensor, "tokens dim"]
    ) -> Float[Tensor, "tokens dim"]:
        _check_condition(self, x, y, self.width)
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        shift, scale = fold_affine(self.in_ln.weight, self.in_ln.bias, shift, scale)
        h = adaln_modulate(x, shift, scale, self.in_ln.eps)
        return gated_residual(x, gate, self.mlp(h))


class AdaLNFinalLayer(nn.Module):
    """``linear(modulate(LayerNorm(x), shift, scale))`` (LayerNorm without affine), from ``y``."""

    def __init__(self, width: int, out_channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.width = check_dim("width", width)
        self.out_channels = check_dim("out_channels", out_channels)
        self.eps = check_eps("eps", eps)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.init_weights()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"

    def init_weights(self) -> None:
        """Zero adaLN projection and zero output linear (a fresh head predicts zero velocity)."""
        for linear in (self.linear, self.adaLN_modulation[1]):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    @typecheck
    def forward(
        self, x: Float[Tensor, "tokens dim"], y: Float[Tensor, "tokens dim"]
    ) -> Float[Tensor, "tokens out"]:
        _check_condition(self, x, y, self.width)
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(adaln_modulate(x, shift, scale, self.eps))

"""``FlowMatchingHead``: NextStep-1's flow-matching head (a ``ContinuousHead``), its network
``MLPAdaLN`` (MAR's "SimpleMLPAdaLN", 157M parameters at NextStep-1's size) and ``FlowHeadConfig``.

Shape legend (see ``nxcore.typing``): tokens = rows (one image token each), dim = the backbone
width the condition comes from (``cond_dim``), width = the head width, latent_dim = one image token
(64: a 2x2 patch of 16 latent channels), freq = the sinusoidal time features (``freq_dim``).

Network (parameter names load the official ``image_head.*`` weights 1:1)::

    h = net.input_proj(x)                          Linear(latent_dim -> width)
    y = net.time_embed(t) + net.cond_embed(c)      sinusoid(freq) -> Linear -> SiLU -> Linear; Linear
    h = net.res_blocks[i](h, y)   for i < depth    AdaLNResBlock (the same y in every block)
    v = net.final_layer(h, y)                      AdaLNFinalLayer(width -> latent_dim)

Time features: ``freq_dim / 2`` frequencies f_i = exp(-ln(10000) i / (freq_dim / 2)), features
``[cos(t f), sin(t f)]`` (cosine first), t the raw time in [0, 1] (not x1000), computed in fp32
and cast to the MLP's dtype. Flow convention: t = 0 is noise, t = 1 is data, x_t = t x1 + (1 - t) e
and the velocity target is x1 - e.

Loss (``loss``): each row is repeated ``batch_mul`` times (the whole block tiled, as upstream), each
copy with fresh noise e ~ N(0, I) and fresh t = sigmoid(N(logit_mean, logit_std)) (logit-normal);
per-row MSE in fp32 over latent_dim, then the weighted mean of the protocol. Random draws, in order:
the noise [rows * batch_mul, latent_dim], then the logits of t [rows * batch_mul] (fp32, on the
generator's device). Inference (``velocity``/``predict``): x is cast to the weights' dtype and t to
the condition's dtype before embedding, as the official sampler does (bf16 t at bf16).

Init (upstream): xavier-uniform linears with zero biases, N(0, 0.02) time-MLP weights, zero adaLN
projections and zero final linear — so a fresh head predicts zero velocity everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.config import Config, config, finite_number, integer
from nxcore.head.loss import check_weights, weighted_mean
from nxcore.head.protocol import ContinuousHead, JoinableField, VelocityField
from nxcore.nn import AdaLNFinalLayer, AdaLNResBlock
from nxcore.typing import Float, typecheck

__all__ = ["FlowField", "FlowHeadConfig", "FlowMatchingHead", "FlowNetSnapshot", "MLPAdaLN", "SnapshotField",
           "TimestepEmbedder", "timestep_embedding"]

MAX_PERIOD = 10000.0


@typecheck
def timestep_embedding(t: Float[Tensor, " tokens"], dim: int) -> Float[Tensor, "tokens freq"]:
    """[tokens, dim] fp32 features ``[cos(t f), sin(t f)]`` (zero column appended for odd ``dim``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([out, out.new_zeros(out.shape[0], dim % 2)], dim=-1)


class TimestepEmbedder(nn.Module):
    """sinusoid(t) -> ``mlp`` = Linear(freq_dim, width) -> SiLU -> Linear(width, width)."""

    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    @typecheck
    def forward(self, t: Float[Tensor, " tokens"]) -> Float[Tensor, "tokens width"]:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class MLPAdaLN(nn.Module):
    """The head network (module docstring): ``v = net(x, t, c)``."""

    def __init__(self, latent_dim: int, cond_dim: int, width: int, depth: int, freq_dim: int) -> None:
        super().__init__()
        self.input_proj = nn.Linear(latent_dim, width)
        self.time_embed = TimestepEmbedder(width, freq_dim)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.res_blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        self.final_layer = AdaLNFinalLayer(width, latent_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Upstream init (module docstring)."""
        for linear in (self.input_proj, self.cond_embed, self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        for linear in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(linear.weight, std=0.02)
        for block in self.res_blocks:
            block.init_weights()
        self.final_layer.init_weights()

    @typecheck
    def forward(
        self,
        x: Float[Tensor, "tokens latent_dim"],
        t: Float[Tensor, " tokens"],
        c: Float[Tensor, "tokens dim"],
    ) -> Float[Tensor, "tokens latent_dim"]:
        h = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)


class FlowField(JoinableField):
    """The velocity field of ``head`` under fixed conditions ``cond`` [tokens, dim] (``predict``).
    ``join`` stacks the conditions of fields of the same head, so a sampler evaluates every CFG
    branch in one head call."""

    def __init__(self, head: FlowMatchingHead, cond: Tensor) -> None:
        self.head = head
        self.cond = cond
        self.shape: tuple[int, int] = (cond.shape[0], head.latent_dim)
        self.device = cond.device

    def __repr__(self) -> str:
        return f"FlowField(shape={self.shape}, dtype={self.cond.dtype}, device={str(self.device)!r})"

    def __call__(
        self, x: Float[Tensor, "tokens latent_dim"], t: Float[Tensor, " tokens"]
    ) -> Float[Tensor, "tokens latent_dim"]:
        return self.head.velocity(x, t, self.cond)

    def join(self, others: Sequence[VelocityField]) -> VelocityField:
        if not all(isinstance(o, FlowField) and o.head is self.head for o in others):
            return _Separate([self, *others])
        return FlowField(self.head, torch.cat([self.cond, *(o.cond for o in others)]))


class FlowNetSnapshot:
    """An inference-only form of ``head``'s network for sampling many tokens with the same weights
    (``generate_latents`` makes one per generation; ``predict`` gives its fields).

    Equal to ``head.velocity`` up to rounding, with fewer operations per evaluation:

    - the adaLN projections of every block and of the final layer are one matmul over ``silu(y)``,
      with each block's LayerNorm affine folded into them (``n * gamma (1 + scale) + beta (1 +
      scale) + shift`` is linear in the projection's output, so ``gamma``, ``beta`` and the ``1 +``
      go into its weight and bias; folded in fp32, stored in the weights' dtype);
    - a field's condition embedding ``cond_embed(c)`` is computed once, not once per sampler step;
    - ``at_time(x, t)`` (a scalar t for every row, as the samplers ask) looks the time embedding up
      in a table filled once per distinct t (t rounded to the condition's dtype first, as
      ``velocity`` does);
    - no per-call validation and no custom-op dispatch: plain torch ops, LayerNorm statistics,
      modulation and the gated residual in fp32 (as ``AdaLNResBlock``), results in the weights' dtype;
    - the adaLN modulations of all the sampler's times at once (``SnapshotField.expect_times``: one
      matmul per token instead of one per sampler step);
    - the network's linears as ``addmm(bias, x, weight^T)``, with ``weight^T`` a contiguous copy on
      CPU (MKL runs the few rows of a sampler step up to 2x faster that way; other devices use the
      transposed view, which is what ``F.linear`` runs), and the per-call intermediates updated in
      place.

    The folded projections (and, on CPU, the transposed weights) are copies taken at construction and
    the other weights are held by reference: make a new snapshot after the weights change (in place
    or not). No autograd: with gradients enabled the fields fall back to ``head.velocity``.
    """

    def __init__(self, head: FlowMatchingHead) -> None:
        if not isinstance(head, FlowMatchingHead):
            raise TypeError(f"head must be a FlowMatchingHead, got {type(head).__name__}")
        net = head.net
        self.head = head
        self.width = net.input_proj.weight.shape[0]
        self.dtype = net.input_proj.weight.dtype
        self._times: dict[tuple[float, torch.dtype], Tensor] = {}
        self._stacked: dict[tuple[tuple[float, ...], torch.dtype], Tensor] = {}
        weights: list[Tensor] = []
        biases: list[Tensor] = []
        with torch.no_grad():
            for block in net.res_blocks:
                linear = block.adaLN_modulation[1]
                (w_shift, w_scale, w_gate) = linear.weight.float().chunk(3)
                (b_shift, b_scale, b_gate) = linear.bias.float().chunk(3)
                gamma, beta = block.in_ln.weight.float(), block.in_ln.bias.float()
                weights += [w_shift + beta[:, None] * w_scale, gamma[:, None] * w_scale, w_gate]
                biases += [b_shift + beta * (1 + b_scale), gamma * (1 + b_scale), b_gate]
            linear = net.final_layer.adaLN_modulation[1]
            (w_shift, w_scale) = linear.weight.float().chunk(2)
            (b_shift, b_scale) = linear.bias.float().chunk(2)
            weights += [w_shift, w_scale]
            biases += [b_shift, 1 + b_scale]
            self.mod_weight = torch.cat(weights).to(self.dtype)
            self.mod_bias = torch.cat(biases).to(self.dtype)
            self.n_mods = self.mod_weight.shape[0] // self.width
            # the network's linears as addmm(bias, x, weight^T) (what F.linear runs): on CPU with
            # weight^T copied to [in, out] - MKL is up to 2x faster on the few rows of a sampler step
            # that way - elsewhere the transposed view of the weight itself. (The modulations are one
            # matmul of many rows per token: F.linear is as fast there.)
            self._weights = (
                (_transposed(net.input_proj.weight), net.input_proj.bias),
                [(b.in_ln.eps, _transposed(b.mlp[0].weight), b.mlp[0].bias, _transposed(b.mlp[2].weight),
                  b.mlp[2].bias) for b in net.res_blocks],
                (net.final_layer.eps, _transposed(net.final_layer.linear.weight),
                 net.final_layer.linear.bias),
            )

    def __repr__(self) -> str:
        depth = len(self.head.net.res_blocks)
        return f"FlowNetSnapshot(width={self.width}, depth={depth}, dtype={self.dtype})"

    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> SnapshotField:
        """The velocity field over ``hidden``'s rows (as ``FlowMatchingHead.predict``)."""
        self.head._check_cond("hidden", hidden)
        return SnapshotField(self, hidden)

    def time_embedding(self, t: float, dtype: torch.dtype) -> Tensor:
        """[1, width] ``time_embed`` of the scalar t rounded to ``dtype`` (memoised)."""
        key = (float(t), dtype)
        emb = self._times.get(key)
        if emb is None:
            if len(self._times) >= 4096:  # a sampler asks for a few dozen distinct times
                self._times.clear()
            net = self.head.net
            tt = torch.full((1,), t, dtype=torch.float32, device=net.input_proj.weight.device).to(dtype)
            with torch.no_grad():
                emb = self._times[key] = net.time_embed(tt)
        return emb

    def condition_embedding(self, cond: Tensor) -> Tensor:
        """[tokens, width] ``cond_embed(cond)`` in the weights' dtype."""
        linear = self.head.net.cond_embed
        return F.linear(cond.to(self.dtype), linear.weight, linear.bias)

    def modulations(self, time_emb: Tensor, cond_emb: Tensor) -> Tensor:
        """The adaLN modulations of every block and of the final layer, ``[*, tokens, n * width]``,
        from time embeddings ``[*, 1 or tokens, width]`` and the condition embedding [tokens, width]:
        one matmul for any number of times (``modulations_at``)."""
        return F.linear(F.silu(time_emb + cond_emb), self.mod_weight, self.mod_bias)

    def modulations_at(
        self, times: tuple[float, ...], cond_emb: Tensor, dtype: torch.dtype
    ) -> list[tuple[Tensor, ...]]:
        """The modulations at every time, in one matmul (the time embeddings of ``time_embedding``,
        stacked): per time the n [tokens, width] parts ``velocity_modulated`` takes."""
        key = (times, dtype)
        table = self._stacked.get(key)
        if table is None:
            if len(self._stacked) >= 64:
                self._stacked.clear()
            table = self._stacked[key] = torch.stack([self.time_embedding(t, dtype) for t in times])
        mods = self.modulations(table, cond_emb)  # [times, tokens, n * width]
        return [part.unbind(1) for part in mods.view(len(times), -1, self.n_mods, self.width).unbind(0)]

    def velocity(self, x: Tensor, time_emb: Tensor, cond_emb: Tensor) -> Tensor:
        """v [tokens, latent_dim] in the weights' dtype from x [tokens, latent_dim], the time
        embedding ([1 or tokens, width]) and the condition embedding [tokens, width]."""
        mods = self.modulations(time_emb, cond_emb)
        return self.velocity_modulated(x, mods.view(*mods.shape[:-1], self.n_mods, self.width).unbind(-2))

    def velocity_modulated(self, x: Tensor, mods: Sequence[Tensor]) -> Tensor:
        """``velocity`` from the n modulations [tokens, width] of its time and condition (the shift,
        scale and gate of every block, then the final layer's shift and scale). Never records autograd
        (the snapshot is for sampling; its fields fall back to ``head.velocity`` under autograd)."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self.velocity_modulated(x, mods)
        (w_in, b_in), blocks, (eps_out, w_out, b_out) = self._weights
        shape = (self.width,)
        addmm = torch.addmm
        if self.dtype == torch.float32:  # the same math without the (no-op) casts
            # every intermediate is a fresh tensor of this call, so it is updated in place
            h = addmm(b_in, x if x.dtype == torch.float32 else x.float(), w_in)
            for i, (eps, w1, b1, w2, b2) in enumerate(blocks):
                n = torch.layer_norm(h, shape, None, None, eps)
                a = torch.addcmul(mods[3 * i], n, mods[3 * i + 1], out=n)
                h.addcmul_(mods[3 * i + 2], addmm(b2, F.silu(addmm(b1, a, w1), inplace=True), w2))
            n = torch.layer_norm(h, shape, None, None, eps_out)
            return addmm(b_out, torch.addcmul(mods[-2], n, mods[-1], out=n), w_out)
        dtype = self.dtype
        h = addmm(b_in, x.to(dtype), w_in)
        for i, (eps, w1, b1, w2, b2) in enumerate(blocks):
            add, mult, gate = mods[3 * i].float(), mods[3 * i + 1].float(), mods[3 * i + 2].float()
            a = torch.addcmul(add, torch.layer_norm(h.float(), shape, None, None, eps), mult).to(dtype)
            a = addmm(b2, F.silu(addmm(b1, a, w1)), w2)
            h = torch.addcmul(h.float(), gate, a.float()).to(dtype)
        n = torch.layer_norm(h.float(), shape, None, None, eps_out)
        return addmm(b_out, torch.addcmul(mods[-2].float(), n, mods[-1].float()).to(dtype), w_out)


def _transposed(weight: Tensor) -> Tensor:
    """``weight.t()`` as ``addmm`` takes it: a contiguous [in, out] copy on CPU, the view elsewhere."""
    return weight.t().contiguous() if weight.device.type == "cpu" else weight.t()


class SnapshotField(JoinableField):
    """The velocity field of a ``FlowNetSnapshot`` under fixed conditions ``cond`` [tokens, dim]."""

    def __init__(self, snapshot: FlowNetSnapshot, cond: Tensor) -> None:
        self.snapshot = snapshot
        self.cond = cond
        self.shape: tuple[int, int] = (cond.shape[0], snapshot.head.latent_dim)
        self.device = cond.device
        self._cond_emb: Tensor | None = None
        self._expected: dict[float, tuple[Tensor, ...]] = {}

    def __repr__(self) -> str:
        return f"SnapshotField(shape={self.shape}, dtype={self.cond.dtype}, device={str(self.device)!r})"

    def expect_times(self, times: Sequence[float]) -> None:
        """The sampler's notice that it will evaluate this field at ``times``: the modulations of every
        row at every one of them are computed now, in one matmul (they depend on t and the condition
        only), and ``at_time`` looks them up. Under autograd nothing is kept (``at_time`` falls back)."""
        if torch.is_grad_enabled():
            return
        times = tuple(float(t) for t in times)
        mods = self.snapshot.modulations_at(times, self._embedded(), self.cond.dtype)
        self._expected = dict(zip(times, mods, strict=True))

    def _embedded(self) -> Tensor:
        if self._cond_emb is None:
            self._cond_emb = self.snapshot.condition_embedding(self.cond)
        return self._cond_emb

    def __call__(
        self, x: Float[Tensor, "tokens latent_dim"], t: Float[Tensor, " tokens"]
    ) -> Float[Tensor, "tokens latent_dim"]:
        if torch.is_grad_enabled():
            return self.snapshot.head.velocity(x, t, self.cond)
        _check_rows(x, t, self.shape)
        time_emb = self.snapshot.head.net.time_embed(t.to(self.cond.dtype))
        return self.snapshot.velocity(x, time_emb, self._embedded())

    def at_time(self, x: Float[Tensor, "tokens latent_dim"], t: float) -> Float[Tensor, "tokens latent_dim"]:
        """The velocity at the same time ``t`` for every row."""
        if torch.is_grad_enabled():
            times = torch.full((x.shape[0],), t, dtype=torch.float32, device=x.device)
            return self.snapshot.head.velocity(x, times, self.cond)
        _check_rows(x, None, self.shape)
        mods = self._expected.get(t)
        if mods is not None:
            return self.snapshot.velocity_modulated(x, mods)
        return self.snapshot.velocity(x, self.snapshot.time_embedding(t, self.cond.dtype), self._embedded())

    def join(self, others: Sequence[VelocityField]) -> VelocityField:
        if not all(isinstance(o, SnapshotField) and o.snapshot is self.snapshot for o in others):
            return _Separate([self, *others])
        return SnapshotField(self.snapshot, torch.cat([self.cond, *(o.cond for o in others)]))


def _check_rows(x: Tensor, t: Tensor | None, shape: tuple[int, int]) -> None:
    if tuple(x.shape) != shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but the field predicts {shape} = [tokens, latent_dim]; pass one "
            "noisy token per condition row"
        )
    if t is not None and tuple(t.shape) != (shape[0],):
        raise ValueError(f"t has shape {tuple(t.shape)}; pass one time per row [{shape[0]}]")


class _Separate(VelocityField):
    """Fields of different heads over stacked rows, each evaluated on its own block."""

    def __init__(self, fields: list[VelocityField]) -> None:
        self.fields = fields
        self.shape = (sum(f.shape[0] for f in fields), fields[0].shape[1])
        self.device = getattr(fields[0], "device", torch.device("cpu"))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        sizes = [f.shape[0] for f in self.fields]
        parts = zip(self.fields, x.split(sizes), t.split(sizes), strict=True)
        return torch.cat([f(xi, ti) for f, xi, ti in parts])


class FlowMatchingHead(nn.Module, ContinuousHead):
    """Conditions [tokens, dim] -> flow-matching loss / velocity field (module docstring)."""

    def __init__(
        self,
        latent_dim: int,
        cond_dim: int,
        *,
        width: int = 1536,
        depth: int = 12,
        freq_dim: int = 256,
        batch_mul: int = 4,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("latent_dim", latent_dim), ("cond_dim", cond_dim), ("width", width),
                            ("depth", depth), ("freq_dim", freq_dim), ("batch_mul", batch_mul)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not (math.isfinite(logit_std) and logit_std > 0 and math.isfinite(logit_mean)):
            raise ValueError(
                f"logit_mean ({logit_mean!r}) must be finite and logit_std ({logit_std!r}) finite and > 0"
            )
        self.dim = cond_dim
        self.latent_dim = latent_dim
        self.batch_mul = batch_mul
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.net = MLPAdaLN(latent_dim, cond_dim, width, depth, freq_dim)

    @classmethod
    def examples(cls) -> list[FlowMatchingHead]:
        """Tiny heads with every weight randomised (a fresh head's zero output layers would give the
        condition no gradient, which the conformance check asks for)."""
        gen = torch.Generator().manual_seed(0)
        heads = [cls(4, 8, width=16, depth=2, freq_dim=16, batch_mul=2),
                 cls(6, 12, width=8, depth=1, freq_dim=9, batch_mul=1)]
        with torch.no_grad():
            for head in heads:
                for p in head.parameters():
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        return heads

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, cond_dim={self.dim}, batch_mul={self.batch_mul}, "
                f"t=sigmoid(N({self.logit_mean}, {self.logit_std}))")

    @typecheck
    def velocity(
        self,
        x: Float[Tensor, "tokens latent_dim"],
        t: Float[Tensor, " tokens"],
        cond: Float[Tensor, "tokens dim"],
    ) -> Float[Tensor, "tokens latent_dim"]:
        """v(x, t | cond) in the weights' dtype; t is rounded to ``cond``'s dtype first (upstream)."""
        self._check_cond("cond", cond)
        check_tensor("x", x, ndim=2, kind="float")
        check_tensor("t", t, ndim=1, kind="float")
        if tuple(x.shape) != (cond.shape[0], self.latent_dim):
            raise ValueError(
                f"x has shape {tuple(x.shape)} but must be [tokens, latent_dim] = "
                f"[{cond.shape[0]}, {self.latent_dim}] (one noisy token per condition row)"
            )
        if t.shape[0] != cond.shape[0]:
            raise ValueError(
                f"t has {t.shape[0]} entries but cond has {cond.shape[0]} rows; pass one time per row"
            )
        dtype = self.net.input_proj.weight.dtype
        return self.net(x.to(dtype), t.to(cond.dtype), cond.to(dtype))

    def snapshot(self) -> FlowNetSnapshot:
        """An inference-only form of the network for sampling (``FlowNetSnapshot``): its fields give
        ``predict``'s velocities with fewer operations per sampler step."""
        return FlowNetSnapshot(self)

    @typecheck
    def predict(self, hidden: Float[Tensor, "tokens dim"]) -> FlowField:
        """The velocity field over ``hidden``'s rows, for a ``FlowSampler``."""
        self._check_cond("hidden", hidden)
        return FlowField(self, hidden)

    @typecheck
    def loss(
        self,
        hidden: Float[Tensor, "tokens dim"],
        targets: Float[Tensor, "tokens latent_dim"],
        weights: Float[Tensor, " tokens"] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, ""]:
        """The weighted mean flow-matching MSE (fp32) of ``batch_mul`` noisy copies of every row."""
        self._check_cond("hidden", hidden)
        check_tensor("targets", targets, ndim=2, kind="float")
        if tuple(targets.shape) != (hidden.shape[0], self.latent_dim):
            raise ValueError(
                f"targets has shape {tuple(targets.shape)} but must be [tokens, latent_dim] = "
                f"[{hidden.shape[0]}, {self.latent_dim}] (one clean latent token per hidden row)"
            )
        check_weights(weights, hidden.shape[0])
        m = self.batch_mul
        rows = hidden.shape[0] * m
        where = generator.device if generator is not None else hidden.device
        noise = torch.randn(rows, self.latent_dim, generator=generator, device=where).to(hidden.device)
        logits = torch.randn(rows, generator=generator, device=where).to(hidden.device)
        t = torch.sigmoid(logits * self.logit_std + self.logit_mean)
        x1 = targets.float().repeat(m, 1)
        xt = t[:, None] * x1 + (1 - t[:, None]) * noise
        v = self.velocity(xt, t, hidden.repeat(m, 1))
        per_row = (v.float() - (x1 - noise)).square().mean(dim=-1)
        w = None if weights is None else weights.repeat(m)
        return weighted_mean(per_row, w, torch.ones(rows, dtype=torch.bool, device=hidden.device))

    def _check_cond(self, name: str, value: object) -> None:
        check_tensor(name, value, ndim=2, kind="float")
        if value.shape[1] != self.dim:
            raise ValueError(
                f"{name} has width {value.shape[1]} but the head's cond_dim is {self.dim}; pass the "
                "projected backbone states (model.condition(hidden)) or build the head with that width"
            )


@config
class FlowHeadConfig(Config):
    """``FlowMatchingHead``'s fields; NextStep-1: width 1536, depth 12, latent_dim 64, cond_dim 5120
    (157,228,096 parameters), batch_mul 4, t = sigmoid(N(0, 1))."""

    cond_dim: int = attrs.field(validator=integer(at_least=1))
    latent_dim: int = attrs.field(default=64, validator=integer(at_least=1))
    width: int = attrs.field(default=1536, validator=integer(at_least=1))
    depth: int = attrs.field(default=12, validator=integer(at_least=1))
    freq_dim: int = attrs.field(default=256, validator=integer(at_least=2))
    batch_mul: int = attrs.field(default=4, validator=integer(at_least=1))
    logit_mean: float = attrs.field(default=0.0, validator=finite_number())
    logit_std: float = attrs.field(default=1.0, validator=finite_number(above=0.0))

    def build(self) -> FlowMatchingHead:
        return FlowMatchingHead(
            self.latent_dim, self.cond_dim, width=self.width, depth=self.depth, freq_dim=self.freq_dim,
            batch_mul=self.batch_mul, logit_mean=self.logit_mean, logit_std=self.logit_std,
        )

"""The multi-scale residual quantizer: a generic core over feature streams, and VAR's quantizer.

Shapes:
    batch       images
    code_dim    width of one codebook vector (of one stream); dim: several streams concatenated
    codes       codebook rows (one index space shared by every stream)
    h, w        the grid of one schedule step
    gh, gw      the final latent grid (the schedule's last step)

**Streams.** A stream is one feature map with its own codebook (and optional φ bank). VAR has one
stream; the dual-codebook tokenizer has two (semantic, pixel) whose codebooks share one index
space. Each step picks one index per cell for all streams at once::

    idx = argmin_i  w_1·‖z_1 − e_1[i]‖² + w_2·‖z_2 − e_2[i]‖²     (halves L2-normalised if asked)

through ``nxkernels.vq.vq_nearest`` (at most two streams: its semantic and pixel halves).

**Residual loop** (``residual_quantize``; VAR's ``f_to_idxBl_or_fhat`` and training ``forward``), per
stream, f = features, all in fp32 with autocast off::

    rest = f, f_hat = 0
    for step k of K, grid (h_k, w_k):
        z_k   = down(rest, (h_k, w_k))                 # 'area' in VAR; no-op at the final grid
        idx_k = nearest codeword of z_k (all streams jointly)
        c_k   = φ_k(up(e[idx_k], (gh, gw)))            # 'bicubic' in VAR; φ after up-sampling
        f_hat += c_k ; rest -= c_k

A map already at its target size is never resampled (VAR's "last step is never interpolated"; the
interpolation would be the identity anyway). e[idx] are the raw codewords, or L2-normalised ones for a
stream with ``normalized`` (TokenFlow's ``codebook_l2_norm``; VAR's ``using_znorm`` = ``normalize``
normalises only inside the search). Losses, ``loss="cumulative"`` (VAR): ``codebook_loss`` is the mean
over steps of MSE(f_hat_k, sg(f)) and ``commitment_loss`` of MSE(sg(f_hat_k), f), both over all
streams' elements together; ``loss="step"`` (TokenFlow) compares each step's codewords with the
residual it quantized instead. The caller weighs them ``codebook + β·commitment``. ``quantized`` is
the straight-through f_hat: its value is f_hat, its gradient flows to f unchanged.

**Next-scale inputs** (``next_scale_inputs``: the transformer's inputs for steps 2..K, one map per
given step k < K, streams concatenated along channels):

- ``"accumulated"`` (VAR ``idxBl_to_var_input``): ``down(Σ_{j<=k} c_j, (h_{k+1}, w_{k+1}))``;
- ``"residual"`` (NextFlow §2.2): ``up(e[idx_k], (h_{k+1}, w_{k+1}))``: the step's own codebook
  features, no φ, no accumulation.

Where they agree: the accumulated input is the residual one summed with everything before it. With
no φ and steps that do not resample (every step at the final grid) ``accumulated[k] = Σ_{j<=k}
residual[j]`` exactly; with no φ and a 1x1 first step, the first inputs are equal (both are e[idx_1]
spread over the second grid). With φ they differ by design.

``MultiScaleQuantizer`` is VAR's ``VectorQuantizer2`` as a module (keys ``embedding.weight``,
``quant_resi.qresi_ls.{i}.*``), one stream. A dual-codebook tokenizer builds two
``CodebookStream``s from its own parameters (e.g. ``normalized=True``, weights w_sem, w_pix) and
calls the same functions: ``residual_quantize(..., normalize=True, loss="step")``, ``reconstruct``,
``next_scale_inputs``, ``lookup``, ``check_codes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nxcore.checks import check_tensor
from nxcore.schedule.protocol import ScaleSchedule
from nxcore.tokenizer.multiscale.config import DOWN_MODES, INPUT_MODES, UP_MODES, QuantizerConfig
from nxcore.tokenizer.multiscale.phi import PhiBank
from nxcore.typing import Float, Int, typecheck
from nxkernels.vq import VQResult, vq_nearest
from nxkernels.vq.reference import NORMALIZE_EPS

__all__ = [
    "CodebookStream",
    "MultiScaleQuantizer",
    "ResidualQuantization",
    "as_steps",
    "check_codes",
    "contribution",
    "lookup",
    "next_scale_inputs",
    "reconstruct",
    "resize",
    "residual_quantize",
]

Steps = tuple[tuple[int, int], ...]


class CodebookStream(NamedTuple):
    """One feature stream: its codebook [codes, code_dim], optional φ bank, and search weight.

    ``normalized``: codewords are L2-normalised when looked up, so the quantized features are unit
    vectors (TokenFlow's ``codebook_l2_norm``). The search's own ``normalize`` only normalises inside
    the distance (VAR's ``using_znorm``: looked-up codewords stay raw).
    """

    codebook: Tensor
    refine: PhiBank | None = None
    weight: float = 1.0
    normalized: bool = False


@attrs.frozen
class ResidualQuantization:
    """What the residual loop gives.

    ``codes``: one int64 [batch, h_k, w_k] grid per quantized step (``steps`` names them: all steps
    unless some were skipped); ``quantized``: per stream, the straight-through f_hat at the final
    grid (fp32); ``codebook_loss`` / ``commitment_loss``: fp32 scalars (module docstring).
    ``residuals``: per quantized step, per stream, the rows z_k it searched ([batch·h_k·w_k,
    code_dim], detached); ``distances``: per quantized step, each row's distance to its codeword in the
    search's metric ([batch·h_k·w_k]): what dead-code restarts draw from (``restart.py``).
    """

    codes: list[Tensor]
    steps: tuple[int, ...]
    quantized: tuple[Tensor, ...]
    codebook_loss: Tensor
    commitment_loss: Tensor
    residuals: tuple[tuple[Tensor, ...], ...] = ()
    distances: tuple[Tensor, ...] = ()


# --- small pieces -----------------------------------------------------------------------------------


def as_steps(schedule: ScaleSchedule | Sequence[tuple[int, int]], name: str = "schedule") -> Steps:
    """The (h, w) steps of a ``ScaleSchedule`` (or of a sequence of pairs, checked)."""
    if isinstance(schedule, ScaleSchedule):
        return tuple(schedule.steps)
    if isinstance(schedule, str | bytes) or not isinstance(schedule, Sequence) or not schedule:
        raise TypeError(
            f"{name} must be a ScaleSchedule (e.g. nxcore.schedule.var_schedule(256)) or a non-empty "
            f"sequence of (h, w) steps, got {type(schedule).__name__}"
        )
    steps = []
    for i, step in enumerate(schedule):
        ok = isinstance(step, Sequence) and len(step) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in step
        )
        if not ok:
            raise ValueError(f"{name}[{i}] must be an (h, w) pair of ints >= 1, got {step!r}")
        steps.append((int(step[0]), int(step[1])))
    return tuple(steps)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """``F.interpolate`` to ``size`` (align_corners False), or ``x`` itself when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode not in DOWN_MODES + UP_MODES:
        raise ValueError(f"mode must be one of {sorted(set(DOWN_MODES + UP_MODES))}, got {mode!r}")
    return F.interpolate(x, size=size, mode=mode)


def lookup(codebook: Tensor, codes: Tensor, *, normalized: bool = False) -> Tensor:
    """Codebook rows of ``codes`` [batch, h, w] as a map [batch, code_dim, h, w] (fp32), the rows
    L2-normalised first when ``normalized``."""
    table = codebook.float()
    if normalized:
        table = F.normalize(table, dim=-1, eps=NORMALIZE_EPS)
    return F.embedding(codes, table).permute(0, 3, 1, 2)


def check_codes(codes: object, steps: Steps, codebook_size: int, *, full: bool = False) -> list[Tensor]:
    """``codes`` as a list of int64 grids, one per step of a prefix of ``steps`` (all steps with
    ``full``), one batch size, values in [0, codebook_size); a clear error otherwise."""
    k = len(steps)
    if isinstance(codes, Tensor) or not isinstance(codes, Sequence):
        raise TypeError(
            f"codes must be a list of int64 [batch, h, w] grids, one per schedule step, got "
            f"{type(codes).__name__}"
        )
    n = len(codes)
    if (full and n != k) or not 1 <= n <= k:
        want = f"{k}" if full else f"1 to {k} (a prefix of the schedule)"
        raise ValueError(f"codes has {n} grids but the schedule has {k} steps; pass {want} grids")
    out = []
    batch = None
    for i, (c, (h, w)) in enumerate(zip(codes, steps, strict=False)):
        check_tensor(f"codes[{i}]", c, ndim=3, kind="int")
        if tuple(c.shape[1:]) != (h, w):
            raise ValueError(
                f"codes[{i}] is a {tuple(c.shape[1:])} grid but schedule step {i} is {(h, w)}; pass the "
                "codes of this schedule (encode with the same schedule)"
            )
        if batch is None:
            batch = c.shape[0]
        elif c.shape[0] != batch:
            raise ValueError(f"codes[{i}] has batch {c.shape[0]} but codes[0] has {batch}; use one batch")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= codebook_size):
            raise ValueError(
                f"codes[{i}] holds values in [{int(c.min())}, {int(c.max())}], outside [0, {codebook_size}) "
                "(the codebook size); pass indices of this tokenizer's codebook"
            )
        out.append(c.long())
    return out


def _check_features(features: Sequence[Tensor], streams: Sequence[CodebookStream], grid) -> list[Tensor]:
    if not 1 <= len(streams) <= 2:
        raise ValueError(
            f"streams: expected 1 or 2 CodebookStreams (vq_nearest's halves), got {len(streams)}"
        )
    if len(features) != len(streams):
        raise ValueError(f"got {len(features)} feature maps for {len(streams)} streams; pass one per stream")
    out = []
    for i, (f, s) in enumerate(zip(features, streams, strict=True)):
        check_tensor(f"features[{i}]", f, ndim=4, kind="float")
        if f.shape[1] != s.codebook.shape[1]:
            raise ValueError(
                f"features[{i}] has {f.shape[1]} channels but its codebook has width {s.codebook.shape[1]}"
            )
        if tuple(f.shape[-2:]) != tuple(grid):
            raise ValueError(
                f"features[{i}] is a {tuple(f.shape[-2:])} map but the schedule ends at {tuple(grid)}; the "
                "last step must be the latent grid (image size / downsample)"
            )
        out.append(f)
    return out


def _search(rows: list[Tensor], streams: Sequence[CodebookStream], normalize: bool) -> VQResult:
    first = streams[0]
    if len(streams) == 1:
        return vq_nearest(rows[0], first.codebook, w_sem=first.weight, normalize=normalize)
    second = streams[1]
    return vq_nearest(
        rows[0], first.codebook, rows[1], second.codebook,
        w_sem=first.weight, w_pix=second.weight, normalize=normalize,
    )


def contribution(
    stream: CodebookStream, codes: Tensor, step: int, steps: Steps, *, up: str
) -> Tensor:
    """c_k = φ_k(up(e[codes], final grid)) of step ``step``: [batch, code_dim, gh, gw], fp32."""
    h = resize(lookup(stream.codebook, codes, normalized=stream.normalized), steps[-1], up)
    return h if stream.refine is None else stream.refine(h, step, len(steps))


# --- the core ---------------------------------------------------------------------------------------


def residual_quantize(
    features: Sequence[Tensor],
    streams: Sequence[CodebookStream],
    steps: Steps,
    *,
    down: str = "area",
    up: str = "bicubic",
    normalize: bool = False,
    keep: Sequence[int] | None = None,
    loss: str = "cumulative",
) -> ResidualQuantization:
    """Quantize ``features`` (one [batch, code_dim, gh, gw] map per stream) over ``steps``.

    ``keep``: the step indices to quantize, increasing (default all). Skipped steps add nothing and
    give no codes, and kept steps keep their φ (chosen by their place in the full schedule): the
    hook for the scale-dropout training trick.

    ``loss``: ``"cumulative"`` (VAR) compares the running f_hat_k with f at the final grid after
    every step; ``"step"`` (TokenFlow) compares each step's looked-up codewords e[idx_k] with the
    residual it quantized, z_k = down(f − Σ_{j<k} sg(c_j)) at the step's grid (both L2-normalised
    when ``normalize``), so that the commitment gradient reaches f through z_k. Either way the terms
    are mean squared errors over all streams' elements, averaged over the quantized steps.
    """
    steps = as_steps(steps, "steps")
    feats = _check_features(features, streams, steps[-1])
    kept = tuple(range(len(steps))) if keep is None else _check_keep(keep, len(steps))
    if loss not in ("cumulative", "step"):
        raise ValueError(f"loss must be 'cumulative' (VAR) or 'step' (TokenFlow), got {loss!r}")
    device = feats[0].device
    with torch.autocast(device.type, enabled=False):
        f = [x.float() for x in feats]
        rest = list(f)  # f − Σ sg(c_j): carries f's gradient, searched detached
        f_hat = [torch.zeros_like(x) for x in f]
        codes: list[Tensor] = []
        residuals: list[tuple[Tensor, ...]] = []
        distances: list[Tensor] = []
        codebook_loss = f[0].new_zeros(())
        commitment_loss = f[0].new_zeros(())
        for k in kept:
            hk, wk = steps[k]
            z = [resize(r, (hk, wk), down).permute(0, 2, 3, 1).reshape(-1, r.shape[1]) for r in rest]
            rows = tuple(r.detach() for r in z)
            found = _search(list(rows), streams, normalize)
            idx = found.indices.reshape(f[0].shape[0], hk, wk)
            codes.append(idx)
            residuals.append(rows)
            distances.append(found.distances.reshape(-1))
            for s, stream in enumerate(streams):
                c = contribution(stream, idx, k, steps, up=up)
                f_hat[s] = f_hat[s] + c
                rest[s] = rest[s] - c.detach()
            if loss == "cumulative":
                pairs = list(zip(f_hat, f, strict=True))
            else:
                flat = idx.reshape(-1)
                pairs = [
                    _step_pair(stream, flat, zs, normalize) for stream, zs in zip(streams, z, strict=True)
                ]
            numel = sum(a.numel() for a, _ in pairs)
            codebook_loss = codebook_loss + sum((a - b.detach()).square().sum() for a, b in pairs) / numel
            commitment_loss = commitment_loss + sum((a.detach() - b).square().sum() for a, b in pairs) / numel
        n = max(len(kept), 1)
        quantized = tuple((a.detach() - b.detach()) + b for a, b in zip(f_hat, f, strict=True))
    return ResidualQuantization(codes, kept, quantized, codebook_loss / n, commitment_loss / n,
                                tuple(residuals), tuple(distances))


def _step_pair(stream: CodebookStream, idx: Tensor, z: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    """(looked-up codewords, quantized residual rows) of one step, for the per-step loss."""
    q = F.embedding(idx, stream.codebook.float())
    if normalize or stream.normalized:
        q = F.normalize(q, dim=-1, eps=NORMALIZE_EPS)
    if normalize:
        z = F.normalize(z, dim=-1, eps=NORMALIZE_EPS)
    return q, z


def _check_keep(keep: Sequence[int], num_steps: int) -> tuple[int, ...]:
    if isinstance(keep, str | bytes) or not isinstance(keep, Sequence):
        raise TypeError(f"keep must be a sequence of step indices, got {type(keep).__name__}")
    kept = tuple(keep)
    ok = all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < num_steps for k in kept)
    if not kept or not ok or any(b <= a for a, b in zip(kept, kept[1:], strict=False)):
        raise ValueError(
            f"keep must be a non-empty increasing sequence of step indices in [0, {num_steps}), got {keep!r}"
        )
    return kept


def reconstruct(
    streams: Sequence[CodebookStream],
    codes: Sequence[Tensor],
    steps: Steps,
    *,
    up: str = "bicubic",
    at: Sequence[int] | None = None,
) -> tuple[Tensor, ...]:
    """f_hat = Σ_k c_k per stream at the final grid (fp32), from the grids of steps ``at`` (default
    the first ``len(codes)`` steps)."""
    steps = as_steps(steps, "steps")
    at = tuple(range(len(codes))) if at is None else tuple(at)
    out = []
    for stream in streams:
        with torch.autocast(codes[0].device.type, enabled=False):
            f_hat = sum(contribution(stream, c, k, steps, up=up) for c, k in zip(codes, at, strict=True))
        out.append(f_hat)
    return tuple(out)


def next_scale_inputs(
    streams: Sequence[CodebookStream],
    codes: Sequence[Tensor],
    steps: Steps,
    *,
    mode: str = "accumulated",
    down: str = "area",
    up: str = "bicubic",
) -> list[Tensor]:
    """Transformer inputs of steps 2..: one [batch, dim, h_{k+1}, w_{k+1}] map per given grid k < K
    (streams concatenated along channels; module docstring for the two modes)."""
    if mode not in INPUT_MODES:
        raise ValueError(f"mode must be one of {list(INPUT_MODES)}, got {mode!r}")
    steps = as_steps(steps, "steps")
    n = min(len(codes), len(steps) - 1)
    inputs: list[Tensor] = []
    with torch.autocast(codes[0].device.type, enabled=False):
        if mode == "residual":
            for k in range(n):
                maps = [
                    resize(lookup(s.codebook, codes[k], normalized=s.normalized), steps[k + 1], up)
                    for s in streams
                ]
                inputs.append(torch.cat(maps, dim=1))
            return inputs
        f_hat: list[Tensor | None] = [None] * len(streams)
        for k in range(n):
            for i, s in enumerate(streams):
                c = contribution(s, codes[k], k, steps, up=up)
                f_hat[i] = c if f_hat[i] is None else f_hat[i] + c
            inputs.append(torch.cat([resize(x, steps[k + 1], down) for x in f_hat], dim=1))
    return inputs


# --- VAR's quantizer as a module ---------------------------------------------------------------------


class MultiScaleQuantizer(nn.Module):
    """VAR's ``VectorQuantizer2``: one shared codebook ``embedding`` [codebook_size, code_dim] and a
    bank of ``phi_count`` φ convs ``quant_resi`` (absent when 0). Schedules are given per call."""

    def __init__(self, config: QuantizerConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = QuantizerConfig()
        if not isinstance(config, QuantizerConfig):
            raise TypeError(f"config must be a QuantizerConfig, got {type(config).__name__}")
        self.config = config
        self.codebook_size, self.code_dim = config.codebook_size, config.code_dim
        self.embedding = nn.Embedding(config.codebook_size, config.code_dim)
        if config.phi_count:
            self.quant_resi = PhiBank(
                config.code_dim, config.phi_count, ratio=config.phi_ratio, rule=config.phi_ticks
            )

    @property
    def phi(self) -> PhiBank | None:
        return self.quant_resi if self.config.phi_count else None

    @property
    def streams(self) -> tuple[CodebookStream]:
        return (CodebookStream(self.embedding.weight, self.phi),)

    @typecheck
    def forward(
        self,
        features: Float[Tensor, "batch code_dim gh gw"],
        schedule: ScaleSchedule | Sequence[tuple[int, int]],
        *,
        keep: Sequence[int] | None = None,
    ) -> ResidualQuantization:
        """The residual loop with losses and the straight-through f_hat (training and encoding)."""
        c = self.config
        return residual_quantize(
            [features], self.streams, as_steps(schedule), down=c.down, up=c.up, normalize=c.normalize,
            keep=keep,
        )

    def encode(
        self, features: Tensor, schedule: ScaleSchedule | Sequence[tuple[int, int]]
    ) -> list[Tensor]:
        """One int64 [batch, h_k, w_k] code grid per step (no gradients)."""
        with torch.no_grad():
            return self(features, schedule).codes

    @typecheck
    def embed(self, codes: Int[Tensor, "batch h w"]) -> Float[Tensor, "batch code_dim h w"]:
        """Codebook features of one code grid (fp32)."""
        check_tensor("codes", codes, ndim=3, kind="int")
        return lookup(self.embedding.weight, codes.long())

    def features(
        self, codes: Sequence[Tensor], schedule: ScaleSchedule | Sequence[tuple[int, int]]
    ) -> Tensor:
        """f_hat [batch, code_dim, gh, gw] from the grids of a prefix of the schedule's steps."""
        steps = as_steps(schedule)
        codes = check_codes(codes, steps, self.codebook_size)
        return reconstruct(self.streams, codes, steps, up=self.config.up)[0]

    def next_scale_inputs(
        self,
        codes: Sequence[Tensor],
        schedule: ScaleSchedule | Sequence[tuple[int, int]],
        *,
        mode: str | None = None,
    ) -> list[Tensor]:
        """Inputs of the steps after each given grid, in ``mode`` (default: the configured one)."""
        steps = as_steps(schedule)
        codes = check_codes(codes, steps, self.codebook_size)
        c = self.config
        return next_scale_inputs(
            self.streams, codes, steps, mode=c.inputs if mode is None else mode, down=c.down, up=c.up
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"codes={c.codebook_size}, code_dim={c.code_dim}, beta={c.beta}, normalize={c.normalize}, "
            f"down={c.down!r}, up={c.up!r}, inputs={c.inputs!r}"
        )

"""``FlowSampler``: integrate a ``VelocityField`` from noise (t = 0) to data (t = 1), with CFG.

Convention (NextStep-1): ``x_t = t * x1 + (1 - t) * noise``; the field returns ``dx/dt``.

Time grids (``timesteps``), N = ``num_steps``, ``s`` = ``shift``:

- ``"clean"`` (default): ``time_shift(linspace(0, 1, N + 1), s)``; N steps ending exactly at t = 1.
- ``"nextstep1"``: the official GH-v1 head sampler, reproduced as-is for checkpoint parity:
  ``time_shift(linspace(0, 1 - 0.04, N), s)``, N - 1 steps between grid points, then one
  deterministic Euler step of fixed size 0.04 with the velocity at the last grid point. With
  ``s != 1`` the trajectory therefore ends below t = 1 (``final_time`` says where) - an upstream
  quirk kept on purpose. (``N = 1`` gives the grid ``[0]`` and ends at t = 0.04, as upstream.)

Steps (``method``):

- ``"ode"``: Euler, ``x += v * dt``.
- ``"sde"``: Euler-Maruyama on the reverse SDE with diffusion ``g^2 = 2 (1 - t)``:
  ``score = (t v - x) / (1 - t)`` (from alpha = t, sigma = 1 - t),
  ``drift = v + (1 - t) score = (1 + t) v - x`` (the simplified form is used: no division),
  ``x += drift * dt + sqrt(2 (1 - t)) * sqrt(dt) * xi`` with a fresh ``xi`` per step.
  With ``"clean"`` the final step is deterministic Euler: it lands on t = 1, where the sample
  must hold no noise, and noise injected there would stay in the output unremoved.
  With ``"nextstep1"`` the N - 1 grid steps are stochastic and the 0.04 step is Euler (as upstream).

Both grids evaluate each field exactly N times. The random stream is consumed in a fixed order:
the initial noise ``torch.randn(shape, generator=generator, dtype=float32)`` (drawn on the
generator's device, then moved to the field's), then one draw of the same shape per stochastic step.

Guidance (on velocities, float32), with ``w = guidance(step, num_steps)`` and
``w_img = image_guidance(step, num_steps)`` for the current token: no uncond -> ``v_c``; one ->
``v_u + w (v_c - v_u)``; two (editing, ``uncond = (image + negative prompt, negative prompt only)``)
-> ``v_u2 + w_img (v_u1 - v_u2) + w (v_c - v_u1)``. Both weights take a schedule: the official
``cfg_schedule="linear"`` decays ``cfg`` and ``cfg_img`` alike (``LinearDecay`` for both).

The guided velocity is never formed on its own: it is a weighted sum ``sum_i c_i v_i`` of the
branches (``w v_c + (1 - w) v_u``, ...; a branch of weight 0 is left out, so its NaN cannot leak),
and a step adds each branch to ``x`` with its weight folded into the step's coefficients, e.g. an
SDE step is ``(1 - dt) x + sum_i dt (1 + t) c_i v_i + sqrt(2 (1 - t) dt) xi``: the same value as
above up to rounding, in fewer tensor operations.

Fields that can be evaluated together (``JoinableField``: ``cond.join(uncond)`` gives one field over
the stacked rows) are, in one call per step: the upstream head call (``cat([x] * branches)``), which
is faster and rounds as upstream does in bf16.

A field with an ``at_time(x, t)`` method (``t`` a Python float, the same time for every row) is
evaluated through it instead of ``field(x, t_tensor)``: the NextStep-1 head's ``SnapshotField``
memoises its time embedding per t that way. A field with an ``expect_times(times)`` method is told,
once per ``sample`` and before the first evaluation, the times it will be evaluated at (the
``evaluation_times``, in order): the ``SnapshotField`` computes its per-time work for all of them in
one matmul then.

Velocities are checked for NaN / inf once per ``sample`` (on the result, so no step waits for the
device): a non-finite result names the first field and time that produced a non-finite velocity.

Noise (``noise_repeat``): ``None`` draws every row independently; ``k`` draws ``[k, latent_dim]`` and
tiles it over the rows (row i gets draw ``i % k``), the official pipeline's sharing of noise between
the k-th images of every caption (``num_images_per_caption = k``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import attrs
import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.config import finite_number, integer, one_of
from nxcore.head.protocol import JoinableField, VelocityField
from nxcore.sampler._checks import check_uncond_sequence, is_callable
from nxcore.sampler.guidance import ConstantGuidance, LinearDecay, as_guidance, guidance_weight
from nxcore.sampler.protocol import LatentSampler
from nxcore.typing import Float, typecheck

__all__ = ["NEXTSTEP1_LAST_STEP", "FlowSampler", "time_shift"]

NEXTSTEP1_LAST_STEP = 0.04
"""Size of the final deterministic Euler step of the official NextStep-1 (GH-v1) sampler."""


@typecheck
def time_shift(t: Float[Tensor, " *shape"], shift: float) -> Float[Tensor, " *shape"]:
    """``t / (s - (s - 1) t)``, computed as ``t / (t + s (1 - t))`` so 0 -> 0 and 1 -> 1 exactly.

    Strictly increasing on [0, 1] for every ``s > 0``; ``s > 1`` spends more steps near the noise
    (small t), as SD3 / Flux's ``sigma' = s sigma / (1 + (s - 1) sigma)`` with ``sigma = 1 - t``.
    """
    if not isinstance(shift, int | float) or isinstance(shift, bool) or not 0 < shift < float("inf"):
        raise ValueError(f"shift = {shift!r} must be a finite number > 0; 1 means no shift")
    if ((t < 0) | (t > 1) | torch.isnan(t)).any():
        raise ValueError(
            f"t must lie in [0, 1], got values in [{t.min().item():.4g}, {t.max().item():.4g}]"
        )
    return t / (t + shift * (1 - t))


def _shifted(points: list[float], shift: float) -> list[float]:
    grid = torch.tensor(points, dtype=torch.float64)
    return time_shift(grid, float(shift)).tolist()


@attrs.frozen(kw_only=True)
class FlowSampler(LatentSampler):
    """Euler ODE / Euler-Maruyama SDE sampler over a ``VelocityField`` (see the module docstring).

    Fields: ``num_steps`` (>= 1), ``shift`` (> 0, 1 = uniform grid), ``method`` ("ode" | "sde"),
    ``timesteps`` ("clean" | "nextstep1"), ``guidance`` (schedule over tokens, a number, or any
    callable ``(step, num_steps) -> w``), ``image_guidance`` (the 3-way image weight, same forms),
    ``noise_repeat`` (None, or the number of independent noise rows tiled over the tokens).
    """

    num_steps: int = attrs.field(default=20, validator=integer(at_least=1))
    shift: float = attrs.field(default=1.0, validator=finite_number(above=0))
    method: str = attrs.field(default="sde", validator=one_of("ode", "sde"))
    timesteps: str = attrs.field(default="clean", validator=one_of("clean", "nextstep1"))
    guidance: Callable[[int, int], float] = attrs.field(
        default=ConstantGuidance(1.0), converter=as_guidance, validator=is_callable
    )
    image_guidance: Callable[[int, int], float] = attrs.field(
        default=ConstantGuidance(1.0), converter=as_guidance, validator=is_callable
    )
    noise_repeat: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(integer(at_least=1))
    )

    @classmethod
    def examples(cls) -> list[FlowSampler]:
        return [
            cls(num_steps=8, method="ode"),
            cls(num_steps=10, method="sde", shift=3.0, guidance=ConstantGuidance(4.0)),
            cls(num_steps=10, timesteps="nextstep1", guidance=LinearDecay(7.5), image_guidance=2.0),
            cls(num_steps=6, timesteps="nextstep1", shift=3.2, guidance=7.5),
            cls(num_steps=5, timesteps="nextstep1", guidance=LinearDecay(3.0),
                image_guidance=LinearDecay(2.0), noise_repeat=1),
        ]

    def steps(self) -> list[tuple[float, float, bool]]:
        """Every step as ``(t, t_next, stochastic)``; the field is evaluated once per step at t."""
        return list(_steps(self.num_steps, float(self.shift), self.method, self.timesteps))

    @property
    def evaluation_times(self) -> tuple[float, ...]:
        """The N times at which every field is evaluated, in order."""
        return tuple(t for t, _, _ in self.steps())

    @property
    def final_time(self) -> float:
        """Where the integration ends: 1.0, except for ``"nextstep1"`` with ``shift != 1``."""
        return self.steps()[-1][1]

    @typecheck
    def sample(
        self,
        cond: VelocityField,
        uncond: Sequence[VelocityField] = (),
        *,
        step: int = 0,
        num_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> Float[Tensor, "tokens latent_dim"]:
        """Latents of ``cond.shape`` (float32), integrated from seeded noise."""
        fields = [("cond", cond)]
        extra = check_uncond_sequence(uncond, most=2, what="velocity fields")
        fields += [(f"uncond[{i}]", f) for i, f in enumerate(extra)]
        shape = _check_fields(fields)
        w = guidance_weight(self.guidance, step, num_steps)
        w_img = guidance_weight(self.image_guidance, step, num_steps) if len(fields) == 3 else 1.0
        device = torch.device(getattr(cond, "device", "cpu"))
        noise_device = generator.device if generator is not None else device
        rows = shape[0] if self.noise_repeat is None else self.noise_repeat
        if shape[0] % rows:
            raise ValueError(
                f"noise_repeat = {self.noise_repeat} does not divide the {shape[0]} tokens sampled; "
                "pass the number of images per caption (every caption has that many rows) or None"
            )
        joined = cond.join(extra) if extra and _is_field(cond, JoinableField) else None
        k, tiles = len(fields), shape[0] // rows

        moved = torch.device(noise_device) != device

        def noise(tiled: bool = True) -> Tensor:
            """One draw of [rows, latent_dim]; tiled over the tokens, or as drawn (to broadcast)."""
            draw = torch.randn((rows, shape[1]), generator=generator, dtype=torch.float32,
                               device=noise_device)
            if moved:
                draw = draw.to(device)
            return draw if tiles == 1 or not tiled else torch.cat([draw] * tiles)

        steps = self.steps()
        times = tuple(t for t, _, _ in steps)
        if joined is not None:
            at_joined = _at_time(joined, device)
            _expect(joined, times)
        else:
            evaluators = [(name, _at_time(f, device)) for name, f in fields]
            for _, f in fields:
                _expect(f, times)

        evaluated: list[tuple[float, str, Tensor]] = []  # checked for NaN / inf once, at the end
        # the guided velocity is sum_i c_i v_i (c: _mix_weights); a zero weight drops its branch
        mix = [(i, c) for i, c in enumerate(_mix_weights(k, w, w_img)) if c != 0.0]

        def velocities(x: Tensor, t: float) -> Sequence[Tensor]:
            if joined is not None:
                v_all = _evaluate("cond.join(uncond)", at_joined, torch.cat([x] * k) if k > 1 else x, t)
                evaluated.append((t, "cond.join(uncond)", v_all))
                return v_all.reshape(k, -1, v_all.shape[-1]).unbind(0)
            v = [_evaluate(name, at, x, t) for name, at in evaluators]
            evaluated.extend((t, name, vi) for (name, _), vi in zip(evaluators, v, strict=True))
            return v

        x = noise()
        for t, t_next, stochastic in steps:
            dt = t_next - t
            v = velocities(x, t)
            if stochastic:  # x + dt ((1 + t) v - x) + sqrt(2 (1 - t) dt) noise, with v = sum_i c_i v_i
                a = dt * (1.0 + t)
                y = torch.add(x, x, alpha=-dt)  # (1 - dt) x (a Python-float multiplier costs a cast)
                for i, c in mix:
                    y.add_(v[i], alpha=a * c)
                # the draw broadcast over the tiles: the same sums as adding it tiled
                y.view(tiles, rows, -1).add_(noise(tiled=False), alpha=(2.0 * (1.0 - t) * dt) ** 0.5)
            else:  # x + dt v
                (i, c), *rest = mix
                y = torch.add(x, v[i], alpha=dt * c)
                for i, c in rest:
                    y.add_(v[i], alpha=dt * c)
            x = y
        if not bool(torch.isfinite(x).all()):
            _raise_non_finite(evaluated)
        return x


@functools.lru_cache(maxsize=256)
def _steps(n: int, shift: float, method: str, timesteps: str) -> tuple[tuple[float, float, bool], ...]:
    sde = method == "sde"
    if timesteps == "clean":
        grid = _shifted([i / n for i in range(n + 1)], shift)
        return tuple((grid[i], grid[i + 1], sde and i < n - 1) for i in range(n))
    end = 1.0 - NEXTSTEP1_LAST_STEP
    grid = _shifted([end * i / (n - 1) if n > 1 else 0.0 for i in range(n)], shift)
    between = [(grid[i], grid[i + 1], sde) for i in range(n - 1)]
    return (*between, (grid[-1], grid[-1] + NEXTSTEP1_LAST_STEP, False))


def _expect(field: VelocityField, times: tuple[float, ...]) -> None:
    """Tell a field with an ``expect_times`` method the times it is about to be evaluated at."""
    expect = getattr(field, "expect_times", None)
    if callable(expect):
        expect(times)


def _at_time(field: VelocityField, device: torch.device) -> Callable[[Tensor, float], Tensor]:
    """``(x, t) -> v`` at one scalar time t for every row: the field's ``at_time`` when it has one,
    else the field called with a float32 tensor of t."""
    at_time = getattr(field, "at_time", None)
    if callable(at_time):
        return at_time

    def call(x: Tensor, t: float) -> Tensor:
        return field(x, torch.full((x.shape[0],), t, dtype=torch.float32, device=device))

    return call


def _mix_weights(branches: int, w: float, w_img: float) -> tuple[float, ...]:
    """The guided velocity as ``sum_i c_i v_i`` over (cond, uncond[0], uncond[1]): ``c`` alone;
    ``c + (w - 1)(c - u) = w c + (1 - w) u``; ``c + (w - 1)(c - u1) + (w_img - 1)(u1 - u2) =
    w c + (w_img - w) u1 + (1 - w_img) u2``."""
    if branches == 1:
        return (1.0,)
    if branches == 2:
        return (float(w), 1.0 - w)
    return (float(w), float(w_img) - w, 1.0 - w_img)


def _is_field(value: object, protocol: type) -> bool:
    """``isinstance(value, protocol)`` for ``VelocityField`` / ``JoinableField``, with the structural
    test (a ``shape``, callable, and for ``JoinableField`` a ``join``) done first: typing's runtime
    protocol check takes 20-30 us, a few times per sampled token."""
    structural = hasattr(value, "shape") and callable(value)
    if structural and (protocol is not JoinableField or hasattr(value, "join")):
        return True
    return isinstance(value, protocol)


def _check_fields(fields: list[tuple[str, object]]) -> tuple[int, int]:
    for name, field in fields:
        if not _is_field(field, VelocityField):
            raise TypeError(
                f"{name} must be a VelocityField (a callable (x, t) -> v with a shape attribute), "
                f"got {type(field).__name__}; wrap a function with CallableField(fn, shape)"
            )
    shape = tuple(fields[0][1].shape)  # type: ignore[attr-defined]
    if len(shape) != 2 or not all(isinstance(d, int) and d >= 1 for d in shape):
        raise ValueError(f"cond.shape must be (tokens, latent_dim) with sizes >= 1, got {shape}")
    for name, field in fields[1:]:
        other = tuple(field.shape)  # type: ignore[attr-defined]
        if other != shape:
            raise ValueError(
                f"{name}.shape is {other} but cond.shape is {shape}; every guidance branch must "
                "predict velocities for the same tokens"
            )
    return shape  # type: ignore[return-value]


def _evaluate(name: str, at: Callable[[Tensor, float], Tensor], x: Tensor, t: float) -> Tensor:
    v = check_tensor(f"velocity of {name}", at(x, t), kind="float")
    if tuple(v.shape) != tuple(x.shape):
        raise ValueError(
            f"velocity of {name} has shape {tuple(v.shape)} at t={t:.4g}, expected "
            f"{tuple(x.shape)} (the field's shape)"
        )
    return v if v.dtype == torch.float32 else v.float()


def _raise_non_finite(evaluated: list[tuple[float, str, Tensor]]) -> None:
    """Name the first velocity that held NaN or inf. Checked once per ``sample`` (no per-step sync):
    a non-finite velocity always leaves the result non-finite, unless its branch has weight 0."""
    for t, name, v in evaluated:
        if not bool(torch.isfinite(v).all()):
            kind = "NaN" if bool(torch.isnan(v).any()) else "inf"
            raise ValueError(
                f"velocity of {name} contains {kind} at t={t:.4g}; check the field (head) output"
            )
    raise ValueError("the sampled latents hold NaN or inf although every velocity was finite")

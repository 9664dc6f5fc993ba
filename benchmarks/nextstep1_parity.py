"""Numerical parity of nx's NextStep-1 parts against the official GH-v1 code, at tiny random sizes.

The official code (github.com/stepfun-ai/NextStep-1, snapshot 6e49bae, "GH-v1") is imported at run time
from the directory given by ``--official`` (the folder that holds the ``nextstep/`` package); nothing of
it is copied here. Both implementations get identical random weights, identical inputs and identical
random streams, and every comparison reports the max absolute difference of its outputs.

Comparisons (``--only NAME``, repeatable; default: all):

- ``autoencoder``: ``nxcore.tokenizer.autoencoder`` (loaded with ``from_official`` from an official-layout
  ``config.json`` + ``checkpoint.pt`` written from the official ``AutoencoderKL``'s state dict) vs
  ``nextstep/models/modeling_flux_vae.py``: posterior mean / logvar, posterior sample, the 64-dim tokens
  (official ``NextStep.patchify``), decode (official ``unpatchify`` -> unscale -> ``decode``), for
  ``encoder_norm`` / ``psz`` / scaling variants, fp32 and bf16.
- ``flow_sampler``: ``nxcore.sampler.flow.FlowSampler`` (``timesteps="nextstep1"``, ``method="sde"``) vs
  ``FlowMatchingHead.sample`` of ``nextstep/models/modeling_fm_head.py``, both driving the SAME official
  ``SimpleMLPAdaLN`` velocity net (random, every parameter non-zero); 2-way and 3-way CFG, shift 1 / 3.2,
  5 / 20 steps, ``cfg_schedule`` constant / linear (the pipeline's per-token formula: nx decays
  ``cfg`` and ``cfg_img`` alike, ``LinearDecay`` for both), ``noise_repeat`` (one draw tiled over the
  captions), fp32 and bf16.
- ``flow_sampler_clean``: nx ``timesteps="clean"`` vs the official (unused by the GH-v1 pipeline)
  ``FlowMatchingHead.sample_new`` grid, without CFG; nx lands deterministically on t = 1 while the
  official adds noise on the last step too, so the row also checks that the difference is exactly that
  last noise term.

Model-level comparisons on one tiny random model (``build_tiny``): the official ``NextStep``
(``nextstep1_tiny()``'s shape: 4 layers of width 128, 4 / 2 heads, MLP 352, q/k/v bias, head 128 x 3;
every parameter perturbed, the head's zero-initialised layers included) and ``AutoencoderKL`` (ch 32,
ch_mult [1, 2], encoder_norm, psz 2, scaling 0.5, shift 0.1, ``deterministic``) with the official
tokenizer type (``PreTrainedTokenizerFast`` over an in-process byte-level BPE + the official added
tokens), saved in the official layouts and loaded by nx's loaders (``load_official``,
``autoencoder.from_official``); the ``tiny_model`` rows check the copy (keys 1:1, weights, config,
text ids through ``load_official``'s tokenizer and a ``BPETokenizer`` wrapping the same
``tokenizers.Tokenizer`` with ``SpecialTokens.nextstep1()``):

- ``head_velocity``: official ``image_head.net(x, t, c)`` vs nx ``image_head.velocity``, joined
  ``FlowField``s, and generation's ``FlowNetSnapshot`` fields (``at_time``).
- ``backbone``: the official prompt rows (``_build_captions`` + ``_add_prefix_ids``) vs
  ``build_prompts`` (ids and mask), then the final hidden states of the same left-padded CFG batch
  (2-way text; 3-way edit with source latents at the placeholders), without a cache and as the
  ``StaticCache`` prefill. Padded query positions differ by design (official CPU SDPA attends
  uniformly over a fully masked row, nx to itself); no real position reads them.
- ``t2i``: official ``generate_image`` vs nx ``text_to_image``, 2 captions x 2 images, cfg 3, 5
  steps, use_norm on / off, shift 1 / 3.2, constant / linear schedule, seed 42: the sampled tokens
  (after use_norm) and the decoded images in [0, 1].
- ``edit``: official ``generate_image`` with source images vs nx ``edit``, 3-way CFG (cfg 3,
  cfg_img 2, shift 3.2, "Copy original image." as the negative prompt), constant / linear. The
  official pipeline draws a posterior sample of the sources first (one randn of the latent map's
  shape from the global stream, even for a ``deterministic`` VAE, whose std is 0); nx encodes the
  posterior mean and draws nothing, so its generator is advanced by the same draw for the compared
  rows; the "nx as is" rows show the shifted stream (info).

bf16 rows carry no tolerance: nx's fused ops (fp32 modulation / residual math in the head, fused
RMSNorm + residual and fp32 RoPE in the backbone) round differently from the official bf16 ops.

Adding a comparison: write ``def name(ctx: Context) -> list[Row]`` and decorate it with
``@comparison("name")``; ``ctx.official`` holds the imported official modules.

Usage::

    ENABLE_TORCH_COMPILE=0 /tmp/official/venv/bin/python benchmarks/nextstep1_parity.py \\
        --official /tmp/official/src --stubs /tmp/official/stubs [--only flow_sampler]

writes ``benchmarks/results/nextstep1/parity.json`` (``--out``) and prints a table.

Environment used (the official modules need transformers 4.49 / diffusers 0.32 and friends, which the
project venv does not carry; torchvision has no CPU wheel for torch 2.13 on the registries, so a stub of
``torchvision.transforms.{Compose, ToTensor, Normalize}`` - the only names the official pipeline
imports - lives in a scratch directory passed with ``--stubs``)::

    mkdir -p /tmp/official/src
    R=<bare git mirror of stepfun-ai/NextStep-1>
    git -C $R ls-tree -r HEAD --name-only | grep -v -E '\\.(gif|png|jpg|jpeg)$' | while read f; do
        mkdir -p "/tmp/official/src/$(dirname "$f")"; git -C $R show "HEAD:$f" > "/tmp/official/src/$f"; done
    python3.11 -m venv /tmp/official/venv
    /tmp/official/venv/bin/pip install torch==2.13.0 transformers==4.49.0 diffusers==0.32.2 loguru \\
        pendulum omegaconf tabulate einops megfile pyyaml safetensors packaging numpy pillow jaxtyping \\
        beartype attrs tokenizers tqdm scipy webdataset
    /tmp/official/venv/bin/pip install -e /work/main --no-deps
    # /tmp/official/stubs/torchvision/{__init__,transforms}.py: Compose, ToTensor, Normalize stand-ins
    # (torchvision 0.28.0 from PyPI installs but is a CUDA build: its _C.so needs libc10_cuda.so)

``ENABLE_TORCH_COMPILE=0`` must be set before the official modules are imported (their ``smart_compile``
wraps everything in ``torch.compile`` by default); the script sets it itself when absent. The official
``nextstep/utils/import_utils.py`` (imported by the pipeline's ``set_seed``) calls
``torch.version.cuda.replace`` at import time, which fails on a CPU torch; ``import_official`` imports it
once with a stand-in ``torch.version.cuda`` and restores it. ``webdataset`` is needed only because
``nextstep/utils/training_utils.py`` (``set_seed``) imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("ENABLE_TORCH_COMPILE", "0")

import torch  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "nextstep1" / "parity.json"
FP32_TOL = 1e-5


@dataclass
class Row:
    comparison: str
    case: str
    metric: str
    max_abs_diff: float
    tol: float | None
    ok: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ok is None and self.tol is not None:
            self.ok = bool(self.max_abs_diff <= self.tol)


@dataclass
class Context:
    official: SimpleNamespace
    official_path: str
    seed: int = 0
    extra: dict = field(default_factory=dict)


REGISTRY: dict[str, Callable[[Context], list[Row]]] = {}


def comparison(name: str) -> Callable[[Callable[[Context], list[Row]]], Callable[[Context], list[Row]]]:
    def register(fn: Callable[[Context], list[Row]]) -> Callable[[Context], list[Row]]:
        if name in REGISTRY:
            raise ValueError(f"comparison {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return register


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() - b.double()).abs().max().item()


# --------------------------------------------------------------------------------------------------
# autoencoder
# --------------------------------------------------------------------------------------------------

TINY_AE = {"resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
           "z_channels": 16, "deterministic": False}
AE_CASES = {
    "gh-v1 defaults (no norm, scale 0.3611, shift 0.1159)": {
        "encoder_norm": False, "psz": None, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "encoder_norm, psz null (per pixel)": {"encoder_norm": True, "psz": None, "scaling_factor": 0.3611,
                                           "shift_factor": 0.1159},
    "encoder_norm, psz 1": {"encoder_norm": True, "psz": 1, "scaling_factor": 1.0, "shift_factor": 0.0},
    "encoder_norm, psz 2 (token-wise)": {"encoder_norm": True, "psz": 2, "scaling_factor": 0.5,
                                         "shift_factor": 0.1},
}


def _official_tokens(latent_map: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Official ``NextStep.patchify`` ([B, C, H, W] -> [B, H*W/p^2, C*p^2]) on a stand-in ``self``."""
    from nextstep.models.modeling_nextstep import NextStep

    me = SimpleNamespace(config=SimpleNamespace(latent_patch_size=patch, latent_channels=latent_map.shape[1]))
    return NextStep.patchify(me, latent_map)


def _official_map(tokens: torch.Tensor, h: int, w: int, channels: int, patch: int = 2) -> torch.Tensor:
    from nextstep.models.modeling_nextstep import NextStep

    me = SimpleNamespace(config=SimpleNamespace(latent_patch_size=patch, latent_channels=channels))
    return NextStep.unpatchify(me, tokens, h, w)


class _SwishF:
    """``torch.nn.functional`` with ``silu`` computed as the official ``swish``: x * sigmoid(x)."""

    def __getattr__(self, name: str):
        return getattr(torch.nn.functional, name)

    @staticmethod
    def silu(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


@contextlib.contextmanager
def official_op_forms():
    """Temporarily run nx's autoencoder blocks with the official op forms (diagnostic only, nothing is
    written): swish as x * sigmoid(x) (two roundings in bf16, where F.silu rounds once) and the attention
    q / k / v made contiguous before SDPA (the official rearrange(...).contiguous())."""
    import nxcore.tokenizer.autoencoder.blocks as blocks
    import nxcore.tokenizer.autoencoder.encoder_decoder as encdec

    def attn_forward(self, x):
        b, c, h, w = x.shape
        normed = self.norm(x)

        def rows(conv):
            return conv(normed).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()

        out = torch.nn.functional.scaled_dot_product_attention(rows(self.q), rows(self.k), rows(self.v))
        return x + self.proj_out(out.squeeze(1).transpose(1, 2).reshape(b, c, h, w))

    saved = blocks.F, encdec.F, blocks.AttnBlock.forward
    blocks.F = encdec.F = _SwishF()
    blocks.AttnBlock.forward = attn_forward
    try:
        yield
    finally:
        blocks.F, encdec.F, blocks.AttnBlock.forward = saved


@comparison("autoencoder")
def autoencoder(ctx: Context) -> list[Row]:
    vae_mod = ctx.official.vae
    from nxcore.tokenizer.autoencoder import from_official, sample_posterior

    rows: list[Row] = []
    # index order of the token patchify on an arange map (exact)
    ramp = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).reshape(2, 16, 4, 6)
    from nxcore.tokenizer.autoencoder import patchify, unpatchify

    ours = patchify(ramp, 2)
    theirs = _official_tokens(ramp)
    rows.append(Row("autoencoder", "patchify index order (arange 16x4x6 map)", "tokens",
                    max_abs(ours.reshape(2, -1, 64), theirs), 0.0))
    rows.append(Row("autoencoder", "patchify index order (arange 16x4x6 map)", "unpatchify",
                    max_abs(unpatchify(ours, 2), _official_map(theirs, 2, 3, 16)), 0.0))

    for k, (case, overrides) in enumerate(AE_CASES.items()):
        params = {**TINY_AE, **overrides}
        torch.manual_seed(ctx.seed + k)
        official = vae_mod.AutoencoderKL(vae_mod.AutoEncoderParams(**params)).eval()
        with torch.no_grad():  # non-trivial GroupNorm affine and biases too
            for p in official.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(official.state_dict(), Path(tmp) / "checkpoint.pt")
            (Path(tmp) / "config.json").write_text(json.dumps(params))
            ours_model = from_official(tmp).eval()
            ours_v2 = from_official(tmp, convention="gh-v2").eval() if overrides["psz"] is not None else None
        images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(ctx.seed + 100 + k)) * 2 - 1
        for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, None)):
            tag = f"{case} [{str(dtype).removeprefix('torch.')}]"
            off, our = official.to(dtype), ours_model.to(dtype)
            x = images.to(dtype)
            with torch.no_grad():
                post = off.encode(x).latent_dist
                mean, logvar = our.posterior(x)
                rows.append(Row("autoencoder", tag, "posterior mean", max_abs(mean, post.mean), tol))
                rows.append(Row("autoencoder", tag, "posterior logvar (clamped)",
                                max_abs(logvar.clamp(-30, 20), post.logvar), tol))
                torch.manual_seed(ctx.seed + 7)
                s_off = post.sample()
                torch.manual_seed(ctx.seed + 7)
                s_our = sample_posterior(mean, logvar)
                rows.append(Row("autoencoder", tag, "posterior sample (same global seed)",
                                max_abs(s_our, s_off), tol))
                sf, sc = params["shift_factor"], params["scaling_factor"]
                tokens_off = _official_tokens((post.mean - sf) * sc)
                tokens_our = our.encode(x)
                b, h, w, d = tokens_our.shape
                rows.append(Row("autoencoder", tag, "encode -> 64-dim tokens",
                                max_abs(tokens_our.reshape(b, h * w, d), tokens_off), tol))
                gen = torch.Generator().manual_seed(ctx.seed + 200 + k)
                tokens = torch.randn(2, h * w, 64, generator=gen)
                tokens = tokens.to(dtype)
                dec_off = off.decode((_official_map(tokens, h, w, 16) / sc) + sf).sample
                dec_our = our.decode(tokens.reshape(2, h, w, 64))
                rows.append(Row("autoencoder", tag, "decode(tokens)", max_abs(dec_our, dec_off), tol))
                if ours_v2 is not None and dtype == torch.float32:
                    rows.append(Row("autoencoder", tag, "encode, loaded with convention gh-v2",
                                    max_abs(ours_v2.encode(x).reshape(b, h * w, d), tokens_off), tol))
                if dtype == torch.bfloat16:
                    note = "nx swish -> x*sigmoid(x) and contiguous q/k/v, patched at run time"
                    with official_op_forms():
                        rows.append(Row("autoencoder", tag, "encode, nx ops in official form",
                                        max_abs(our.encode(x).reshape(b, h * w, d), tokens_off), 0.0,
                                        note=note))
                        rows.append(Row("autoencoder", tag, "decode, nx ops in official form",
                                        max_abs(our.decode(tokens.reshape(2, h, w, 64)), dec_off), 0.0,
                                        note=note))
            official.float()
            ours_model.float()
    return rows


# --------------------------------------------------------------------------------------------------
# flow sampler
# --------------------------------------------------------------------------------------------------

HEAD = {"input_dim": 64, "cond_dim": 32, "dim": 64, "layers": 2}


class OfficialNetField:
    """nx ``VelocityField`` over the official ``SimpleMLPAdaLN``: ``v = net(x, t, c)`` with the official
    sampler's casts (x and t to the condition's dtype)."""

    def __init__(self, net: torch.nn.Module, cond: torch.Tensor) -> None:
        self.net, self.cond = net, cond
        self.shape = (cond.shape[0], HEAD["input_dim"])
        self.device = cond.device

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x.to(self.cond.dtype), t.to(self.cond.dtype), self.cond)


class _BatchedBranches:
    """All CFG branches in ONE net call, as the official sampler does (``torch.cat([x] * cfg_mult)``):
    the cond field evaluates the whole batch, the uncond fields return their slices of it. FlowSampler
    calls the fields in order cond, uncond[0], uncond[1] at the same (x, t)."""

    def __init__(self, net: torch.nn.Module, cond: torch.Tensor, branches: int) -> None:
        self.net, self.cond, self.branches = net, cond, branches
        self.out: list[torch.Tensor] = []
        self.fields = [_Branch(self, i, c) for i, c in enumerate(cond.chunk(branches, dim=0))]

    def evaluate(self, x: torch.Tensor, t: torch.Tensor) -> None:
        with torch.no_grad():
            xs = torch.cat([x] * self.branches).to(self.cond.dtype)
            ts = torch.cat([t] * self.branches).to(self.cond.dtype)
            self.out = list(self.net(xs, ts, self.cond).chunk(self.branches, dim=0))


class _Branch(OfficialNetField):
    def __init__(self, owner: _BatchedBranches, index: int, cond: torch.Tensor) -> None:
        super().__init__(owner.net, cond)
        self.owner, self.index = owner, index

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.index == 0:
            self.owner.evaluate(x, t)
        return self.owner.out[self.index]


def _official_head(ctx: Context) -> torch.nn.Module:
    torch.manual_seed(ctx.seed + 1000)
    head = ctx.official.fm_head.FlowMatchingHead(**HEAD).eval()
    with torch.no_grad():  # the adaLN and final layers are zero-initialised: perturb every parameter
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return head


def _pipeline_cfg(
    cfg: float, cfg_img: float, schedule: str, token: int, num_tokens: int
) -> tuple[float, float]:
    """GH-v1 ``NextStepPipeline.decoding``: the per-token weights handed to ``image_head.sample``."""
    if schedule == "constant":
        return cfg, cfg_img
    return (1 + (cfg - 1) * (num_tokens - token) / num_tokens,
            1 + (cfg_img - 1) * (num_tokens - token) / num_tokens)


@comparison("flow_sampler")
def flow_sampler(ctx: Context) -> list[Row]:
    from nxcore.sampler.flow import FlowSampler
    from nxcore.sampler.guidance import ConstantGuidance, LinearDecay

    head = _official_head(ctx)
    rows: list[Row] = []
    num_tokens = 4  # the generation length the linear schedule decays over
    # (dtype, branches, cfg, cfg_img, shift, steps, schedule, token, rows/branch, noise_repeat, batched)
    cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for branches, cfg, cfg_img in ((2, 3.0, 1.0), (3, 3.0, 2.0)):
            for shift in (1.0, 3.2):
                for steps in (5, 20):
                    for schedule in ("constant", "linear"):
                        for token in ((0,) if schedule == "constant" else (1, 3)):
                            cases.append(
                                (dtype, branches, cfg, cfg_img, shift, steps, schedule, token, 1, 1, True))
    # one net call per branch (batch 1) instead of the official single batch of all branches
    for dtype in (torch.float32, torch.bfloat16):
        for branches, cfg, cfg_img in ((2, 3.0, 1.0), (3, 3.0, 2.0)):
            cases.append((dtype, branches, cfg, cfg_img, 3.2, 20, "constant", 0, 1, 1, False))
    # batch layouts: 2 images of one caption (noise_repeat 2) and 2 captions x 1 image (noise tiled)
    cases.append((torch.float32, 2, 3.0, 1.0, 1.0, 5, "constant", 0, 2, 2, True))
    cases.append((torch.float32, 2, 3.0, 1.0, 1.0, 5, "constant", 0, 2, 1, True))

    for i, case in enumerate(cases):
        (dtype, branches, cfg, cfg_img, shift, steps, schedule, token,
         rows_per_branch, noise_repeat, batched) = case
        net = head.net.to(dtype)
        head.to(dtype)
        g = torch.Generator().manual_seed(ctx.seed + 2000 + i)
        cond = torch.randn(branches * rows_per_branch, HEAD["cond_dim"], generator=g).to(dtype)
        w, w_img = _pipeline_cfg(cfg, cfg_img, schedule, token, num_tokens)

        torch.manual_seed(ctx.seed + 3000 + i)
        theirs = head.sample(c=cond, cfg=w, cfg2=w_img if branches == 3 else 1.0, timesteps_shift=shift,
                             num_sampling_steps=steps, noise_repeat=noise_repeat)

        # the pipeline's linear schedule decays cfg and cfg_img alike: LinearDecay for both
        schedule_of = ConstantGuidance if schedule == "constant" else LinearDecay
        sampler = FlowSampler(num_steps=steps, shift=shift, method="sde", timesteps="nextstep1",
                              guidance=schedule_of(cfg), image_guidance=schedule_of(cfg_img),
                              noise_repeat=noise_repeat)
        if batched:
            fields = _BatchedBranches(net, cond, branches).fields
        else:
            fields = [OfficialNetField(net, c) for c in cond.chunk(branches, dim=0)]
        torch.manual_seed(ctx.seed + 3000 + i)
        ours = sampler.sample(fields[0], fields[1:], step=token, num_steps=num_tokens)

        name = (f"{branches}-way cfg {cfg:g}" + (f" img {cfg_img:g}" if branches == 3 else "")
                + f", shift {shift:g}, {steps} steps, {schedule}"
                + (f" (token {token}/{num_tokens})" if schedule == "linear" else "")
                + (f", {rows_per_branch} rows noise_repeat {noise_repeat}" if rows_per_branch > 1 else "")
                + ("" if batched else ", net called per branch")
                + f" [{str(dtype).removeprefix('torch.')}]")
        note = ""
        if not batched and dtype == torch.bfloat16:
            note = ("bf16 GEMM rounds differently at batch 1 than at batch 2/3 "
                    "(official: one batch of all branches)")
        elif dtype == torch.bfloat16:
            note = "official returns .to(bf16); nx's fp32 result compared after .to(bf16)"
        expect_fail = note.startswith("bf16 GEMM")
        tol = (0.0 if dtype == torch.bfloat16 else FP32_TOL) if not expect_fail else None
        diff = max_abs(ours.to(theirs.dtype), theirs)
        row = Row("flow_sampler", name, "final sample", diff, tol, note=note)
        if expect_fail:
            row.ok = None
        rows.append(row)
    head.float()
    return rows


class _Recording(OfficialNetField):
    """Remembers the last (x, t, v) it was evaluated at."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = super().__call__(x, t)
        self.last = (x.clone(), t.clone(), v.float().clone())
        return v


@comparison("flow_sampler_clean")
def flow_sampler_clean(ctx: Context) -> list[Row]:
    from nxcore.sampler.flow import FlowSampler

    head = _official_head(ctx)
    rows: list[Row] = []
    for i, (shift, steps) in enumerate(((1.0, 5), (3.2, 20))):
        cond = torch.randn(1, HEAD["cond_dim"], generator=torch.Generator().manual_seed(ctx.seed + 4000 + i))
        torch.manual_seed(ctx.seed + 5000 + i)
        theirs = head.sample_new(c=cond, cfg=1.0, timesteps_shift=shift, num_sampling_steps=steps)
        sampler = FlowSampler(num_steps=steps, shift=shift, method="sde", timesteps="clean")
        field_ = _Recording(head.net, cond)
        torch.manual_seed(ctx.seed + 5000 + i)
        ours = sampler.sample(field_)
        # the official's last step is an SDE step too: drift (1 + t) v - x and one more (1, 64) noise draw,
        # which is the next draw of the global stream after nx's N - 1 draws
        last_noise = torch.randn(1, HEAD["input_dim"])
        x_prev, _, v_prev = field_.last
        t_last, t_end, _ = sampler.steps()[-1]
        dt = t_end - t_last
        drift = (1 + t_last) * v_prev - x_prev
        sde_last = x_prev + drift * dt + (2 * (1 - t_last) * dt) ** 0.5 * last_noise
        name = f"no cfg, shift {shift:g}, {steps} steps [float32]"
        rows.append(Row("flow_sampler_clean", name, "final sample (as is)", max_abs(ours, theirs), None,
                        note="official sample_new: SDE (drift + noise) on the last step too; "
                             "nx: Euler to t=1"))
        rows.append(Row("flow_sampler_clean", name, "nx trajectory + official-style SDE last step",
                        max_abs(sde_last, theirs), FP32_TOL))
    return rows


# --------------------------------------------------------------------------------------------------
# the tiny model: the official NextStep + AutoencoderKL built in-process, copied into nx
# --------------------------------------------------------------------------------------------------

TINY_CAPTIONS = ["a red cube on a blue sphere", "two green triangles"]
TINY_EDITS = ["<image>make the cube red", "<image> two green triangles, then blue"]
TINY_NEGATIVE_EDIT = "Copy original image."
TINY_CORPUS = [*TINY_CAPTIONS, *TINY_EDITS, TINY_NEGATIVE_EDIT, "16*16 4*4 8*8 0123456789*",
               "masterpiece, best quality"] * 20
# nextstep1_tiny()'s shape (4 layers of width 128, 4 query / 2 kv heads, MLP 352, head 128 x 3) with
# Qwen2.5's biases (q/k/v yes, o no)
TINY_LM = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "attention_bias": True, "o_attention_bias": False, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False,
           "latent_channels": 16, "latent_patch_size": 2, "fm_head_dim": 128, "fm_head_layers": 3,
           "use_gen_pos_embed": False}
# a 2-level AE (downsample 2 x patch 2 = 4 px per token): 16 x 16 px = 4 x 4 tokens
TINY_VAE = {"resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
            "z_channels": 16, "encoder_norm": True, "psz": 2, "deterministic": True, "scaling_factor": 0.5,
            "shift_factor": 0.1}
TINY_HW = (16, 16)


def official_tokenizer(corpus: list[str], vocab_size: int = 300):
    """The official tokenizer type (``PreTrainedTokenizerFast``, left padding) over a byte-level BPE
    trained in-process, with the official added tokens (``special_tokens_dict``)."""
    from nextstep.models.tokenization_nextstep import special_tokens_dict
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, padding_side="left", model_max_length=512)
    tok.add_special_tokens(special_tokens_dict)
    return tok


@dataclass
class Tiny:
    """One random tiny model on both sides (fp32 masters; ``pipelines`` gives per-dtype copies)."""

    official: SimpleNamespace
    tokenizer: object  # official PreTrainedTokenizerFast
    model: torch.nn.Module  # official NextStep
    vae: torch.nn.Module  # official AutoencoderKL
    nx_model: torch.nn.Module  # nxrecipes.nextstep1.NextStep1 (load_official of model.save_pretrained)
    nx_tokenizer: object  # nxcore BPETokenizer (load_official: the saved tokenizer.json)
    nx_vae: torch.nn.Module  # nxcore NextStepAutoencoder (from_official of config.json + checkpoint.pt)
    rows: list[Row]  # the loading checks

    def pipelines(self, dtype: torch.dtype):
        """(official NextStepPipeline, nx NextStep1Pipeline) over fresh copies in ``dtype``."""
        import copy

        from nxrecipes.nextstep1.pipeline import NextStep1Pipeline

        off = self.official.pipeline.NextStepPipeline(
            tokenizer=self.tokenizer, model=copy.deepcopy(self.model), vae=copy.deepcopy(self.vae)
        ).to("cpu", dtype)
        ours = NextStep1Pipeline(copy.deepcopy(self.nx_model).to(dtype), self.nx_tokenizer,
                                 copy.deepcopy(self.nx_vae).to(dtype))
        return off, ours


def build_tiny(official: SimpleNamespace, seed: int = 0, lm: dict | None = None, vae: dict | None = None,
               corpus: list[str] | None = None) -> Tiny:
    """The official model, VAE and tokenizer with random weights (every parameter perturbed: the
    head's adaLN / output layers start at zero), saved in the official layouts and loaded by nx's
    official loaders (``load_official``, ``autoencoder.from_official``)."""
    from tokenizers import Tokenizer

    from nxcore.tokenizer import BPETokenizer, SpecialTokens
    from nxcore.tokenizer.autoencoder import from_official as ae_from_official
    from nxrecipes.nextstep1.official import config_from_official, load_official

    lm = {**TINY_LM, **(lm or {})}
    vae_params = {**TINY_VAE, **(vae or {})}
    tok = official_tokenizer(corpus or TINY_CORPUS)
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("[PAD]", "<|begin_of_image|>", "<|end_of_image|>", "<|image_placeholder|>")}
    cfg = official.config.NextStepConfig(
        vocab_size=len(tok), pad_token_id=ids["[PAD]"], bos_token_id=None, eos_token_id=None,
        boi=ids["<|begin_of_image|>"], eoi=ids["<|end_of_image|>"],
        image_placeholder_id=ids["<|image_placeholder|>"], pad_token_id_added=ids["[PAD]"],
        attn_implementation="sdpa", **lm)
    torch.manual_seed(seed)
    model = official.model.NextStep(cfg).eval()
    ae = official.vae.AutoencoderKL(official.vae.AutoEncoderParams(**vae_params)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if name.startswith("image_head") else 0.02))
        for p in ae.parameters():
            p.add_(torch.randn_like(p) * 0.02)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        loaded = load_official(tmp, dtype=torch.float32)
        vae_dir = Path(tmp) / "vae"
        vae_dir.mkdir()
        torch.save(ae.state_dict(), vae_dir / "checkpoint.pt")
        (vae_dir / "config.json").write_text(json.dumps(vae_params))
        nx_vae = ae_from_official(vae_dir).eval()
    nx_model, nx_tok = loaded.model.eval(), loaded.text_tokenizer

    theirs = {k: v for k, v in model.state_dict().items() if k != "gen_pos_embed" and "inv_freq" not in k}
    ours = nx_model.state_dict()
    odd = sorted(set(theirs) ^ set(ours))
    rows.append(Row("tiny_model", "official state_dict -> NextStep1 (load_official)",
                    "keys not matched 1:1 (count)", float(len(odd)), 0.0, note=", ".join(odd[:4])))
    rows.append(Row("tiny_model", "official state_dict -> NextStep1 (load_official)", "weights",
                    max(max_abs(ours[k], theirs[k]) for k in theirs if k in ours), 0.0))
    direct = config_from_official(model.config.to_dict())
    rows.append(Row("tiny_model", "config_from_official(official config) == loaded config",
                    "fields differing",
                    float(direct != nx_model.config), 0.0))
    vae_theirs, vae_ours = ae.state_dict(), nx_vae.state_dict()
    rows.append(Row("tiny_model", "official AutoencoderKL -> autoencoder.from_official", "weights",
                    max(max_abs(vae_ours[k], vae_theirs[k]) for k in vae_theirs), 0.0))
    # the tokenizer: BPETokenizer over the same tokenizers.Tokenizer with NextStep-1's roles
    wrapped = BPETokenizer(Tokenizer.from_str(tok.backend_tokenizer.to_str()), SpecialTokens.nextstep1())
    texts = [*TINY_CAPTIONS, *TINY_EDITS, TINY_NEGATIVE_EDIT, "<|image_area|>4*4",
             "<|image_area|>2*2<|begin_of_image|><|image_placeholder|><|end_of_image|>", ""]
    worst = 0
    for text in texts:
        ref = tok(text, add_special_tokens=True).input_ids
        for ids_ in (nx_tok.encode(text), wrapped.encode(text)):
            worst = max(worst, 0 if ids_ == ref else 1)
    rows.append(Row("tiny_model", "text ids: official tokenizer vs nx BPETokenizer (loaded / wrapped)",
                    "texts differing", float(worst), 0.0))
    return Tiny(official, tok, model, ae, nx_model, nx_tok, nx_vae, rows)


def _tiny(ctx: Context) -> Tiny:
    if "tiny" not in ctx.extra:
        ctx.extra["tiny"] = build_tiny(ctx.official, ctx.seed)
        ctx.extra["tiny_rows_pending"] = True
    return ctx.extra["tiny"]


def _tiny_rows(ctx: Context) -> list[Row]:
    """The loading checks, reported once (with the first comparison that builds the model)."""
    tiny = _tiny(ctx)
    if ctx.extra.pop("tiny_rows_pending", False):
        return list(tiny.rows)
    return []


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


BF16_NOTE = "bf16: measured, no tolerance (different op order / fusions round differently)"


@comparison("head_velocity")
def head_velocity(ctx: Context) -> list[Row]:
    import copy

    tiny = _tiny(ctx)
    rows = _tiny_rows(ctx)
    g = torch.Generator().manual_seed(ctx.seed + 6000)
    x = torch.randn(6, 64, generator=g)
    t = torch.rand(6, generator=g)
    c = torch.randn(6, TINY_LM["hidden_size"], generator=g)
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, None)):
        off = copy.deepcopy(tiny.model.image_head).to(dtype)
        ours = copy.deepcopy(tiny.nx_model.image_head).to(dtype)
        with torch.no_grad():
            # the official sampler's call: net(x.to(c.dtype), t.to(c), c)
            v_off = off.net(x.to(dtype), t.to(dtype), c.to(dtype))
            v_our = ours.velocity(x, t, c.to(dtype))
            joined = ours.predict(c[:2].to(dtype)).join([ours.predict(c[2:4].to(dtype)),
                                                         ours.predict(c[4:].to(dtype))])
            v_join = joined(x, t)
            # generation's inference form (FlowNetSnapshot): one time for every row, as the sampler asks
            t_same = torch.full((6,), 0.3125)
            v_off_same = off.net(x.to(dtype), t_same.to(dtype), c.to(dtype))
            snap = ours.snapshot()
            v_snap = snap.predict(c[:2].to(dtype)).join([snap.predict(c[2:].to(dtype))]).at_time(x, 0.3125)
        tag = f"6 rows [{_dtype_name(dtype)}]"
        note = "" if tol is not None else BF16_NOTE
        rows.append(Row("head_velocity", tag, "net(x, t, c) vs velocity(x, t, c)", max_abs(v_our, v_off), tol,
                        note=note))
        rows.append(Row("head_velocity", tag, "3 FlowFields joined (one call) vs net", max_abs(v_join, v_off),
                        tol, note=note))
        rows.append(Row("head_velocity", tag, "FlowNetSnapshot fields at_time(x, 0.3125) vs net",
                        max_abs(v_snap, v_off_same), tol, note=note))
    return rows


def official_prompt(pipe, captions: list[str], images, hw, per_caption: int, negative: str | None,
                    cfg: float, cfg_img: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate_image`` steps 1, 2 and 4: the left-padded ids and mask of the official pipeline."""
    captions, images = pipe._check_input(captions, images)
    captions, images = pipe._build_captions(captions, images, per_caption, None, negative, cfg, cfg_img)
    out = pipe.tokenizer(captions, padding="longest", truncation=False, add_special_tokens=True,
                         return_tensors="pt")
    return pipe._add_prefix_ids(hw, out.input_ids, out.attention_mask)


def _sources(n: int, hw=TINY_HW, seed: int = 0):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(*hw, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


@comparison("backbone")
def backbone(ctx: Context) -> list[Row]:
    """Final hidden states of the same left-padded CFG batches (a 2-way text batch and a 3-way edit
    batch with source latents at the placeholders), without a cache and as the static-cache prefill."""
    from transformers.cache_utils import StaticCache

    from nxrecipes.nextstep1.prompt import build_prompts

    tiny = _tiny(ctx)
    rows = _tiny_rows(ctx)
    grid = (TINY_HW[0] // 4, TINY_HW[1] // 4)
    srcs = _sources(len(TINY_EDITS))
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, None)):
        off_pipe, our_pipe = tiny.pipelines(dtype)
        off, ours = off_pipe.model, our_pipe.model
        cases = {
            "t2i 2 captions x 2, cfg 3 (2-way)": (TINY_CAPTIONS, None, None, 3.0, 1.0),
            "edit 2 instructions x 2, cfg 3 cfg_img 2 (3-way)":
                (TINY_EDITS, srcs, TINY_NEGATIVE_EDIT, 3.0, 2.0),
        }
        for case, (captions, images, negative, cfg, cfg_img) in cases.items():
            ids, mask = official_prompt(off_pipe, list(captions), images, TINY_HW, 2, negative, cfg, cfg_img)
            sources = None
            latent_map = None
            if images is not None:
                pixels = torch.stack([off_pipe.pil2tensor(i) for i in images]).to(dtype)
                sources = our_pipe.encode(pixels)  # [n, h, w, 64]
                # the same tokens on the official side, as a latent map (its prepare_inputs_embeds patchifies)
                per_row = sources.repeat_interleave(2, dim=0).repeat(2, 1, 1, 1)  # 2 per caption, 2 branches
                latent_map = off.unpatchify(per_row.reshape(per_row.shape[0], -1, 64), grid[0], grid[1])
            prompts = build_prompts(tiny.nx_tokenizer, list(captions), grid, sources=sources,
                                    num_images_per_caption=2, negative_prompt=negative, cfg=cfg,
                                    cfg_img=cfg_img)
            tag = f"{case} [{_dtype_name(dtype)}]"
            note = "" if tol is not None else BF16_NOTE
            same = prompts.ids.shape == ids.shape and bool((prompts.ids == ids).all()) and bool(
                (prompts.attention_mask == mask.bool()).all())
            rows.append(Row("backbone", tag, "prompt ids + mask (official _build_captions/_add_prefix_ids)",
                            0.0 if same else 1.0, 0.0))
            keep = mask.bool()
            with torch.no_grad():
                embeds = off.prepare_inputs_embeds(ids, latent_map)
                h_off = off.forward_model(inputs_embeds=embeds, attention_mask=mask,
                                          use_cache=False).last_hidden_state
                h_our = ours(prompts.ids, prompts.context, attention_mask=prompts.attention_mask)
                rows.append(Row("backbone", tag, "hidden, no cache (non-pad positions)",
                                max_abs(h_our[keep], h_off[keep]), tol, note=note))
                rows.append(Row("backbone", tag, "hidden, no cache (pad positions)",
                                max_abs(h_our[~keep], h_off[~keep]), None,
                                note="pad queries: official (CPU) attends uniformly to all masked keys, nx "
                                     "to itself; never read by a real position"))
                seq, extra = ids.shape[1], grid[0] * grid[1]
                cache = StaticCache(config=off.config, max_batch_size=ids.shape[0], max_cache_len=seq + extra,
                                    device="cpu", dtype=dtype)
                h_off_c = off.forward_model(inputs_embeds=embeds, attention_mask=mask, past_key_values=cache,
                                            use_cache=True).last_hidden_state
                full = torch.ones(ids.shape[0], seq + extra, dtype=torch.bool)
                full[:, :seq] = prompts.attention_mask
                h_our_c = ours(prompts.ids, prompts.context, attention_mask=full[:, :seq],
                               caches=ours.new_caches(ids.shape[0], seq + extra))
                rows.append(Row("backbone", tag, "hidden, static-cache prefill, last position",
                                max_abs(h_our_c[:, -1], h_off_c[:, -1]), tol, note=note))
    return rows


@contextlib.contextmanager
def _recording_official(pipe):
    """Keeps the official pipeline's sampled tokens (``decoding``) and the VAE's decoded images."""
    rec: dict = {}
    decoding, decode = pipe.decoding, pipe.vae.decode

    def keep_tokens(*args, **kwargs):
        rec["tokens"] = decoding(*args, **kwargs)
        return rec["tokens"]

    def keep_images(z, *args, **kwargs):
        out = decode(z, *args, **kwargs)
        rec["decoded"] = out.sample
        return out

    pipe.decoding, pipe.vae.decode = keep_tokens, keep_images
    try:
        yield rec
    finally:
        del pipe.decoding, pipe.vae.decode


@contextlib.contextmanager
def _recording_nx(advance: tuple[tuple[int, ...], torch.dtype] | None = None):
    """Keeps nx's sampled tokens (``generate_latents`` as the pipeline calls it). ``advance``: one
    ``randn(shape, dtype)`` from the pipeline's generator first (the official posterior sample)."""
    import nxrecipes.nextstep1.pipeline as pipeline_module

    real = pipeline_module.generate_latents
    rec: dict = {}

    def wrapped(model, prompts, *, sampling, generator, progress):
        if advance is not None:
            torch.randn(advance[0], generator=generator, dtype=advance[1])
        out = real(model, prompts, sampling=sampling, generator=generator, progress=progress)
        rec["tokens"] = out.latents
        return out

    pipeline_module.generate_latents = wrapped
    try:
        yield rec
    finally:
        pipeline_module.generate_latents = real


GEN_SEED = 42


@comparison("t2i")
def t2i(ctx: Context) -> list[Row]:
    """Official ``generate_image`` vs nx ``text_to_image``: 2 captions x 2 images, cfg 3, 5 steps, same
    seed; the sampled tokens (after use_norm, model dtype) and the decoded images in [0, 1]."""
    from nxrecipes.nextstep1.generate import ImageSampling

    tiny = _tiny(ctx)
    rows = _tiny_rows(ctx)
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, None)):
        off_pipe, our_pipe = tiny.pipelines(dtype)
        for use_norm in (True, False):
            for shift in (1.0, 3.2):
                for schedule in ("constant", "linear"):
                    kw = {"cfg": 3.0, "cfg_schedule": schedule, "timesteps_shift": shift,
                          "num_sampling_steps": 5,
                          "use_norm": use_norm}
                    with _recording_official(off_pipe) as rec_off:
                        off_pipe.generate_image(list(TINY_CAPTIONS), hw=TINY_HW, num_images_per_caption=2,
                                                seed=GEN_SEED, progress=False, **kw)
                    with _recording_nx() as rec_our:
                        images = our_pipe.text_to_image(
                            list(TINY_CAPTIONS), hw=TINY_HW, num_images_per_caption=2,
                            sampling=ImageSampling(**kw), seed=GEN_SEED, progress=False)
                    tokens = rec_our["tokens"].reshape(rec_off["tokens"].shape)
                    decoded = ((rec_off["decoded"].float() + 1) / 2).clamp(0, 1)
                    tag = (f"cfg 3, 5 steps, use_norm {use_norm}, shift {shift:g}, {schedule}, "
                           "2 captions x 2 "
                           f"[{_dtype_name(dtype)}]")
                    note = "" if tol is not None else BF16_NOTE
                    rows.append(Row("t2i", tag, "sampled tokens (16 per image)",
                                    max_abs(tokens, rec_off["tokens"]),
                                    tol, note=note))
                    rows.append(Row("t2i", tag, "decoded image [0, 1]", max_abs(images, decoded), tol,
                                    note=note))
    return rows


@comparison("edit")
def edit(ctx: Context) -> list[Row]:
    """Official ``generate_image`` with source images vs nx ``edit`` (3-way CFG: cfg 3, cfg_img 2).

    The official pipeline draws a posterior sample of the sources (one randn of the latent map's
    shape, in the VAE dtype, from the global stream, BEFORE the sampler's draws); nx encodes the
    posterior mean and does not draw. With ``deterministic: true`` (std 0) the sample is the mean, so
    the source latents agree, and nx's generator is advanced by the same draw (``_recording_nx``) so the
    sampler noise agrees too. Rows "nx as is" leave the generator alone (different noise: info only).
    Both sides get the same pixel tensor (official ``pil2tensor``)."""
    from nxrecipes.nextstep1.generate import ImageSampling

    tiny = _tiny(ctx)
    rows = _tiny_rows(ctx)
    srcs = _sources(len(TINY_EDITS))
    per_caption = 2
    latent_hw = (TINY_HW[0] // 2, TINY_HW[1] // 2)  # the AE's own downsample (before the 2 x 2 token patch)
    for dtype, tol in ((torch.float32, FP32_TOL), (torch.bfloat16, None)):
        off_pipe, our_pipe = tiny.pipelines(dtype)
        pixels = torch.stack([off_pipe.pil2tensor(i) for i in srcs])
        for schedule in ("constant", "linear"):
            kw = {"cfg": 3.0, "cfg_img": 2.0, "cfg_schedule": schedule, "timesteps_shift": 3.2,
                  "num_sampling_steps": 5, "use_norm": True}
            with _recording_official(off_pipe) as rec_off:
                off_pipe.generate_image(list(TINY_EDITS), images=list(srcs), hw=TINY_HW,
                                        num_images_per_caption=per_caption,
                                        negative_prompt=TINY_NEGATIVE_EDIT,
                                        seed=GEN_SEED, progress=False, **kw)
            posterior = ((2 * len(srcs) * per_caption, TINY_LM["latent_channels"], *latent_hw), dtype)
            results = {}
            for label, advance in (("", posterior), (" (nx as is)", None)):
                with _recording_nx(advance) as rec_our:
                    images = our_pipe.edit(pixels, list(TINY_EDITS), hw=TINY_HW,
                                           num_images_per_caption=per_caption,
                                           negative_prompt=TINY_NEGATIVE_EDIT, sampling=ImageSampling(**kw),
                                           seed=GEN_SEED, progress=False)
                results[label] = (rec_our["tokens"].reshape(rec_off["tokens"].shape), images)
            decoded = ((rec_off["decoded"].float() + 1) / 2).clamp(0, 1)
            tag = f"cfg 3 cfg_img 2, 5 steps, shift 3.2, use_norm, {schedule}, 2 x 2 [{_dtype_name(dtype)}]"
            for label, (tokens, images) in results.items():
                as_is = bool(label)
                note = ("nx draws no posterior sample: its noise stream is one draw behind the official's"
                        if as_is else ("" if tol is not None else BF16_NOTE))
                rows.append(Row("edit", tag, "sampled tokens" + label, max_abs(tokens, rec_off["tokens"]),
                                None if as_is else tol, note=note))
                rows.append(Row("edit", tag, "decoded image [0, 1]" + label, max_abs(images, decoded),
                                None if as_is else tol, note=note))
    return rows


# --------------------------------------------------------------------------------------------------


def import_official(path: str, stubs: str | None) -> SimpleNamespace:
    for p in (stubs, path):
        if p and p not in sys.path:
            sys.path.insert(0, p)
    # nextstep/utils/import_utils.py formats torch.version.cuda at import time (None on a CPU torch) and
    # the pipeline's set_seed imports it: import it once with a stand-in string, then restore
    import torch.version

    cuda = torch.version.cuda
    torch.version.cuda = cuda or "0.0"
    try:
        importlib.import_module("nextstep.utils.import_utils")
    finally:
        torch.version.cuda = cuda
    return SimpleNamespace(
        vae=importlib.import_module("nextstep.models.modeling_flux_vae"),
        fm_head=importlib.import_module("nextstep.models.modeling_fm_head"),
        model=importlib.import_module("nextstep.models.modeling_nextstep"),
        pipeline=importlib.import_module("nextstep.models.pipeline_nextstep"),
        config=importlib.import_module("nextstep.models.configuration_nextstep"),
    )


def print_table(rows: list[Row]) -> None:
    notes: dict[str, int] = {}
    for r in rows:
        if r.note:
            notes.setdefault(r.note, len(notes) + 1)
    head = ("comparison", "case", "metric", "max|diff|", "tol", "ok", "note")
    body = [(r.comparison, r.case, r.metric, f"{r.max_abs_diff:.3e}", "-" if r.tol is None else f"{r.tol:g}",
             {True: "ok", False: "FAIL", None: "info"}[r.ok], f"[{notes[r.note]}]" if r.note else "")
            for r in rows]
    widths = [max(len(str(x[i])) for x in (head, *body)) for i in range(len(head))]
    for line in (head, tuple("-" * w for w in widths), *body):
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    for note, k in notes.items():
        print(f"[{k}] {note}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, help="directory holding the official nextstep/ package")
    ap.add_argument("--stubs", default=None, help="directory prepended to sys.path (e.g. a torchvision stub)")
    ap.add_argument("--only", action="append", choices=sorted(REGISTRY), help="run only this comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny sizes: 1 is fastest)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    official = import_official(args.official, args.stubs)
    ctx = Context(official=official, official_path=args.official, seed=args.seed)
    rows: list[Row] = []
    timings = {}
    for name in args.only or list(REGISTRY):
        t0 = time.perf_counter()
        rows += REGISTRY[name](ctx)
        timings[name] = round(time.perf_counter() - t0, 2)
    print_table(rows)

    import diffusers
    import transformers

    record = {
        "official": {"path": args.official, "snapshot": "GH-v1 6e49bae"},
        "environment": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "diffusers": diffusers.__version__, "python": platform.python_version(),
                        "ENABLE_TORCH_COMPILE": os.environ.get("ENABLE_TORCH_COMPILE"),
                        "threads": torch.get_num_threads()},
        "seed": args.seed,
        "seconds": timings,
        "rows": [asdict(r) for r in rows],
        "failed": [f"{r.comparison}: {r.case} / {r.metric}" for r in rows if r.ok is False],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only and args.out.exists():  # keep the other comparisons' rows
        old = json.loads(args.out.read_text())
        kept = [r for r in old.get("rows", []) if r["comparison"] not in set(args.only)]
        record["rows"] = kept + record["rows"]
        record["seconds"] = {**old.get("seconds", {}), **timings}
        record["failed"] = [f"{r['comparison']}: {r['case']} / {r['metric']}" for r in record["rows"]
                            if r["ok"] is False]
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if record["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Training NextFlow's optional diffusion decoder on ShapeWorld (paper §2.3, §3.3).

    cfg = decoder_training_tiny("out/nextflow", minutes=12)                 # UNet, into RUN/diffusion_decoder
    train_decoder(cfg)
    nx nextflow train-decoder RUN --minutes 12 --threads 1 [--denoiser dit] [--upsample --init DIR]

The run's image tokenizer (``RUN/image_tokenizer``, or any dual-codebook tokenizer directory) stays
frozen. ``data.length`` ShapeWorld ``t2i`` images of the train split are encoded once, at the start,
into their condition maps (``tokenizer.decoder_condition`` of the deterministic codes); every update
draws a batch of (target image, condition, caption) and takes one step of the flow-matching loss,
the standard diffusion loss alone, no pixel loss (§3.3). The targets are rendered at the
decoder's output size: the tokenizer's size, or twice it for ``scale_factor=2`` (the same scenes,
so the condition comes from the small rendering and the target is the large one).

Two-stage curriculum (§3.3): train a ``scale_factor=1`` decoder, then ``--upsample --init DIR`` starts
a ``scale_factor=2`` decoder from its weights (the networks are resolution-agnostic) and fine-tunes
it on 2x targets.

Output directory (``out``, default ``RUN/diffusion_decoder``, or ``RUN/diffusion_decoder_2x`` with
``--upsample``): the shared ``Trainer``'s files (``checkpoints/``, ``metrics.jsonl``,
``train_config.json``, ``model.safetensors``; an existing one resumes), ``decoder_run.json`` (this
config) and ``config.json`` (the ``DiffusionDecoderConfig``), so the directory loads with
``nxcore.checkpoint.from_pretrained`` (``load_decoder``). ``NextFlowPipeline.from_run`` picks
``RUN/diffusion_decoder`` up for ``decoder="diffusion"``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from nxcore.checkpoint import atomic_write_text, from_pretrained, load_into
from nxcore.config import Config, config, integer, one_of
from nxcore.decoder import (
    DecoderCondition,
    DiffusionDecoder,
    DiffusionDecoderConfig,
    DiTDenoiserConfig,
    UNetDenoiserConfig,
    diffusion_decoder_tiny,
)
from nxcore.schedule import Schedule
from nxrecipes.train import IndexedBatches, TrainConfig, Trainer
from nxrecipes.train.run import (
    IMAGE_TOKENIZER_DIR,
    RUN_CONFIG_FILE,
    UpdateProgress,
    cpu_train_config,
    instance_of,
    optional_minutes,
    plan_steps,
    planned_steps,
)

__all__ = [
    "DECODER_DIR",
    "DECODER_RUN_FILE",
    "DecoderData",
    "DecoderStep",
    "DecoderTrainConfig",
    "decoder_training_tiny",
    "encode_decoder_data",
    "load_decoder",
    "train_decoder",
]

DECODER_DIR = "diffusion_decoder"
DECODER_RUN_FILE = "decoder_run.json"
DENOISERS = ("unet", "dit")


def _path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value:
        return Path(value)
    raise TypeError(f"expected a non-empty path (str or Path), got {value!r}")


def _optional_path(value: Any) -> Path | None:
    return None if value is None else _path(value)


def _pairs(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        return value
    return tuple(tuple(v) if isinstance(v, list) else v for v in value)


@config
class DecoderData(Config):
    """``length`` ShapeWorld ``t2i`` images of ``split`` (seed ``seed``) at the tokenizer's ``size``,
    encoded with the ``schedule`` (its last grid x the tokenizer's downsample is ``size``)."""

    schedule: tuple[tuple[int, int], ...] = attrs.field(converter=_pairs)
    size: int = attrs.field(validator=integer(at_least=8))
    split: str = attrs.field(default="train", validator=one_of("train", "validation", "test", "heldout"))
    length: int = attrs.field(default=4096, validator=integer(at_least=1))
    seed: int = attrs.field(default=0, validator=integer(at_least=0))


@config
class DecoderTrainConfig(Config):
    """Everything a decoder run needs (module docstring): the frozen ``tokenizer_dir``, the ``decoder``
    config, the ``data``, the loop (``train``; its ``run_dir`` is the output directory), an optional
    ``init`` decoder directory to start from (the 2x stage), and a ``minutes`` budget."""

    tokenizer_dir: Path = attrs.field(converter=_path)
    decoder: DiffusionDecoderConfig = attrs.field(validator=instance_of(DiffusionDecoderConfig))
    data: DecoderData = attrs.field(validator=instance_of(DecoderData))
    train: TrainConfig = attrs.field(validator=instance_of(TrainConfig))
    init: Path | None = attrs.field(default=None, converter=_optional_path)
    minutes: float | None = attrs.field(default=None, validator=optional_minutes)

    @property
    def out(self) -> Path:
        return self.train.run_dir


def _tokenizer_dir(run: Path) -> Path:
    """``RUN/image_tokenizer`` for a NextFlow run, else ``run`` itself (a tokenizer directory)."""
    return run / IMAGE_TOKENIZER_DIR if (run / IMAGE_TOKENIZER_DIR / "config.json").is_file() else run


def decoder_training_tiny(run: str | os.PathLike, out: str | os.PathLike | None = None, *,
                          denoiser: str = "unet", upsample: bool = False,
                          init: str | os.PathLike | None = None,
                          minutes: float | None = None, steps: int | None = None, images: int = 4096,
                          **changes: Any) -> DecoderTrainConfig:
    """The CPU-sized decoder run for the NextFlow run (or tokenizer directory) ``run``: a
    ``diffusion_decoder_tiny`` with the ``denoiser`` ("unet" or "dit"), ``scale_factor=2`` with
    ``upsample``; ``images`` training images; batch 32, AdamW lr 1e-3 (warmup 50, cosine), a checkpoint
    every 100 updates. ``changes``: ``TrainConfig`` fields (``batch_size``, ``lr``, ``seed``, ...) or
    ``DiffusionDecoderConfig`` fields (``num_steps``, ``cond_channels``, ...)."""
    from nxrecipes.nextflow.train import load_image_tokenizer

    run = _path(run)
    if denoiser not in DENOISERS:
        raise ValueError(f"denoiser must be one of {DENOISERS}, got {denoiser!r}")
    tok_dir = _tokenizer_dir(run)
    tokenizer = load_image_tokenizer(tok_dir)
    if not hasattr(tokenizer, "decoder_condition"):
        raise TypeError(
            f"the tokenizer at {tok_dir} is a {type(tokenizer).__name__}, which gives no diffusion-decoder "
            "condition; the diffusion decoder needs a dual-codebook tokenizer (nx tokenizer train --kind "
            "dual)"
        )
    decoder_fields = {f.name for f in attrs.fields(DiffusionDecoderConfig)}
    train_changes = {k: v for k, v in changes.items() if k not in decoder_fields}
    decoder_changes = {k: v for k, v in changes.items() if k in decoder_fields}
    net = UNetDenoiserConfig() if denoiser == "unet" else DiTDenoiserConfig()
    decoder = diffusion_decoder_tiny(tokenizer, denoiser=net, scale_factor=2 if upsample else 1,
                                     **decoder_changes)
    schedule = _schedule_of(run, tokenizer)
    size = schedule[-1][0] * tokenizer.downsample
    if out is None:
        out = run / (DECODER_DIR + ("_2x" if upsample else ""))
    train = cpu_train_config(out, steps=steps, minutes=minutes, batch_size=16 if upsample else 32,
                             changes=train_changes)
    return DecoderTrainConfig(tokenizer_dir=tok_dir, decoder=decoder,
                              data=DecoderData(schedule=schedule, size=size, length=images),
                              train=train, init=init, minutes=minutes)


def _schedule_of(run: Path, tokenizer: nn.Module) -> tuple[tuple[int, int], ...]:
    """The NextFlow run's image schedule; for a bare tokenizer directory, a 32 px one."""
    if (run / RUN_CONFIG_FILE).is_file():
        from nxrecipes.nextflow.train import NextFlowTrainConfig

        return tuple(tuple(s) for s in NextFlowTrainConfig.load(run / RUN_CONFIG_FILE).data.schedule)
    from nxcore.schedule import derived_schedule

    g = max(1, 32 // tokenizer.downsample)
    return tuple(derived_schedule((g, g), min(g, 7)).steps)


# --- data ----------------------------------------------------------------------------------------


@torch.no_grad()
def encode_decoder_data(tokenizer: nn.Module, data: DecoderData, scale_factor: int, *, batch: int = 128,
                        progress: bool = False) -> list[dict[str, Any]]:
    """One record per image: ``image`` (uint8 [3, S, S], S = size x ``scale_factor``), ``semantic``,
    ``pixel``, ``features`` (the condition maps of the size-``size`` rendering) and ``caption``."""
    from nxrecipes.data.shapeworld import ShapeWorld
    from nxrecipes.tokenizer.data import to_model

    small = ShapeWorld(split=data.split, size=data.size, tasks=("t2i",), length=data.length, seed=data.seed)
    big = small if scale_factor == 1 else ShapeWorld(split=data.split, size=data.size * scale_factor,
                                                     tasks=("t2i",), length=data.length, seed=data.seed)
    schedule = Schedule(data.schedule)
    device = next(tokenizer.parameters()).device
    records: list[dict[str, Any]] = []
    for start in tqdm(range(0, data.length, batch), desc="encode", disable=not progress, leave=False):
        idx = range(start, min(start + batch, data.length))
        rows = [small[i] for i in idx]
        images = torch.stack([to_model(r.image) for r in rows]).to(device)
        cond = tokenizer.decoder_condition(tokenizer.encode(images, schedule), schedule)
        targets = rows if big is small else [big[i] for i in idx]
        for j, (r, t) in enumerate(zip(rows, targets, strict=True)):
            image = ((to_model(t.image) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            records.append({"image": image, "semantic": cond.semantic[j].float().cpu(),
                            "pixel": cond.pixel[j].float().cpu(), "features": cond.features[j].float().cpu(),
                            "caption": r.prompt})
    return records


class DecoderStep:
    """``step_fn(decoder, batch) -> (loss, metrics)`` of the shared loop: the flow-matching loss."""

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"].float() / 127.5 - 1.0
        condition = DecoderCondition(batch["semantic"], batch["pixel"], batch["features"])
        loss = model.loss(images, condition, list(batch["caption"]))
        return loss, {}


# --- the run ---------------------------------------------------------------------------------------


def load_decoder(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> DiffusionDecoder:
    """The trained decoder at ``directory`` (``config.json`` + ``model.safetensors``), in eval mode."""
    directory = Path(directory)
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{directory} holds no trained diffusion decoder (config.json + model.safetensors); train one "
            "with `nx nextflow train-decoder RUN` (it writes RUN/diffusion_decoder) and let it finish"
        )
    decoder = from_pretrained(directory, config_type=DiffusionDecoderConfig, device=device)
    return decoder.eval()


def train_decoder(cfg: DecoderTrainConfig, *, progress: bool = True, images: nn.Module | None = None
                  ) -> dict[str, Any]:
    """Train (or resume) the decoder run ``cfg`` (module docstring); ``images`` replaces the tokenizer
    loaded from ``cfg.tokenizer_dir``. Returns a summary dict (steps, last loss, seconds, out)."""
    from nxrecipes.nextflow.train import load_image_tokenizer

    if not isinstance(cfg, DecoderTrainConfig):
        raise TypeError(
            f"cfg must be a DecoderTrainConfig (e.g. decoder_training_tiny(RUN)), got {type(cfg).__name__}"
        )
    started = time.perf_counter()
    tokenizer = load_image_tokenizer(cfg.tokenizer_dir) if images is None else images.eval()
    dims = tuple(tokenizer.decoder_condition_dims)
    if dims != cfg.decoder.condition_dims:
        raise ValueError(
            f"the tokenizer's condition maps have widths {dims} but cfg.decoder expects "
            f"{cfg.decoder.condition_dims}; build the config from this tokenizer (decoder_training_tiny)"
        )
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / DECODER_RUN_FILE, cfg.to_json() + "\n")
    atomic_write_text(out / "config.json", cfg.decoder.to_json() + "\n")
    torch.manual_seed(cfg.train.seed)
    decoder = cfg.decoder.build()
    if cfg.init is not None:
        load_into(decoder, Path(cfg.init) / "model.safetensors")
    records = encode_decoder_data(tokenizer, cfg.data, cfg.decoder.scale_factor, progress=progress)
    step_fn = DecoderStep()

    def batches() -> IndexedBatches:
        return IndexedBatches(records, cfg.train.batch_size, cfg.train.seed)

    tc = planned_steps(cfg.minutes, out, cfg.train, lambda budget: plan_steps(
        decoder, step_fn, batches(), cfg.train, torch.device("cpu"), budget, time.perf_counter() - started))
    bar = tqdm(total=tc.steps, desc="train decoder", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        summary = Trainer(decoder, step_fn, UpdateProgress(batches(), bar, tc.grad_accum), tc).fit()
    finally:
        bar.close()
    return {"step": summary.step, "loss": summary.loss, "seconds": time.perf_counter() - started,
            "out": str(out)}

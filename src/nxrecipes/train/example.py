"""A tiny runnable training: a character-level language model on ShapeWorld sentences.

One process, or several with ``torchrun`` (DDP or FSDP2; gloo on CPU, nccl on CUDA)::

    python -m nxrecipes.train.example --run-dir out/run
    torchrun --standalone --nproc_per_node=2 -m nxrecipes.train.example --parallel fsdp --run-dir out/run

Kill it and run the same command again: it resumes from its newest checkpoint in ``--run-dir`` and
ends with the same weights as a run never interrupted. Rank 0 prints one line
``nx-train-summary {json}`` at the end; metrics are in ``RUN_DIR/metrics.jsonl``
(``nx plot RUN_DIR`` draws them) and the final weights in ``RUN_DIR/model.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nxrecipes.train.batches import IndexedBatches
from nxrecipes.train.config import MIXED_PRECISION, PARALLEL, TrainConfig
from nxrecipes.train.distributed import DistEnv, init_distributed, shutdown
from nxrecipes.train.loop import Trainer, TrainSummary, seed_all

__all__ = ["PAD", "VOCAB", "Block", "ShapeWorldChars", "TinyLM", "lm_step", "main", "train"]

VOCAB = 128  # ASCII
PAD = 0
SUMMARY_PREFIX = "nx-train-summary "


class ShapeWorldChars(Dataset):
    """ShapeWorld ``text_only`` sentences as ASCII codes: ``[seq_len + 1]`` int64, 0-padded."""

    def __init__(self, length: int = 512, seq_len: int = 64, seed: int = 0):
        from nxrecipes.data.shapeworld import ShapeWorld

        self.world = ShapeWorld(split="train", size=32, tasks=("text_only",), length=length, seed=seed)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> torch.Tensor:
        text = self.world[index].text
        codes = [c if 0 < c < VOCAB else ord("?") for c in text.encode("ascii", "replace")]
        codes = codes[: self.seq_len + 1]
        return torch.tensor(codes + [PAD] * (self.seq_len + 1 - len(codes)), dtype=torch.long)


class Block(nn.Module):
    """Pre-norm causal self-attention + MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.attn_norm = nn.RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.RMSNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """A small decoder: token + learned position embeddings, ``layers`` blocks, a linear head."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4, seq_len: int = 64, vocab: int = VOCAB):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos_embed = nn.Parameter(torch.randn(seq_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def lm_step(model: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-character cross-entropy over the non-padding positions of ``batch``."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    logits = model(inputs)
    flat = logits.float().reshape(-1, logits.shape[-1])
    loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=PAD)
    return loss, {"tokens": int((targets != PAD).sum())}


def train(cfg: TrainConfig, *, samples: int = 512, dim: int = 64, layers: int = 2, heads: int = 4,
          seq_len: int = 64) -> TrainSummary:
    """Build the example (same weights on every rank from ``cfg.seed``) and ``fit`` it."""
    env = init_distributed(force=cfg.parallel != "none")
    seed_all(cfg.seed)
    model = TinyLM(dim=dim, layers=layers, heads=heads, seq_len=seq_len)
    data = IndexedBatches(ShapeWorldChars(samples, seq_len, seed=cfg.seed), cfg.batch_size, cfg.seed,
                          rank=env.rank, world_size=env.world_size)
    return Trainer(model, lm_step, data, cfg, block_types=(Block,)).fit()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nxrecipes.train.example",
                                description="Train a tiny character-level LM on ShapeWorld sentences.")
    p.add_argument("--run-dir", required=True, help="checkpoints, metrics and weights go here")
    p.add_argument("--parallel", choices=PARALLEL, default="none")
    p.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="fp32")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8, help="per rank and micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup-steps", type=int, default=4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--keep-last", type=int, default=2)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=512, help="ShapeWorld sentences in the data set")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    return p


def main(argv: Sequence[str] | None = None) -> TrainSummary:
    args = _parser().parse_args(argv)
    cfg = TrainConfig(
        run_dir=args.run_dir, steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip if args.grad_clip > 0 else None, parallel=args.parallel,
        mixed_precision=args.mixed_precision, activation_checkpointing=args.activation_checkpointing,
        checkpoint_every=args.checkpoint_every, keep_last=args.keep_last, log_every=args.log_every,
        seed=args.seed,
    )
    try:
        summary = train(cfg, samples=args.samples, dim=args.dim, layers=args.layers, heads=args.heads,
                        seq_len=args.seq_len)
        if DistEnv.from_env().is_main:
            record = {"step": summary.step, "loss": summary.loss, "losses": list(summary.losses),
                      "resumed_from": summary.resumed_from, "weights": str(summary.weights)}
            print(SUMMARY_PREFIX + json.dumps(record), flush=True)
        return summary
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])

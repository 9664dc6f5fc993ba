"""Packing benchmark (NextFlow §4, Table 3): batch padding vs fixed-length vs fixed-compute packing.

Simulates N synchronous data-parallel ranks (default 8) on a paper-like sample mix and reports, per
strategy, the simulated time (sum over steps of the slowest rank's FLOPs), the padding tokens, the
idle share of rank-time, and the throughput (useful tokens / time) relative to batch padding. The
paper (Table 3, 512-level pre-training) reports 3.4x for fixed-length and 4.1x for fixed-budget
packing over batch padding.

    .venv/bin/python benchmarks/packing.py            # full run, writes benchmarks/results/packing.json
    .venv/bin/python benchmarks/packing.py --quick    # small mix, for tests

The mix (all choices ours where the paper is silent):
- kinds, by sample count: the 512-level pre-training row of Table 2 (text 700M, T2I 345M,
  editing 20M, interleaved 5M samples) -> 65.4% text, 32.2% T2I, 1.9% editing, 0.5% interleaved;
- text-only: log-normal length, median 600 tokens, sigma 0.9, clipped to [32, 8192];
- text-to-image: prompt (log-normal, median 96, sigma 0.6, [8, 512]) + a discrete image with
  nextflow_schedule(ratio, level); levels 256 / 512 / 1024 with shares 20% / 70% / 10% (the paper
  does not give the split inside a stage: we assume lower-resolution images keep a lower level and
  a few are trained at 1024 already);
- aspect ratios (Table 14 labels): 1:1 40%, 13:18 and 18:13 (~3:4, 4:3) 15% each, 4:7 and 7:4
  (~9:16, 16:9) 10% each, 1:2 and 2:1 5% each;
- editing: instruction (median 32, [4, 256]) + source image + target image, both 512-level, same
  ratio;
- interleaved: (text, image, text, image), texts median 128 ([8, 1024]), images 512-level.

Cost: per layer 12·s·h² + 4·s²·h forward FLOPs per sample of s tokens, h = 3584, 28 layers
(Qwen2.5-VL-7B, NextFlow's backbone); see nxrecipes.data.packing. Strategies: batch padding with 4
samples per rank per step (dense padded attention; also reported with varlen attention), fixed-length
packing into 16384-token rows (>= the longest sample), fixed-compute packing with a budget of
cost(16384) per rank per step (one 16384-token sample: an upper bound on any fixed-length row;
rows of short samples then hold more tokens, up to ~2.5x at h = 3584), rows sorted by cost into
steps. Two ablations: ``fixed_compute_unsorted`` (the budget alone, rows dealt out at random) and
``fixed_compute_capped`` (rows also capped at 16384 tokens: fixed-length's activation memory).
The tokens/s column converts FLOPs to time at an assumed sustained 100 TFLOP/s per GPU with
training = 3x forward FLOPs: only the ratios carry meaning.

``--real`` also measures the real 2-process CPU throughput of the three strategies with the shared
training loop (``measure_real_throughput``: torchrun, DDP over gloo, a small decoder on the mix
shrunk 16x) and prints it beside the simulated ratios of the same plans.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.schedule import nextflow_schedule
from nxrecipes.data.packing import (
    TransformerCost,
    pack_fixed_compute,
    pack_fixed_length,
    pad_batches,
)

RESULTS = Path(__file__).resolve().parent / "results" / "packing.json"

KINDS = {"text": 700, "t2i": 345, "editing": 20, "interleaved": 5}  # Table 2, 512-level, M samples
T2I_LEVELS = {256: 0.2, 512: 0.7, 1024: 0.1}
RATIOS = {"1:1": 0.4, "13:18": 0.15, "18:13": 0.15, "4:7": 0.1, "7:4": 0.1, "1:2": 0.05, "2:1": 0.05}
TEXT = (600, 0.9, 32, 8192)  # median, sigma, min, max
PROMPT = (96, 0.6, 8, 512)
INSTRUCTION = (32, 0.5, 4, 256)
INTERLEAVED_TEXT = (128, 0.7, 8, 1024)

PAPER_SPEEDUP = {"batch_padding": 1.0, "fixed_length": 3.4, "fixed_compute": 4.1}
PAPER_TPT = {"batch_padding": 620.3, "fixed_length": 2109.5, "fixed_compute": 2517.4}
SUSTAINED_FLOPS = 100e12
TRAIN_OVER_FORWARD = 3.0


def _lognormal(rng: np.random.Generator, spec: tuple[float, float, int, int]) -> int:
    median, sigma, lo, hi = spec
    return int(np.clip(round(median * np.exp(sigma * rng.standard_normal())), lo, hi))


def _choice(rng: np.random.Generator, table: dict):
    keys = list(table)
    p = np.array([table[k] for k in keys], dtype=float)
    return keys[rng.choice(len(keys), p=p / p.sum())]


def _scaled(n: int, length_scale: int) -> int:
    return max(1, round(n / length_scale))


def make_mix(
    num_samples: int, seed: int = 0, length_scale: int = 1
) -> tuple[list[SequenceLayout], list[str]]:
    """``num_samples`` layouts drawn from the documented mix, and the kind of each.

    ``length_scale`` > 1 shrinks every sample about that many times (text lengths divided, image
    schedules cut to the leading steps whose token count is nearest the divided one), for the
    real CPU measurement: with the hidden size divided alike, the FLOPs ratios stay those of
    the full-size mix.
    """
    rng = np.random.default_rng(seed)
    schedules: dict[tuple[str, int], DiscreteImage] = {}

    def image(ratio: str, level: int) -> DiscreteImage:
        if (ratio, level) not in schedules:
            schedule = nextflow_schedule(ratio, level=level)
            if length_scale > 1:
                target = schedule.total_tokens / length_scale
                totals = np.cumsum(schedule.token_counts)
                schedule = schedule.truncate(int(np.argmin(np.abs(totals - target))) + 1)
            schedules[ratio, level] = DiscreteImage(schedule)
        return schedules[ratio, level]

    def text(spec: tuple[float, float, int, int]) -> TextSpan:
        return TextSpan(_scaled(_lognormal(rng, spec), length_scale))

    samples, kinds = [], []
    for _ in range(num_samples):
        kind = _choice(rng, KINDS)
        if kind == "text":
            layout = SequenceLayout.of(text(TEXT))
        elif kind == "t2i":
            img = image(_choice(rng, RATIOS), _choice(rng, T2I_LEVELS))
            layout = SequenceLayout.of(text(PROMPT), img)
        elif kind == "editing":
            img = image(_choice(rng, RATIOS), 512)
            layout = SequenceLayout.of(text(INSTRUCTION), img, img)
        else:
            segs = []
            for _ in range(2):
                segs += [text(INTERLEAVED_TEXT), image(_choice(rng, RATIOS), 512)]
            layout = SequenceLayout(tuple(segs))
        samples.append(layout)
        kinds.append(kind)
    return samples, kinds


def run(
    *,
    num_samples: int = 16384,
    ranks: int = 8,
    batch_size: int = 4,
    max_len: int = 16384,
    hidden: int = 3584,
    layers: int = 28,
    seed: int = 0,
) -> dict:
    t0 = time.perf_counter()
    samples, kinds = make_mix(num_samples, seed)
    cost = TransformerCost(hidden=hidden, layers=layers)
    longest = max(s.length for s in samples)
    if longest > max_len:
        raise ValueError(f"max_len={max_len} is shorter than the longest sample ({longest} tokens)")
    budget = cost(max_len)
    plans = {
        "batch_padding": pad_batches(samples, ranks=ranks, batch_size=batch_size, seed=seed),
        "batch_padding_varlen": pad_batches(
            samples, ranks=ranks, batch_size=batch_size, seed=seed, dense_attention=False
        ),
        "fixed_length": pack_fixed_length(samples, ranks=ranks, max_len=max_len, seed=seed),
        "fixed_compute": pack_fixed_compute(
            samples, ranks=ranks, budget_flops=budget, cost=cost, seed=seed
        ),
        # ablations: the budget alone (rows dealt out at random), and rows capped at max_len
        # tokens (the activation memory of fixed-length packing), balanced by sorting
        "fixed_compute_unsorted": pack_fixed_compute(
            samples, ranks=ranks, budget_flops=budget, cost=cost, balance=False, seed=seed
        ),
        "fixed_compute_capped": pack_fixed_compute(
            samples, ranks=ranks, budget_flops=budget, cost=cost, max_len=max_len, seed=seed
        ),
    }
    stats = {name: plan.stats(cost) for name, plan in plans.items()}
    base = stats["batch_padding"].throughput
    strategies = {}
    for name, st in stats.items():
        row_tokens = [row.length for r in range(ranks) for row in plans[name].rows(r)]
        seconds = st.time * TRAIN_OVER_FORWARD / SUSTAINED_FLOPS
        strategies[name] = {
            **st.as_dict(),
            "speedup": st.throughput / base,
            "paper_speedup": PAPER_SPEEDUP.get(name),
            "tokens_per_s_per_rank": st.useful_tokens / seconds / ranks,
            "paper_tokens_per_s_per_rank": PAPER_TPT.get(name),
            "mean_row_tokens": float(np.mean(row_tokens)),
            "max_row_tokens": int(max(row_tokens)),
        }
    lengths = np.array([s.length for s in samples])
    mix = {
        kind: {
            "samples": int(sum(k == kind for k in kinds)),
            "mean_tokens": float(lengths[[k == kind for k in kinds]].mean()) if kind in kinds else 0.0,
        }
        for kind in KINDS
    }
    return {
        "benchmark": "packing",
        "config": {
            "num_samples": num_samples,
            "ranks": ranks,
            "batch_size": batch_size,
            "max_len": max_len,
            "budget_flops": budget,
            "hidden": hidden,
            "layers": layers,
            "seed": seed,
            "kinds": KINDS,
            "t2i_levels": {str(k): v for k, v in T2I_LEVELS.items()},
            "ratios": RATIOS,
            "sustained_flops_per_rank": SUSTAINED_FLOPS,
            "train_over_forward": TRAIN_OVER_FORWARD,
        },
        "mix": mix,
        "useful_tokens": int(lengths.sum()),
        "longest_sample": int(longest),
        "strategies": strategies,
        "real_throughput": None,
        "real_throughput_note": "not measured in this run: pass --real (measure_real_throughput)",
        "elapsed_s": time.perf_counter() - t0,
        "python": platform.python_version(),
    }


def format_table(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"Packing on {cfg['ranks']} simulated ranks, {cfg['num_samples']} samples "
        f"({result['useful_tokens']} tokens, longest {result['longest_sample']}), "
        f"h={cfg['hidden']}, {cfg['layers']} layers",
        f"{'strategy':<24}{'steps':>7}{'pad tok %':>11}{'idle %':>8}{'max row':>9}{'tok/s/rank':>12}"
        f"{'speedup':>9}{'paper':>8}",
    ]
    for name, s in result["strategies"].items():
        paper = f"{s['paper_speedup']:.1f}x" if s["paper_speedup"] else "-"
        lines.append(
            f"{name:<24}{s['num_steps']:>7}{100 * s['padding_fraction']:>11.2f}"
            f"{100 * s['idle_fraction']:>8.1f}{s['max_row_tokens']:>9}{s['tokens_per_s_per_rank']:>12.0f}"
            f"{s['speedup']:>8.2f}x{paper:>8}"
        )
    lines.append(
        "speedup = throughput (useful tokens / simulated time, time = sum over steps of the slowest "
        "rank's FLOPs) relative to batch padding; paper = NextFlow Table 3 (512-level stage). "
        "tok/s/rank assumes 100 TFLOP/s sustained (ratios only)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The real measurement: the shared Trainer (nxrecipes.train) on 2 CPU processes under torchrun.

REAL_STRATEGIES = ("batch_padding", "fixed_length", "fixed_compute")


def _real_plans(samples, *, ranks, batch_size, max_len, cost, seed):
    return {
        "batch_padding": pad_batches(samples, ranks=ranks, batch_size=batch_size, seed=seed),
        "fixed_length": pack_fixed_length(samples, ranks=ranks, max_len=max_len, seed=seed),
        "fixed_compute": pack_fixed_compute(
            samples, ranks=ranks, budget_flops=cost(max_len), cost=cost, seed=seed
        ),
    }


def _real_worker(args: argparse.Namespace) -> None:
    """One torchrun process: train a small decoder on each strategy's plan with the shared
    Trainer (DDP, gloo), one optimizer step per plan step; rank 0 writes the timings."""
    import tempfile

    import torch
    import torch.nn.functional as F
    from torch import nn

    from nxrecipes.train.config import TrainConfig
    from nxrecipes.train.distributed import init_distributed, shutdown
    from nxrecipes.train.loop import Trainer, seed_all
    from nxrecipes.train.metrics import read_metrics

    torch.set_num_threads(1)
    env = init_distributed(force=True)
    vocab, heads = 256, 4
    samples, _ = make_mix(args.samples, args.seed, length_scale=args.length_scale)
    cost = TransformerCost(hidden=args.hidden, layers=args.layers)
    plans = _real_plans(samples, ranks=env.world_size, batch_size=args.batch_size,
                        max_len=args.max_len, cost=cost, seed=args.seed)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = args.hidden
            self.norm1, self.norm2 = nn.LayerNorm(h), nn.LayerNorm(h)
            self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
            self.mlp = nn.Sequential(nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h))

        def forward(self, x, docs):
            b, n, h = x.shape
            q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, heads, h // heads).permute(2, 0, 3, 1, 4)
            if docs is None:  # dense padded batch: the whole row, mask over all L x L
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense_mask)
            else:  # packed row: attention within each document only
                out = torch.cat([
                    F.scaled_dot_product_attention(q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], attn_mask=m)
                    for a, e, m in docs
                ], dim=2)
            x = x + self.proj(out.transpose(1, 2).reshape(b, n, h))
            return x + self.mlp(self.norm2(x))

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, args.hidden)
            self.blocks = nn.ModuleList(Block() for _ in range(args.layers))
            self.norm = nn.LayerNorm(args.hidden)
            self.head = nn.Linear(args.hidden, vocab)

        def forward(self, ids, docs=None, dense_mask=None):
            x = self.embed(ids)
            for block in self.blocks:
                block.dense_mask = dense_mask
                x = block(x, docs)
            return self.head(self.norm(x))

    def encode(rows, dense: bool, gen: torch.Generator) -> dict:
        items = []
        for row in rows:
            ids = torch.randint(0, vocab, (row.length,), generator=gen)
            docs = [(o, o + n, lay.attention_mask()) for lay, o, n in
                    zip(row.layouts, row.offsets, row.lengths, strict=True)]
            if row.padding:
                p0 = row.content_length
                docs.append((p0, row.length, torch.ones(row.padding, row.padding, dtype=torch.bool).tril()))
            items.append({"ids": ids, "targets": torch.roll(ids, -1), "weights": row.loss_weights(),
                          "docs": docs, "mask": row.attention_mask() if dense else None,
                          "useful": row.content_length})
        return {"dense": dense, "rows": items}

    class PlanBatches:
        def __init__(self, plan) -> None:
            gen = torch.Generator().manual_seed(args.seed * 1000 + env.rank)
            dense = plan.dense_padding
            self.batches = [encode(rows, dense, gen) for rows in plan.ranks[env.rank]]
            self.position = 0

        def next_batch(self):
            batch = self.batches[self.position]
            self.position += 1
            return batch

        def state_dict(self):
            return {"position": self.position}

        def load_state_dict(self, state):
            self.position = int(state["position"])

    def step_fn(model, batch):
        rows = batch["rows"]
        if not rows:  # this rank idles at this step, but must join DDP's gradient all-reduce:
            one = torch.ones(1, 1, dtype=torch.bool)  # a zero loss through a 1-token forward
            zero = model(torch.zeros(1, 1, dtype=torch.long), docs=[(0, 1, one)]).sum() * 0.0
            return zero, {"tokens": 0.0}
        if batch["dense"]:  # the naive padded batch: one [B, L] tensor, dense masked attention
            ids = torch.stack([r["ids"] for r in rows])
            mask = torch.stack([r["mask"] for r in rows])[:, None]
            logits = model(ids, dense_mask=mask)
            targets = torch.stack([r["targets"] for r in rows])
            weights = torch.stack([r["weights"] for r in rows])
        else:
            logits = torch.cat([model(r["ids"][None], docs=r["docs"])[0] for r in rows])[None]
            targets = torch.cat([r["targets"] for r in rows])[None]
            weights = torch.cat([r["weights"] for r in rows])[None]
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        loss = (ce * weights.flatten()).sum() / weights.sum().clamp_min(1e-6)
        return loss, {"tokens": float(sum(r["useful"] for r in rows))}

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in REAL_STRATEGIES:
            plan = plans[name]
            seed_all(args.seed)
            model = TinyLM()
            cfg = TrainConfig(run_dir=Path(tmp) / name, steps=plan.num_steps, batch_size=1,
                              parallel="ddp", checkpoint_every=0, log_every=1, lr=1e-4,
                              seed=args.seed, grad_clip=None)
            Trainer(model, step_fn, PlanBatches(plan), cfg).fit()
            if env.is_main:
                records = read_metrics(cfg.run_dir)[1:]  # step 0 warms up: not timed
                seconds = sum(r["step_time_s"] for r in records)
                tokens = sum(r.get("tokens", 0.0) for r in records)
                timed = plan.step_costs(cost)[1:]  # the same steps, under the cost model
                timed_tokens = sum(row.content_length for rank in plan.ranks for rows in rank[1:]
                                   for row in rows)
                results[name] = {
                    "steps_timed": len(records),
                    "seconds": seconds,
                    "useful_tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                    "simulated_throughput": timed_tokens / float(timed.max(axis=1).sum()),
                    "simulated": plan.stats(cost).as_dict(),
                }
    if env.is_main:
        base = results["batch_padding"]
        for r in results.values():
            r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["simulated_speedup"] = r["simulated_throughput"] / base["simulated_throughput"]
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    shutdown()


def measure_real_throughput(
    *,
    world_size: int = 2,
    num_samples: int = 256,
    length_scale: int = 16,
    hidden: int = 224,
    layers: int = 2,
    batch_size: int = 4,
    seed: int = 0,
    timeout: float = 600.0,
) -> dict:
    """The real throughput of batch padding, fixed-length and fixed-compute packing on
    ``world_size`` CPU processes (torchrun, gloo, DDP) with the shared ``Trainer``.

    A small decoder (``layers`` blocks of width ``hidden``, 4 heads; attention within each
    packed sample, or dense masked attention over the padded batch) trains one optimizer step per
    plan step on the mix shrunk ``length_scale`` times (``make_mix``); ``max_len`` is shrunk alike
    (16384 / length_scale), and so is the hidden size (3584 / 16 = 224), so attention weighs as
    much against the linear layers as in the full-size simulation. Time: the sum of the logged
    step times (rank 0's, which wait for the slowest rank in DDP's all-reduce), the first step
    left out as warm-up. Returns, per strategy, tokens/s, the speedup over batch padding, and
    the simulated speedup of the same steps under ``TransformerCost(hidden, layers)``.
    """
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "real.json"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={world_size}", str(Path(__file__).resolve()), "--real-worker",
            "--out", str(out), "--samples", str(num_samples), "--length-scale", str(length_scale),
            "--hidden", str(hidden), "--layers", str(layers), "--batch-size", str(batch_size),
            "--max-len", str(max(1, 16384 // length_scale)), "--seed", str(seed),
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"the {world_size}-process measurement failed (exit {proc.returncode}):\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        strategies = json.loads(out.read_text())
    return {
        "world_size": world_size,
        "num_samples": num_samples,
        "length_scale": length_scale,
        "hidden": hidden,
        "layers": layers,
        "batch_size": batch_size,
        "max_len": max(1, 16384 // length_scale),
        "strategies": strategies,
    }


def format_real(real: dict) -> str:
    lines = [
        f"Real {real['world_size']}-process CPU training (shared Trainer, DDP/gloo; mix shrunk "
        f"{real['length_scale']}x, h={real['hidden']}, {real['layers']} layers, "
        f"{real['num_samples']} samples)",
        f"{'strategy':<24}{'steps':>7}{'seconds':>9}{'tok/s':>9}{'speedup':>9}{'simulated':>11}",
    ]
    for name, r in real["strategies"].items():
        lines.append(
            f"{name:<24}{r['steps_timed']:>7}{r['seconds']:>9.2f}{r['tokens_per_s']:>9.0f}"
            f"{r['speedup']:>8.2f}x{r['simulated_speedup']:>10.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small mix (2048 samples), for tests")
    parser.add_argument("--samples", type=int, default=None, help="number of samples (default 16384)")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {RESULTS}; with --quick, packing-quick.json beside it)")
    parser.add_argument("--real", action="store_true",
                        help="also measure the real 2-process CPU throughput (shared Trainer, ~30 s)")
    parser.add_argument("--real-samples", type=int, default=256)
    parser.add_argument("--real-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--length-scale", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS.with_name("packing-quick.json") if args.quick else RESULTS
    if args.real_worker:
        _real_worker(args)
        return 0
    started = time.perf_counter()
    num_samples = args.samples or (2048 if args.quick else 16384)
    result = run(
        num_samples=num_samples,
        ranks=args.ranks,
        batch_size=args.batch_size,
        max_len=args.max_len,
        hidden=args.hidden,
        layers=args.layers,
        seed=args.seed,
    )
    result["config"]["quick"] = bool(args.quick)
    print(format_table(result))
    if args.real:
        real = measure_real_throughput(num_samples=args.real_samples, seed=args.seed)
        result["real_throughput"] = real
        result["real_throughput_note"] = (
            "measured with the shared Trainer on 2 CPU processes; see measure_real_throughput"
        )
        print(format_real(real))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result["total_elapsed_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}: simulation {result['elapsed_s']:.1f} s, "
          f"total {result['total_elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

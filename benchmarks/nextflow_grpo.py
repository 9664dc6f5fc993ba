"""Prefix-tuning GRPO on ShapeWorld (issue 10): tune a trained nextflow_tiny on the ShapeEval reward for
m in {2, 4, half the scales, all}, several seeds each, and report reward and ShapeEval before and after.

    python benchmarks/nextflow_grpo.py --start out/nextflow-quality/main-30 --prefix 2 4 --seeds 0 1 2 \
        --steps 60 --threads 1           # one process per prefix set: two can share the 2 cores
    python benchmarks/nextflow_grpo.py --prefix 2 all --seeds 0 --label mix \
        --reward "shapeeval+learned=out/learned-reward-32"      # the same on another training reward
    python benchmarks/nextflow_grpo.py --summary        # the table and the curves of every recorded run
    python benchmarks/nextflow_grpo.py --start out/nextflow-quality/restart-64-acc-nosc-30 \
        --results benchmarks/results/nextflow-grpo-eu --work out/nextflow-grpo-eu ...   # another start

Each run is ``grpo_tiny(start=..., prefix_scales=m, seed=s, lr=--lr)`` on the ShapeEval partial-credit
reward for ``--steps`` updates (the same number of samples for every m; ``--minutes`` gives a
wall-clock budget instead) in run directory ``--work/m{m}-s{s}`` (an existing one resumes).
Evaluation (the start model once, then every tuned one, same prompts and sampling seed): ShapeEval
on ``--eval-n`` held-out-combination prompts and as many test prompts, with the evaluation sampler
(``default_sampling``: cfg 3, top-k 8), overall (GenEval's mean of category accuracies) and per
category, and the mean ShapeEval partial-credit reward on the held-out images. Records:
``benchmarks/results/nextflow-grpo/NAME.json`` (evaluation, reward curve, steps, budget, threads,
load), ``start.json``, ``summary.md`` and ``curves.png`` (mean reward and KL per update for each m,
over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import environment  # noqa: E402

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld, to_pil  # noqa: E402
from nxrecipes.eval.shapeeval import ShapeEvalReward, evaluate  # noqa: E402
from nxrecipes.nextflow.evaluate import default_sampling  # noqa: E402
from nxrecipes.nextflow.grpo import grpo_tiny, train_grpo  # noqa: E402
from nxrecipes.nextflow.pipeline import NextFlowPipeline  # noqa: E402
from nxrecipes.train.metrics import read_metrics  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "nextflow-grpo"
CURVES = ("reward", "kl", "clip_fraction", "groups/flat")
TITLES = {"reward": "mean training reward of the rollouts", "kl": "KL to the start model"}


def evaluation(run_dir: Path, n: int, seed: int = 1) -> dict:
    """ShapeEval (held-out and test splits) and the mean partial-credit reward on held-out prompts."""
    pipeline = NextFlowPipeline.from_run(run_dir)
    sampling = default_sampling(len(pipeline.schedule.steps))
    reward = ShapeEvalReward()
    out: dict = {}
    for split in ("heldout", "test"):
        data = list(ShapeWorld(split=split, size=32, tasks=("t2i",), length=n, seed=seed))
        prompts = [r.prompt for r in data]
        images = torch.cat([pipeline.text_to_image(prompts[i : i + 32], sampling=sampling, seed=seed + i)
                            for i in range(0, n, 32)])
        report = evaluate([to_pil(x) for x in images], [r.spec for r in data])
        out[split] = {"overall": report.overall, "categories": report.accuracy,
                      "reward": float(reward(images, prompts).mean())}
    return out


def prefix_of(token: str, scales: int) -> int | str:
    if token == "all":
        return "all"
    return max(1, scales // 2) if token == "half" else int(token)


def run(start: Path, work: Path, m: int | str, seed: int, args: argparse.Namespace) -> dict:
    name = f"{args.label + '-' if args.label else ''}m{m}-s{seed}"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cfg = grpo_tiny(work / name, start=start, steps=args.steps, minutes=args.minutes, prefix_scales=m,
                    seed=seed, lr=args.lr, reward=args.reward)
    summary = train_grpo(cfg, progress=False)
    trained_s = time.perf_counter() - started
    rows = read_metrics(work / name)
    record = {
        "name": name, "m": m, "seed": seed, "reward": args.reward, "minutes": args.minutes,
        "threads": args.threads,
        "steps": summary.step,
        "train_s": trained_s, "config": json.loads(cfg.to_json()),
        "curve": {key: [r.get(key) for r in rows] for key in CURVES},
        "after": evaluation(work / name, args.eval_n),
        "environment": environment(load),
    }
    atomic_write_text(args.results / f"{name}.json", json.dumps(record, indent=1) + "\n")
    return record


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("*m*-s*.json"))]


def _group(record: dict) -> str:
    """m, and for a labelled run (another reward or length) its label, reward and updates."""
    label = record["name"].rsplit("-m", 1)[0] if "-m" in record["name"] else ""
    if not label:
        return str(record["m"])
    return f"{record['m']} ({label}: {record.get('reward', 'shapeeval')}, {record['steps']} updates)"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def summary(results: Path = RESULTS) -> str:
    start = json.loads((results / "start.json").read_text())
    before = start["evaluation"]
    records = _records(results)
    lines = [
        f"Start: `{start['start']}`; held-out ShapeEval {before['heldout']['overall']:.3f}, test "
        f"{before['test']['overall']:.3f}, held-out reward {before['heldout']['reward']:.3f} "
        f"({start['n']} prompts per split).", "",
        "| run | updates | reward first 10 → last 10 | held-out ShapeEval | Δ | test ShapeEval | "
        "held-out reward |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        curve = [x for x in r["curve"]["reward"] if x is not None]
        after = r["after"]
        lines.append(
            f"| {r['name']} | {r['steps']} | {_mean(curve[:10]):.3f} → {_mean(curve[-10:]):.3f} | "
            f"{after['heldout']['overall']:.3f} | "
            f"{after['heldout']['overall'] - before['heldout']['overall']:+.3f} | "
            f"{after['test']['overall']:.3f} | {after['heldout']['reward']:.3f} |"
        )
    lines += ["", "| m | seeds | held-out ShapeEval mean | Δ mean | spread (max − min) | test mean | "
              "held-out reward mean |", "|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(_group(r) for r in records):
        group = [r for r in records if _group(r) == m]
        held = [r["after"]["heldout"]["overall"] for r in group]
        lines.append(
            f"| {m} | {len(group)} | {_mean(held):.3f} | {_mean(held) - before['heldout']['overall']:+.3f} | "
            f"{max(held) - min(held):.3f} | {_mean([r['after']['test']['overall'] for r in group]):.3f} | "
            f"{_mean([r['after']['heldout']['reward'] for r in group]):.3f} |"
        )
    return "\n".join(lines) + "\n"


def curves(results: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    records = _records(results)
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    for m in dict.fromkeys(_group(r) for r in records):
        group = [r for r in records if _group(r) == m]
        for ax, key in zip(axes, ("reward", "kl"), strict=True):
            length = min(len(r["curve"][key]) for r in group)
            mean = [statistics.fmean(r["curve"][key][i] or 0.0 for r in group) for i in range(length)]
            smooth, acc = [], mean[0] if mean else 0.0
            for value in mean:
                acc = 0.9 * acc + 0.1 * value
                smooth.append(acc)
            (line,) = ax.plot(smooth, label=f"m = {m} ({len(group)} seeds)")
            ax.plot(mean, alpha=0.2, color=line.get_color())
            ax.set_xlabel("update")
            ax.set_title(TITLES[key])
    axes[1].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=Path, default=Path("out/nextflow-quality/main-30"))
    parser.add_argument("--work", type=Path, default=Path("out/nextflow-grpo"))
    parser.add_argument("--prefix", nargs="+", default=["2", "4", "half", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=60, help="updates per run (a cap with --minutes)")
    parser.add_argument("--minutes", type=float, help="wall-clock budget per run instead of --steps")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--reward", default="shapeeval", help="training reward (parse_reward spec)")
    parser.add_argument("--label", default="", help="run-name prefix for runs on another reward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-n", type=int, default=256, help="prompts per split")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="records folder (one per start model: its start.json is evaluated once)")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    if args.summary:
        text = summary(args.results)
        atomic_write_text(args.results / "summary.md", text)
        curves(args.results, args.results / "curves.png")
        print(text)
        return
    torch.set_num_threads(args.threads)
    start_file = args.results / "start.json"
    if start_file.is_file() and json.loads(start_file.read_text())["start"] != str(args.start):
        parser.error(f"{args.results} holds runs from another start model; give this one its own --results")
    if not start_file.is_file():
        before = evaluation(args.start, args.eval_n)
        record = {"start": str(args.start), "n": args.eval_n, "evaluation": before}
        atomic_write_text(start_file, json.dumps(record, indent=1) + "\n")
    scales = len(NextFlowPipeline.from_run(args.start).schedule.steps)
    for token in args.prefix:
        for seed in args.seeds:
            record = run(args.start, args.work, prefix_of(token, scales), seed, args)
            print(record["name"], record["steps"], record["after"]["heldout"]["overall"], flush=True)


if __name__ == "__main__":
    main()

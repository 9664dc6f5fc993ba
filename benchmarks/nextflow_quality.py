"""NextFlow quality on ShapeWorld (issue 8): train nextflow_tiny from scratch on a trained dual-codebook
tokenizer and report ShapeEval per category (test and held-out-combination splits), the editing
score, the caption score and world-knowledge ShapeEval with and without think-before-drawing.

    python benchmarks/nextflow_quality.py --tokenizer out/tok-dual-32 --runs main-10 main-30
    python benchmarks/nextflow_quality.py --tokenizer out/tok-dual-32 --runs alpha-0 alpha-0.5 ...
    python benchmarks/nextflow_quality.py --summary            # the table of every recorded run

Each run is one config change from ``nextflow_training_tiny`` (``RUNS``) and a wall-clock budget;
its run directory is ``--work/NAME`` (an existing one resumes), its record
``benchmarks/results/nextflow/NAME.json`` (report, steps, budget, threads, load), its curves
``NAME-metrics.png`` and a sample grid ``NAME-samples.png``. ``--threads 1`` lets two runs share the
2-core machine side by side (record says so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from harness import amend_records, environment, objects_drawn, other_prompts  # noqa: E402

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld  # noqa: E402
from nxrecipes.nextflow.evaluate import EvalSettings, evaluate_pipeline, sample_grid  # noqa: E402
from nxrecipes.nextflow.pipeline import NextFlowPipeline  # noqa: E402
from nxrecipes.nextflow.train import nextflow_training_tiny, train_nextflow  # noqa: E402
from nxrecipes.train.metrics import read_metrics  # noqa: E402
from nxrecipes.train.plot import plot_run  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "nextflow"
IMAGE_TOKENS = 155  # an image on the 32 px schedule at downsample 4 (records made before they stored it)

_T2I = (("t2i", 1.0),)
_GRID16 = ((1, 1), (2, 2), (4, 4), (8, 8), (16, 16))
_GRID16_GENTLE = ((1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8), (11, 11), (16, 16))
_ACC_NOSC = {"inputs": "accumulated", "self_correction_fraction": 0.0, "per_scale": True}
_PLACED = {"refiner_blocks": 2, "grid_positions": True}
_DS2_T2I = {**_ACC_NOSC, "task_mix": _T2I, "schedule": _GRID16}
_DS2_T2I_A0 = {**_DS2_T2I, "alpha": 0.0}
RUNS: dict[str, tuple[float, dict]] = {
    # name: (minutes, changes to nextflow_training_tiny)
    "main-10": (10, {"per_scale": True}),
    "main-30": (30, {"per_scale": True}),
    "alpha-0": (10, {"alpha": 0.0, "per_scale": True}),
    "alpha-0.5": (10, {"alpha": 0.5, "per_scale": True}),
    "residual-nosc": (10, {"self_correction_fraction": 0.0, "per_scale": True}),
    "accumulated-sc": (10, {"inputs": "accumulated", "per_scale": True}),
    "accumulated-nosc": (10, {"inputs": "accumulated", "self_correction_fraction": 0.0, "per_scale": True}),
    "separate-heads": (10, {"separate_heads": True, "per_scale": True}),
    # main-10's recipe over a tokenizer with Euclidean search (--tokenizer out/tok-dual-32-euclid)
    "euclidean-10": (10, {"per_scale": True}),
    # main-10's recipe over tokenizers trained with Euclidean search and dead-code restarts
    # (--tokenizer out/tok-eu-256, out/tok-eu-64: 256 or 64 codes)
    "restart-256-10": (10, {"per_scale": True}),
    "restart-64-10": (10, {"per_scale": True}),
    # ... with accumulated inputs and no self-correction; then text-to-image only; then batch 32
    "restart-64-acc-nosc-10": (10, _ACC_NOSC),
    "restart-64-acc-nosc-t2i-10": (10, {**_ACC_NOSC, "task_mix": _T2I}),
    "restart-64-acc-nosc-t2i-b32-10": (10, {**_ACC_NOSC, "task_mix": _T2I, "batch_size": 32, "lr": 2e-3}),
    "restart-64-acc-nosc-30": (30, _ACC_NOSC),
    "restart-64-acc-nosc-8layers-30": (30, {**_ACC_NOSC, "num_layers": 8}),
    "restart-64-nosc-30": (30, {"self_correction_fraction": 0.0, "per_scale": True}),
    # a finer final grid: 32 px at downsample 2 (--tokenizer out/tok-s32-ds2), steps 1, 2, 4, 8, 16, so
    # an object spans 3.5-5.5 cells of the last step instead of 1.75-2.75
    "ds2-acc-nosc-t2i-10": (10, _DS2_T2I),
    "ds2-acc-nosc-30": (30, {**_ACC_NOSC, "schedule": _GRID16}),
    # ... with every code weighted alike (alpha 0.9 weighs a 16x16 code 1/42 of a 2x2 code)
    "ds2-acc-nosc-t2i-alpha0-10": (10, _DS2_T2I_A0),
    "ds2-acc-nosc-t2i-alpha0-lr3e-3-10": (10, {**_DS2_T2I_A0, "lr": 3e-3}),
    # ... with two GridRefiner blocks (3x3 convolutions over each scale's grid before the head): a
    # 2-layer conv on the last step's inputs out-predicted the 30-minute decoder there
    "ds2-acc-nosc-t2i-refine2-10": (10, {**_DS2_T2I, "refiner_blocks": 2}),
    # ... over 8 steps whose sides grow by at most 1.5x (507 tokens; the tokenizer trained on 1-2-4-8-16
    # reconstructs at the same ShapeEval on them): less of each cell left to independent draws
    "ds2-acc-nosc-t2i-gentle-10": (10, {**_DS2_T2I, "schedule": _GRID16_GENTLE}),
    "ds2-acc-nosc-t2i-refine2-gentle-10": (10, {**_DS2_T2I, "schedule": _GRID16_GENTLE, "refiner_blocks": 2}),
    # ... over tokenizers trained with NextFlow's scale dropping (--tokenizer out/tok-s32-ds2-drop0.5,
    # -drop0.25): without it the steps before the last decode to 14-19 dB, the last step holds the image
    "drop0.5-acc-nosc-t2i-refine2-10": (10, {**_DS2_T2I, "refiner_blocks": 2}),
    "drop0.25-acc-nosc-t2i-refine2-10": (10, {**_DS2_T2I, "refiner_blocks": 2}),
    "drop0.5-acc-nosc-t2i-refine2-30": (30, {**_DS2_T2I, "refiner_blocks": 2}),
    "ds2-acc-nosc-t2i-refine2-30": (30, {**_DS2_T2I, "refiner_blocks": 2}),
    "ds2-acc-nosc-refine2-30": (30, {**_ACC_NOSC, "schedule": _GRID16, "refiner_blocks": 2}),
    # ... with each image token's place on its grid added to its input (grid_positions): trained on 16
    # images, the plain model's top-1 on them stays at 0.5 / 0.59 / 0.18 on the 2x2 / 8x8 / 16x16 steps
    # (cells sharing an up-sampled input look alike), 0.94 / 0.99 / 0.45 with it
    "drop0.5-acc-nosc-t2i-gridpos-30": (30, {**_DS2_T2I, "grid_positions": True}),
    "drop0.5-acc-nosc-t2i-gridpos-refine2-30": (30, {**_DS2_T2I, **_PLACED}),
    # ... over the tokenizer without scale dropping (--tokenizer out/tok-s32-ds2) and with drop 0.25
    "ds2-acc-nosc-t2i-gridpos-refine2-30": (30, {**_DS2_T2I, **_PLACED}),
    "drop0.25-acc-nosc-t2i-gridpos-refine2-30": (30, {**_DS2_T2I, **_PLACED}),
    # ... with self-correction back on (the paper's fraction 0.6: the model sees inputs of its own kind of
    # mistakes at the coarse steps), and with 4 refiner blocks (each code's logits see a 9x9 neighbourhood)
    "drop0.25-acc-sc-t2i-gridpos-refine2-30": (30, {**_DS2_T2I, **_PLACED, "self_correction_fraction": 0.6}),
    "drop0.25-acc-nosc-t2i-gridpos-refine4-30": (30, {**_DS2_T2I, **_PLACED, "refiner_blocks": 4}),
    # ... on scenes that hold only what their prompt names (max_distractors 0; by default a scene may add up
    # to two objects of shapes the prompt does not mention, which the model must learn to draw at random)
    "drop0.25-acc-nosc-t2i-gridpos-refine4-clean-30": (
        30, {**_DS2_T2I, **_PLACED, "refiner_blocks": 4, "max_distractors": 0}),
    # NextStep-1, in an ad-hoc 6-minute run on "a <colour> <shape>" prompts, drew the named colour twice as
    # often at lr 2e-3 as at 1e-3
    "drop0.25-acc-nosc-t2i-gridpos-refine4-clean-lr2-30": (
        30, {**_DS2_T2I, **_PLACED, "refiner_blocks": 4, "max_distractors": 0, "lr": 2e-3}),
    # ... and batch 32: fewer, less noisy updates
    "drop0.25-acc-nosc-t2i-gridpos-refine4-clean-b32-30": (
        30, {**_DS2_T2I, **_PLACED, "refiner_blocks": 4, "max_distractors": 0, "lr": 2e-3, "batch_size": 32}),
}
"""main-10 is also the alpha = 0.9, residual + self-correction and shared-head point of each ablation."""


def _config(name: str, tokenizer: Path, work: Path, threads: int):
    minutes, changes = RUNS[name]
    changes = dict(changes)
    separate = changes.pop("separate_heads", False)
    cfg = nextflow_training_tiny(work / name, minutes=minutes, tokenizer_dir=tokenizer, **changes)
    if separate:
        from nxrecipes.nextflow.config import separate_heads

        cfg = cfg.replace(model=separate_heads(cfg.model))
    return cfg


def run(name: str, tokenizer: Path, work: Path, threads: int, num: int) -> dict:
    torch.set_num_threads(threads)
    load = os.getloadavg()[0]
    cfg = _config(name, tokenizer, work, threads)
    started = time.perf_counter()
    summary = train_nextflow(cfg, progress=False)
    trained_s = time.perf_counter() - started
    pipeline = NextFlowPipeline.from_run(cfg.run_dir)
    report = evaluate_pipeline(pipeline, EvalSettings(n=num, n_edit=num // 2, n_caption=num // 2,
                                                      n_knowledge=num // 2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    prompts = [r.prompt for split in ("heldout", "test")
               for r in ShapeWorld(split=split, size=32, tasks=("t2i",), length=8, seed=7)]
    sample_grid(pipeline, prompts, title=f"nextflow_tiny {name}: held-out (top), test (bottom)").save(
        RESULTS / f"{name}-samples.png")
    plot_run(cfg.run_dir, RESULTS / f"{name}-metrics.png", keys=["loss"])
    metrics = read_metrics(cfg.run_dir)
    nll = heldout_nll(cfg.run_dir)
    record = {
        "name": name, "minutes": RUNS[name][0], "changes": RUNS[name][1], "steps": summary.step,
        "tokenizer": str(tokenizer), "image_tokens": sum(h * w for h, w in pipeline.schedule.steps),
        "train_seconds": round(trained_s, 1), "threads": threads, "report": report,
        "final_losses": {k: v for k, v in metrics[-1].items() if k.startswith("loss")},
        "heldout_nll": nll, "heldout_nll_shuffled_prompts": heldout_nll(cfg.run_dir, shuffled=True),
        "curves": [{k: v for k, v in m.items() if k == "step" or k.startswith("loss")} for m in metrics],
        "command": f"python benchmarks/nextflow_quality.py --tokenizer {tokenizer} --runs {name} "
                   f"--threads {threads}",
        "environment": environment(load),
    }
    atomic_write_text(RESULTS / f"{name}.json", json.dumps(record, indent=1) + "\n")
    print(f"{name}: {summary.step} steps, test {report['shapeeval_test']['overall']:.3f}, heldout "
          f"{report['shapeeval_heldout']['overall']:.3f}", flush=True)
    return record


@torch.no_grad()
def heldout_nll(run_dir: Path, num: int = 64, *, shuffled: bool = False) -> dict[str, float]:
    """Mean negative log-likelihood per scale (``NextFlow.sampling_nll``: codes against codes) of
    ``num`` test-split text-to-image examples, clean inputs and targets (no self-correction, no
    dropout): one fixed yardstick for every ablation, whatever its training inputs or head.
    ``shuffled``: every image under another example's prompt; the rise over the matched NLL is what
    the model takes from the prompt (0 for a model that ignores it)."""
    from nxrecipes.nextflow.data import ExampleBuilder
    from nxrecipes.nextflow.sequence import collate
    from nxrecipes.nextflow.train import load_run

    run = load_run(run_dir)
    builder = ExampleBuilder(text=run.text_tokenizer, vocabulary=run.vocabulary,
                             image_tokenizer=run.image_tokenizer, schedule=run.schedule,
                             self_correction_p=0.0, cfg_dropout=0.0, caption_inversion=0.0)
    records = list(ShapeWorld(split="test", size=32, tasks=("t2i",), length=num, seed=11))
    if shuffled:
        records = other_prompts(records)
    sums: dict[str, list[float]] = {}
    for i in range(0, num, 16):
        batch = collate(builder.build(records[i : i + 16], list(range(i, i + 16))), run.vocabulary)
        hidden = run.model(batch)
        rows = batch.targets != -100
        nll = run.model.sampling_nll(hidden[rows], batch.targets[rows])
        scale = torch.cat([torch.cat([torch.full((h * w,), k) for k, (h, w) in enumerate(run.schedule.steps)])
                           for _ in range(batch.ids.shape[0])])
        codes = run.vocabulary.is_code(batch.targets[rows])
        for k in range(len(run.schedule.steps)):
            sums.setdefault(f"scale_{k}", []).extend(nll[codes][scale == k].tolist())
        sums.setdefault("image", []).extend(nll[codes].tolist())
    return {k: sum(v) / len(v) for k, v in sums.items()}


def summary() -> str:
    rows = ["| run | min | threads | steps | test | held-out | edit | caption exact | knowledge | + think "
            "| test objects drawn / asked (empty) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in RUNS:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        p = r["report"]
        rows.append(
            f"| {name} | {r['minutes']} | {r['threads']} | {r['steps']} "
            f"| {p['shapeeval_test']['overall']:.3f} | {p['shapeeval_heldout']['overall']:.3f} "
            f"| {p.get('edit_accuracy', float('nan')):.3f} "
            f"| {p.get('caption_exact', float('nan')):.3f} | {p.get('knowledge_plain', float('nan')):.3f} "
            f"| {p.get('knowledge_think', float('nan')):.3f} | {objects_drawn(p['shapeeval_test'])} |"
        )
    return "\n".join(rows) + "\n\n" + nll_table() + "\n\n" + loss_table()


def nll_table() -> str:
    """Held-out NLL per scale (``heldout_nll``) of every recorded run that has it, and per image (the
    figure to compare across tokenizers, whose schedules differ in length)."""
    paths = [RESULTS / f"{n}.json" for n in RUNS]
    records = [r for r in (json.loads(p.read_text()) for p in paths if p.exists()) if "heldout_nll" in r]
    if not records:
        return ""
    keys = sorted({k for r in records for k in r["heldout_nll"]}, key=lambda k: (k == "image", len(k), k))
    rows = ["| run (held-out NLL, nats) | " + " | ".join(keys)
            + " | nats per image | prompt gap, nats per image |", "|---|" + "---|" * (len(keys) + 2)]
    for r in records:
        gap, nll = "", r["heldout_nll"]
        tokens = r.get("image_tokens", IMAGE_TOKENS)
        if "heldout_nll_shuffled_prompts" in r:  # summed over an image's tokens
            gap = f"{(r['heldout_nll_shuffled_prompts']['image'] - nll['image']) * tokens:.2f}"
        cells = [f"{nll[k]:.3f}" if k in nll else "" for k in keys]
        rows.append(f"| {r['name']} | " + " | ".join(cells) + f" | {nll['image'] * tokens:.0f} | {gap} |")
    return "\n".join(rows)


def loss_table(tail: float = 0.2) -> str:
    """Training loss per scale (and text, image), averaged over the last ``tail`` of each run's
    logged steps: the per-scale view of Fig. 11 for the ablations."""
    paths = [RESULTS / f"{n}.json" for n in RUNS]
    records = [json.loads(p.read_text()) for p in paths if p.exists()]
    if not records:
        return ""
    keys = sorted({k for r in records for m in r["curves"] for k in m if k.startswith("loss/")},
                  key=lambda k: (not k.startswith("loss/scale"), len(k), k))
    rows = ["| run | " + " | ".join(k.removeprefix("loss/") for k in keys) + " |",
            "|---|" + "---|" * len(keys)]
    for r in records:
        curves = r["curves"][-max(1, int(len(r["curves"]) * tail)):]
        means = []
        for k in keys:
            values = [m[k] for m in curves if k in m]
            means.append(f"{sum(values) / len(values):.3f}" if values else "")
        rows.append(f"| {r['name']} | " + " | ".join(means) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, help="run directory of `nx tokenizer train --kind dual`")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=[])
    parser.add_argument("--work", type=Path, default=Path("out/nextflow-quality"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-n", "--num", type=int, default=64, help="t2i prompts per split in the report")
    parser.add_argument("--summary", action="store_true", help="print the table of recorded runs")
    parser.add_argument("--add-heldout-nll", action="store_true",
                        help="add the held-out NLL per scale of every recorded run (in --work) to its record")
    args = parser.parse_args()
    if args.runs and args.tokenizer is None:
        parser.error("--runs needs --tokenizer")
    for name in args.runs:
        run(name, args.tokenizer, args.work, args.threads, args.num)
    if args.add_heldout_nll:
        torch.set_num_threads(args.threads)
        amend_records({RESULTS / f"{name}.json": args.work / name for name in RUNS},
                      lambda run_dir: {"heldout_nll": heldout_nll(run_dir),
                                       "heldout_nll_shuffled_prompts": heldout_nll(run_dir, shuffled=True)})
    if args.summary or args.runs or args.add_heldout_nll:
        table = summary()
        print(table)
        atomic_write_text(RESULTS / "summary.md", table + "\n")


if __name__ == "__main__":
    main()

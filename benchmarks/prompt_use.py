"""How much a trained text-to-image model uses its prompt: the image loss of test-split
text-to-image records under their own prompts, under prompts shuffled among them, and under one
word ("a", near the unconditional row of CFG).

    python benchmarks/prompt_use.py out/nextstep1-quality/main-30 out/nextflow-quality/NAME -n 128

NextStep-1 runs report the flow-matching loss of the image tokens (the same noise and times in
every condition, averaged over ``--repeats`` draws); NextFlow runs report the NLL per code of each
scale. ``gain`` = shuffled - own: what knowing the prompt is worth to the model; a model that
ignores its prompt has a gain of 0 whatever its loss. Records: ``--out/<system>-<run name>.json``
(default ``benchmarks/results/prompt-use/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import attrs
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from nextflow_given_scales import code_fit  # noqa: E402

from nxcore.checkpoint import atomic_write_text  # noqa: E402
from nxrecipes.data.shapeworld import ShapeWorld  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "prompt-use"
CONDITIONS = ("own", "shuffled", "one word")
SEED = 1


def conditions(records: list) -> dict[str, list]:
    """The records under each of ``CONDITIONS`` (shuffling moves every prompt to another image)."""
    order = np.random.default_rng(SEED).permutation(len(records))
    donor = np.empty_like(order)
    donor[order] = np.roll(order, 1)  # a cycle through a random order: no record keeps its prompt
    return {"own": records,
            "shuffled": [attrs.evolve(r, prompt=records[k].prompt) for r, k in zip(records, donor,
                                                                                    strict=True)],
            "one word": [attrs.evolve(r, prompt="a") for r in records]}


def system_of(run_dir: Path) -> str:
    kind = json.loads((run_dir / "run_config.json").read_text()).get("type", "")
    for system in ("nextflow", "nextstep1"):
        if kind.startswith(f"nxrecipes.{system}."):
            return system
    raise ValueError(f"{run_dir} is a {kind or 'untyped'} run; pass a NextFlow or NextStep-1 run directory")


def nextstep1_losses(run_dir: Path, num: int, repeats: int) -> dict[str, float]:
    from nxrecipes.nextstep1.data import RowBuilder
    from nxrecipes.nextstep1.train import load_run

    run = load_run(run_dir)
    builder = RowBuilder(text=run.text_tokenizer, image_tokenizer=run.image_tokenizer, drop_text_prob=0.0)
    records = list(ShapeWorld(split="test", size=run.config.data.size, tasks=("t2i",), length=num, seed=SEED))
    out = {}
    for name, rows in conditions(records).items():
        batch = builder.build(rows, list(range(len(rows))))
        losses = []
        for r in range(repeats):
            torch.manual_seed(r)
            with torch.no_grad():
                out_r = run.model.loss(batch.ids, batch.latents, attention_mask=batch.attention_mask,
                                       image_weights=batch.image_weights)
            losses.append(float(out_r.image))
        out[name] = float(np.mean(losses))
    return out


def nextflow_losses(run_dir: Path, num: int) -> dict[str, list[float]]:
    from nxrecipes.nextflow.train import load_run

    run = load_run(run_dir)
    size = run.image_tokenizer.downsample * run.schedule.steps[-1][0]
    records = list(ShapeWorld(split="test", size=size, tasks=("t2i",), length=num, seed=SEED))
    out = {}
    for name, rows in conditions(records).items():
        fit = code_fit(run_dir, num=num, records=rows)
        out[name] = [_mean_nll(f) for f in fit]
    out["grids"] = [f["grid"] for f in fit]
    return out


def _mean_nll(row: dict) -> float:
    parts = [row[k] for k in ("object", "background") if k in row]
    return sum(p["nll"] * p["cells"] for p in parts) / sum(p["cells"] for p in parts)


def report(run_dir: Path, num: int, repeats: int) -> dict:
    system = system_of(run_dir)
    record: dict = {"run": str(run_dir), "system": system, "n": num}
    if system == "nextstep1":
        losses = nextstep1_losses(run_dir, num, repeats)
        record |= {"loss": "flow-matching MSE per image token", "repeats": repeats, **losses,
                   "gain": losses["shuffled"] - losses["own"]}
    else:
        losses = nextflow_losses(run_dir, num)
        record |= {"loss": "NLL per code, per scale", **losses,
                   "gain": [s - o for s, o in zip(losses["shuffled"], losses["own"], strict=True)]}
    record["command"] = f"python benchmarks/prompt_use.py {run_dir} -n {num} --repeats {repeats}"
    return record


def table(records: list[dict]) -> str:
    lines = ["| run | system | scale | own | shuffled | one word | gain (shuffled - own) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        name = Path(r["run"]).name
        if r["system"] == "nextstep1":
            lines.append(f"| {name} | NextStep-1 | all | {r['own']:.5f} | {r['shuffled']:.5f} | "
                         f"{r['one word']:.5f} | {r['gain']:.5f} |")
            continue
        for k, grid in enumerate(r["grids"]):
            lines.append(f"| {name} | NextFlow | {grid[0]}x{grid[1]} | {r['own'][k]:.3f} | "
                         f"{r['shuffled'][k]:.3f} | {r['one word'][k]:.3f} | {r['gain'][k]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="NextFlow or NextStep-1 run directories")
    parser.add_argument("-n", "--num", type=int, default=128, help="test-split records")
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per NextStep-1 condition")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = []
    for run_dir in args.runs:
        record = report(run_dir, args.num, args.repeats)
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"{record['system']}-{run_dir.name}.json"
        atomic_write_text(args.out / name, json.dumps(record, indent=1) + "\n")
        records.append(record)
    print(table(records))


if __name__ == "__main__":
    main()

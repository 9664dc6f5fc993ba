"""Run by ``test_distributed.py`` under ``torchrun --standalone --nproc_per_node=2``.

Trains the example's TinyLM for a few steps in several modes (one process group for all, to pay
the start-up once) and writes ``results.json`` (rank 0) and ``diverged-rank{r}.json``.
Usage: ``torchrun ... _dist_worker.py OUT_DIR``.
"""

import json
import sys
from pathlib import Path

import torch

from nxrecipes.train import IndexedBatches, TrainConfig, Trainer, TrainingDiverged, seed_all
from nxrecipes.train.distributed import init_distributed, shutdown
from nxrecipes.train.example import Block, ShapeWorldChars, TinyLM, lm_step, train

STEPS = 6
MODEL = {"samples": 128, "dim": 32, "layers": 2, "heads": 2, "seq_len": 32}
MODES = {
    "ddp": {"parallel": "ddp"},
    "fsdp": {"parallel": "fsdp"},
    "fsdp_bf16_ac": {"parallel": "fsdp", "mixed_precision": "bf16", "activation_checkpointing": True},
    "ddp_bf16": {"parallel": "ddp", "mixed_precision": "bf16"},
}


def config(run_dir: Path, **changes) -> TrainConfig:
    base = dict(run_dir=run_dir, steps=STEPS, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2,
                checkpoint_every=0, keep_last=1, log_every=1, seed=0)
    base.update(changes)
    return TrainConfig(**base)


def main(out: Path) -> None:
    env = init_distributed(force=True)
    results = {}
    for name, changes in MODES.items():
        summary = train(config(out / name, **changes), **MODEL)
        results[name] = {"losses": list(summary.losses), "step": summary.step, "weights": str(summary.weights)}

    # NaN on rank 1 only, at step 2, micro-batch 1: every rank must stop at the same place.
    calls = {"n": 0}

    def poisoned(model, batch):
        loss, metrics = lm_step(model, batch)
        index = calls["n"]
        calls["n"] += 1
        if env.rank == 1 and index == 2 * 2 + 1:
            loss = loss * float("nan")
        return loss, metrics

    seed_all(0)
    model = TinyLM(dim=MODEL["dim"], layers=MODEL["layers"], heads=MODEL["heads"], seq_len=MODEL["seq_len"])
    data = IndexedBatches(ShapeWorldChars(MODEL["samples"], MODEL["seq_len"]), 4, 0)
    trainer = Trainer(model, poisoned, data, config(out / "diverge", parallel="fsdp"), block_types=(Block,))
    record = {"raised": False}
    try:
        trainer.fit()
    except TrainingDiverged as err:
        record = {"raised": True, "message": str(err), "step": err.step, "micro_batch": err.micro_batch,
                  "what": err.what, "ranks": list(err.ranks), "checkpoint": str(err.checkpoint),
                  "position": data.position}
    (out / f"diverged-rank{env.rank}.json").write_text(json.dumps(record))
    if env.rank == 0:
        (out / "results.json").write_text(json.dumps(results))
    torch.distributed.barrier()
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

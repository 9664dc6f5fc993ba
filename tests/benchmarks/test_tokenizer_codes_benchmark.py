import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from nxcore.schedule import Schedule
from nxrecipes.tokenizer.train import dual_codebook_training_tiny, train_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tokenizer_codes.py"
sys.path.insert(0, str(SCRIPT.parent))


def test_code_report_runs_on_a_trained_tokenizer(tmp_path):
    run = tmp_path / "tok"
    train_tokenizer(dual_codebook_training_tiny(run, steps=2, size=32, eval_images=4, normalize=False,
                                                restart_every=1, codebook_size=16), progress=False)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "-n", "4", "--threads", "1", "--info-num", "64",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "| run | codebook_size | search |" in proc.stdout
    (row,) = json.loads((out / "codes.json").read_text())["rows"]
    assert (row["codebook_size"], row["search"], row["restart_every"], row["size"]) == (16, "euclidean", 1, 32)
    steps = [1, 4, 9, 16, 25, 36, 64]  # the 32 px square schedule's cells
    assert len(row["entropy_per_step"]) == len(row["flat_distinct_per_step"]) == len(steps)
    assert all(0 <= e <= math.log(16) + 1e-3 for e in row["entropy_per_step"])
    assert math.isclose(row["nats_per_image"], sum(e * n for e, n in zip(row["entropy_per_step"], steps, strict=True)),
                        rel_tol=1e-3, abs_tol=1e-2)
    assert all(1 <= d <= min(n, 16) for d, n in zip(row["flat_distinct_per_step"], steps, strict=True))
    assert 0 <= row["recon_shapeeval"] <= 1 and math.isfinite(row["psnr"])
    assert (out / "codes.md").read_text().startswith("| run |")
    assert len(row["prompt_info_per_step"]) == len(steps)
    assert all(-0.1 <= i <= math.log(16) for i in row["prompt_info_per_step"])


class _RedCode:
    """A one-step 'tokenizer' whose code says whether the image shows red (the palette's red)."""

    codebook_size = 4

    def encode(self, images, schedule):
        red = ((images[:, 0] > 0.6) & (images[:, 1] < -0.5)).flatten(1).any(1)
        return [red.long().view(-1, 1, 1)]


class _NoiseCode(_RedCode):
    def encode(self, images, schedule):
        g = torch.Generator().manual_seed(images.shape[0])
        return [torch.randint(0, 4, (images.shape[0], 1, 1), generator=g)]


def test_prompt_information_sees_a_code_that_follows_the_prompt_and_not_one_that_ignores_it():
    from tokenizer_codes import prompt_information

    schedule = Schedule(((1, 1),))
    (red,) = prompt_information(_RedCode(), schedule, size=32, num=1000)
    (noise,) = prompt_information(_NoiseCode(), schedule, size=32, num=1000)
    assert red > 0.1
    assert abs(noise) < 0.03

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.tokenizer.autoencoder import NextStepAutoencoder, autoencoder_tiny
from nxrecipes.data.shapeworld import ShapeWorld
from nxrecipes.nextflow.train import TextTokenizerConfig, nextflow_training_tiny, train_nextflow
from nxrecipes.nextstep1.train import nextstep1_text_tokenizer, nextstep1_training_tiny, train_nextstep1
from nxrecipes.tokenizer.train import dual_codebook_training_tiny, train_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prompt_use.py"
sys.path.insert(0, str(SCRIPT.parent))
from prompt_use import conditions, system_of  # noqa: E402


def test_shuffled_prompts_leave_no_record_its_own_and_keep_the_images():
    records = list(ShapeWorld(split="test", size=32, tasks=("t2i",), length=9, seed=4))
    made = conditions(records)
    assert made["own"] == records
    own = [r.prompt for r in records]
    shuffled = [r.prompt for r in made["shuffled"]]
    assert sorted(shuffled) == sorted(own)
    assert all(a is not b for a, b in zip(made["shuffled"], records, strict=True))
    assert all(s.image is r.image and s.scene == r.scene for s, r in zip(made["shuffled"], records, strict=True))
    assert sum(s != o for s, o in zip(shuffled, own, strict=True)) >= 8  # equal prompt texts may meet
    assert {r.prompt for r in made["one word"]} == {"a"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompt-use")
    torch.manual_seed(0)
    save_pretrained(NextStepAutoencoder(autoencoder_tiny(ch_mult=(1, 2, 2))), root / "ae")
    ns1 = nextstep1_training_tiny(root / "ns1", steps=3, tokenizer_dir=root / "ae", size=32, batch_size=2,
                                  num_layers=1, checkpoint_every=0, warmup_steps=0,
                                  text_tokenizer=nextstep1_text_tokenizer(vocab_size=300, corpus_rounds=20))
    train_nextstep1(ns1, progress=False)
    train_tokenizer(dual_codebook_training_tiny(root / "tok", steps=1, size=32, eval_images=2, codebook_size=16),
                    progress=False)
    nf = nextflow_training_tiny(root / "nf", tokenizer_dir=root / "tok", steps=1, schedule=((1, 1), (2, 2), (8, 8)),
                                num_layers=1, batch_size=2, task_mix=(("t2i", 1.0),), checkpoint_every=0,
                                text_tokenizer=TextTokenizerConfig(vocab_size=300, corpus_rounds=20))
    train_nextflow(nf, progress=False)
    return root


def test_the_report_reads_both_systems_and_the_gain_is_what_the_prompt_is_worth(runs, tmp_path):
    assert (system_of(runs / "ns1"), system_of(runs / "nf")) == ("nextstep1", "nextflow")
    with pytest.raises(ValueError, match="pass a NextFlow or NextStep-1 run directory"):
        (tmp_path / "run_config.json").write_text('{"type": "nxrecipes.other:Config"}')
        system_of(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(runs / "ns1"), str(runs / "nf"), "-n", "6",
                           "--repeats", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "| run | system | scale | own | shuffled | one word |" in proc.stdout
    ns1 = json.loads((tmp_path / "nextstep1-ns1.json").read_text())
    assert ns1["gain"] == pytest.approx(ns1["shuffled"] - ns1["own"])
    assert ns1["gain"] != 0  # the head reads the backbone once its zero-started AdaLN has moved (update 2)
    nf = json.loads((tmp_path / "nextflow-nf.json").read_text())
    assert nf["grids"] == [[1, 1], [2, 2], [8, 8]]
    assert nf["gain"] == pytest.approx([s - o for s, o in zip(nf["shuffled"], nf["own"], strict=True)])
    assert all(v > 0 for v in nf["own"]) and any(g != 0 for g in nf["gain"])

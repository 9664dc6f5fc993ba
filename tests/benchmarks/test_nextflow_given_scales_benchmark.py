import json
import math
import subprocess
import sys
from pathlib import Path

from nxrecipes.data.shapeworld import ShapeWorld, to_pil
from nxrecipes.data.shapeworld.world import BACKGROUND
from nxrecipes.eval.shapeeval import evaluate
from nxrecipes.nextflow.pipeline import NextFlowPipeline
from nxrecipes.nextflow.train import TextTokenizerConfig, nextflow_training_tiny, train_nextflow
from nxrecipes.tokenizer.train import dual_codebook_training_tiny, train_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nextflow_given_scales.py"
sys.path.insert(0, str(SCRIPT.parent))
from nextflow_given_scales import object_cells  # noqa: E402


def test_given_scales_report_ends_at_the_tokenizers_reconstruction(tmp_path):
    tok = tmp_path / "tok"
    train_tokenizer(dual_codebook_training_tiny(tok, steps=1, size=32, eval_images=2, codebook_size=16),
                    progress=False)
    run = tmp_path / "nf"
    cfg = nextflow_training_tiny(run, tokenizer_dir=tok, steps=1, schedule=((1, 1), (2, 2), (8, 8)),
                                 num_layers=1, batch_size=2, task_mix=(("t2i", 1.0),), checkpoint_every=0,
                                 text_tokenizer=TextTokenizerConfig(vocab_size=300, corpus_rounds=20))
    train_nextflow(cfg, progress=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "-n", "4", "--greedy", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "| given scales | ShapeEval (test) |" in proc.stdout
    record = json.loads((tmp_path / "nf-greedy.json").read_text())
    rows = record["rows"]
    assert [r["given_scales"] for r in rows] == [0, 1, 2, 3]
    objects = sum(len(r.scene.objects) for r in ShapeWorld(split="test", size=32, tasks=("t2i",), length=4, seed=1))
    assert all(r["objects"] == objects and 0 <= r["shapeeval"] <= 1 for r in rows)
    pipeline = NextFlowPipeline.from_run(run)  # every scale given: the model drew nothing
    data = list(ShapeWorld(split="test", size=32, tasks=("t2i",), length=4, seed=1))
    recon = [to_pil(x) for x in pipeline.decode(pipeline.encode([r.image for r in data]))]
    assert rows[-1]["shapeeval"] == evaluate(recon, [r.spec for r in data]).overall
    fit = record["code_fit"]
    assert [f["grid"] for f in fit] == [[1, 1], [2, 2], [8, 8]]
    for f in fit:
        parts = [f[k] for k in ("object", "background") if k in f]
        assert sum(p["cells"] for p in parts) == 4 * f["grid"][0] * f["grid"][1]
        assert all(0 <= p["top1"] <= 1 and p["nll"] >= 0 and 0 <= p["frequency_nll"] <= math.log(16) + 1e-5
                   for p in parts)
    assert "| scale | grid | object cells: share |" in proc.stdout


def test_object_cells_mark_the_cells_an_object_touches():
    from PIL import Image

    image = Image.new("RGB", (8, 8), BACKGROUND)
    image.putpixel((5, 1), (200, 30, 30))
    assert object_cells(image, (2, 2)).tolist() == [False, True, False, False]
    assert object_cells(image, (1, 1)).tolist() == [True]
    assert not object_cells(Image.new("RGB", (8, 8), BACKGROUND), (4, 4)).any()

import sys
from pathlib import Path

from nxrecipes.nextflow.train import TextTokenizerConfig
from nxrecipes.tokenizer.train import dual_codebook_training_tiny, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from nextflow_overfit import VARIANTS, run  # noqa: E402


def test_overfit_record_scores_every_scale_of_the_training_examples(tmp_path):
    tok = tmp_path / "tok"
    train_tokenizer(dual_codebook_training_tiny(tok, steps=1, size=32, eval_images=2, codebook_size=16),
                    progress=False)
    record = run("grid-positions", tok, tmp_path, examples=3, steps=2, schedule=((1, 1), (2, 2), (8, 8)),
                 num_layers=1, batch_size=2, checkpoint_every=0,
                 text_tokenizer=TextTokenizerConfig(vocab_size=300, corpus_rounds=20))
    assert record["steps"] == 2 and record["examples"] == 3 and record["changes"] == VARIANTS["grid-positions"]
    fit = record["code_fit"]
    assert [f["grid"] for f in fit] == [[1, 1], [2, 2], [8, 8]]
    for f in fit:
        parts = [f[k] for k in ("object", "background") if k in f]
        assert sum(p["cells"] for p in parts) == 3 * f["grid"][0] * f["grid"][1]
        assert all(0 <= p["top1"] <= 1 and p["nll"] >= 0 for p in parts)
    assert "--variants grid-positions --examples 3 --steps 2" in record["command"]

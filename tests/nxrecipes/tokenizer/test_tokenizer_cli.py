import json

import pytest
from PIL import Image

from nxrecipes.cli import main
from nxrecipes.tokenizer.cli import KIND_NAMES, kinds
from nxrecipes.tokenizer.extract import ExtractedIndices

TINY = ["--size", "32", "--train-images", "8", "--eval-images", "4", "--batch-size", "4", "--eval-every", "2",
        "--quiet", "--threads", "1"]


def test_every_kind_has_a_builder():
    assert tuple(kinds()) == KIND_NAMES


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vq"
    assert main(["tokenizer", "train", "--kind", "vq", "--steps", "1", "--out", str(out), *TINY]) == 0
    return out


def test_train_eval_and_reconstruct_a_vq(vq_run, tmp_path, capsys):
    assert (vq_run / "tokenizer" / "model.safetensors").is_file()
    assert main(["tokenizer", "eval", str(vq_run), "-n", "4", "--quiet", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "scale  tokens  usage" in out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["images"] == 4 and report["codes"]["codebook_size"] == 256

    grid = tmp_path / "grid.png"
    assert main(["tokenizer", "reconstruct", str(vq_run), "--out", str(grid), "-n", "3"]) == 0
    image = Image.open(grid)
    assert image.size[0] > 4 * 160 and 2 * 160 < image.size[1] < 3 * 160  # 2 columns of pairs, 2 rows


def test_data_extract_writes_a_readable_extraction(vq_run, tmp_path):
    out = tmp_path / "indices"
    argv = ["data", "extract", "--tokenizer", str(vq_run), "--out", str(out), "-n", "5", "--shard-size", "2",
            "--self-correction", "--top-k", "3", "--quiet"]
    assert main(argv) == 0
    read = ExtractedIndices(out)
    assert len(read) == 5 and len(read.info["shards"]) == 3
    assert isinstance(read[4]["caption"], str) and read.schedule.grid == (8, 8)
    assert read.variants == 1 and read.info["self_correction"]["k"] == 3 and len(read[0]["inputs"][0]) == 7


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ae"
    assert main(["tokenizer", "train", "--kind", "ae", "--steps", "1", "--out", str(out), *TINY]) == 0
    return out


def test_train_an_autoencoder_then_resume_it(ae_run, capsys):
    assert main(["tokenizer", "train", "--kind", "ae", "--steps", "2", "--out", str(ae_run), *TINY]) == 0
    assert "resumed from step 1" in capsys.readouterr().out
    assert json.loads((ae_run / "eval.json").read_text())["step"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokenizer", "eval", "{tmp}"], "run_config.json does not exist"),
        (["tokenizer", "train", "--kind", "ae", "--out", "{tmp}/r", "--minutes", "-1"],
         "TokenizerTrainConfig.minutes = -1.0"),
        (["tokenizer", "train", "--kind", "ae", "--out", "{tmp}/r", "--data", "{tmp}/none"],
         "image folder"),
        (["data", "extract", "--tokenizer", "{tmp}", "--out", "{tmp}/x"], "run_config.json does not exist"),
        (["tokenizer", "train", "--kind", "vq", "--out", "{tmp}/r", "--restart-every", "5"], "Use --kind dual"),
        (["tokenizer", "train", "--kind", "ae", "--out", "{tmp}/r", "--truncate", "0.5"], "Use --kind dual"),
        (["tokenizer", "train", "--kind", "dual", "--out", "{tmp}/r", "--truncate", "2"],
         "DualCodebookObjective.truncate"),
    ],
)
def test_bad_arguments_are_reported_not_raised(argv, message, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_extract_refuses_a_continuous_tokenizer(ae_run, tmp_path, capsys):
    assert main(["data", "extract", "--tokenizer", str(ae_run), "--out", str(tmp_path / "x")]) == 2
    assert "needs a discrete one" in capsys.readouterr().err


def test_dual_flags_set_the_codebook_size_search_restarts_and_dropping(tmp_path):
    out = tmp_path / "dual"
    argv = ["tokenizer", "train", "--kind", "dual", "--steps", "1", "--out", str(out), "--codes", "32",
            "--search", "euclidean", "--restart-every", "1", "--scale-drop", "0.25", "--truncate", "0.5", *TINY]
    assert main(argv) == 0
    run_config = json.loads((out / "run_config.json").read_text())
    saved = run_config["tokenizer"]
    assert (saved["codebook_size"], saved["normalize"], saved["restart_every"]) == (32, False, 1)
    assert (saved["scale_drop"], run_config["objective"]["truncate"]) == (0.25, 0.5)

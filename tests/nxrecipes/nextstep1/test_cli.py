"""``nx nextstep1 generate|edit|train``: PNG grids end to end on a tiny pipeline (the run loader
replaced by one that returns it), the official loader's arguments, the trainer's wiring, and errors."""

import re
import types

import pytest
import torch
from PIL import Image

from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxcore.tokenizer.autoencoder import autoencoder_tiny
from nxrecipes.cli import main
from nxrecipes.nextstep1 import FlowHeadConfig, nextstep1_tiny
from nxrecipes.nextstep1.pipeline import NextStep1Pipeline
from nxrecipes.nextstep1.prompt import model_special_ids

CORPUS = ["a red circle above a blue square", "two green triangles", "make the circle blue"] * 3


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextstep1(), min_frequency=1)
    head = FlowHeadConfig(cond_dim=128, width=32, depth=1, freq_dim=32)
    model = nextstep1_tiny(num_layers=2, vocab_size=tok.vocab_size, head=head, **model_special_ids(tok)).build()
    return NextStep1Pipeline(model, tok, autoencoder_tiny(z_channels=16).build())


@pytest.fixture
def runs(monkeypatch, tiny, tmp_path):
    """``--run DIR`` opens the tiny pipeline for ``tmp_path/run`` (the run loader is not exercised)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    def from_run(cls, path):
        assert str(path) == str(run_dir)
        return tiny

    monkeypatch.setattr(NextStep1Pipeline, "from_run", classmethod(from_run))
    return run_dir


def test_generate_writes_a_grid_of_every_prompt(runs, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["nextstep1", "generate", "--run", str(runs), "--prompt", "a red circle", "two squares", "--prompt",
            "a blue star", "--hw", "8", "12", "--num-images", "2", "--cfg", "2", "--steps", "2", "--use-norm",
            "--schedule", "linear", "--out", str(out), "--quiet", "--threads", "1"]
    assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    grid = Image.open(out)
    assert grid.width > 4 * 128 and grid.height > 128  # 6 tiles of 128 px, 4 to a row


def test_edit_writes_sources_and_results(runs, tmp_path):
    source = tmp_path / "a.png"
    Image.fromarray((torch.rand(10, 10, 3) * 255).byte().numpy()).save(source)
    out = tmp_path / "edit.png"
    argv = ["nextstep1", "edit", "--run", str(runs), "--image", str(source), str(source), "--instruction",
            "make it blue", "--hw", "8", "8", "--cfg", "3", "--cfg-img", "2", "--steps", "2",
            "--negative", "copy", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert Image.open(out).width > 2 * 128


def test_official_passes_the_model_vae_dtype_and_device(monkeypatch, tiny, tmp_path):
    seen = {}

    def from_official(cls, model_dir, vae_dir, *, dtype, device):
        seen.update(model_dir=model_dir, vae_dir=vae_dir, dtype=dtype, device=device)
        return tiny

    monkeypatch.setattr(NextStep1Pipeline, "from_official", classmethod(from_official))
    argv = ["nextstep1", "generate", "--official", "M", "--vae", "V", "--dtype", "fp32", "--device", "cpu",
            "--prompt", "a red circle", "--hw", "4", "4", "--steps", "1", "--out", str(tmp_path / "o.png"),
            "--quiet"]
    assert main(argv) == 0
    assert seen == {"model_dir": "M", "vae_dir": "V", "dtype": torch.float32, "device": "cpu"}


def test_train_calls_the_trainer(monkeypatch, tmp_path, capsys):
    from nxrecipes.nextstep1 import train

    calls = []
    monkeypatch.setattr(train, "nextstep1_training_tiny",
                        lambda run_dir, **kw: calls.append(("cfg", run_dir, kw)) or "CFG")
    monkeypatch.setattr(train, "train_nextstep1",
                        lambda cfg, progress: calls.append(("train", cfg, progress)) or types.SimpleNamespace(step=7))
    argv = ["nextstep1", "train", "--tokenizer", "TOK", "--out", str(tmp_path), "--minutes", "0.5",
            "--steps", "3", "--quiet"]
    assert main(argv) == 0
    assert calls == [("cfg", str(tmp_path), {"minutes": 0.5, "steps": 3, "tokenizer_dir": "TOK"}),
                     ("train", "CFG", False)]
    assert "trained 7 updates" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--official", "M", "--prompt", "a"], "--official needs --vae VAE_DIR"),
    (["generate", "--run", "{run}", "--prompt", "a", "--hw", "10", "8"], r"hw = \(10, 8\): H = 10 is not divisible"),
    (["edit", "--run", "{run}", "--image", "x.png", "y.png", "z.png", "--instruction", "a", "b"],
     "got 3 images and 2 instructions"),
])
def test_errors_exit_2_with_the_message(runs, capsys, argv, message):
    argv = [a.replace("{run}", str(runs)) for a in argv]
    assert main(["nextstep1", *argv, "--quiet"]) == 2
    assert re.search(message, capsys.readouterr().err)

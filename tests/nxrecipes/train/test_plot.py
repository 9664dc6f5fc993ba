import math
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from nxrecipes.cli import main  # noqa: E402
from nxrecipes.train.metrics import MetricsLogger, read_metrics  # noqa: E402
from nxrecipes.train.plot import plot_run  # noqa: E402


def make_run(path, *, steps=60, lr=1e-3, nan_at=None):
    with warnings.catch_warnings(), MetricsLogger(path, tensorboard=False) as logger:
        warnings.simplefilter("ignore")
        for step in range(steps):
            loss = 2.0 + 4.0 * math.exp(-step / 15)
            values = {"loss": loss, "loss/t2i": 0.9 * loss, "loss/text": 1.1 * loss}
            values.update({f"loss/scale_{k:02d}": (0.5 + 0.1 * k) * loss for k in range(12)})
            values.update({"tokens_per_s": 5000.0 + step, "mfu": 0.3, "lr": lr * min(1.0, step / 10)})
            if step == nan_at:
                values["loss"] = float("nan")
            logger.log(step, values)
    return path


def image_of(path):
    image = Image.open(path)
    image.load()
    return image


def assert_not_blank(image):
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10, "the PNG is (nearly) a single colour"


def test_one_run_writes_a_png_beside_its_metrics(tmp_path):
    run = make_run(tmp_path / "tiny", nan_at=30)
    out = plot_run(run)
    assert out == run / "metrics.png"
    image = image_of(out)
    # six families (loss, per scale, throughput, MFU, lr) in a 3-wide grid
    assert image.width >= 1200 and 500 <= image.height <= 1200, image.size
    assert_not_blank(image)


def test_two_runs_overlay_into_one_png_named_after_them(tmp_path):
    a = make_run(tmp_path / "runs" / "base")
    b = make_run(tmp_path / "runs" / "big_lr", lr=3e-3, steps=40)
    out = plot_run([a, b])
    assert out == tmp_path / "runs" / "metrics-base-big_lr.png"
    image = image_of(out)
    # one panel per metric and one per run for the scales: 8 panels in 3 rows of 3
    assert image.width >= 1200 and 1000 <= image.height <= 1600, image.size
    assert_not_blank(image)


def test_runs_with_the_same_name_are_told_apart_by_their_parents(tmp_path):
    a = make_run(tmp_path / "x" / "run", steps=5)
    b = make_run(tmp_path / "y" / "run", steps=5)
    assert plot_run([a, b], keys=["lr"]).name == "metrics-x_run-y_run.png"


def test_records_in_memory_and_a_mapping_of_names(tmp_path):
    records = read_metrics(make_run(tmp_path / "r", steps=8))
    with pytest.raises(ValueError, match="pass out_png"):
        plot_run(records)
    assert image_of(plot_run(records, tmp_path / "mem.png", keys=["mfu"])).width > 300
    both = plot_run({"mine": records, "disk": tmp_path / "r"}, tmp_path / "both.png", keys=["tokens_per_s"])
    assert both.is_file()


def test_keys_select_metrics_by_name_glob_or_family(tmp_path):
    run = make_run(tmp_path / "run", steps=10)
    lr_only = image_of(plot_run(run, tmp_path / "lr.png", keys=["lr"]))
    assert 400 <= lr_only.width <= 800 and 250 <= lr_only.height <= 500, lr_only.size  # one panel
    two = image_of(plot_run(run, tmp_path / "scales.png", keys=["loss/scale_0*", "loss/t2i"]))
    assert two.width > 1.5 * lr_only.width and two.height == lr_only.height  # side by side
    with pytest.raises(ValueError, match=r"no metric matches keys \['accuracy'\]; the runs logged: .*tokens_per_s"):
        plot_run(run, tmp_path / "x.png", keys=["accuracy"])


def test_a_run_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl in"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no metrics yet"):
        plot_run(tmp_path)


def test_missing_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    run = make_run(tmp_path / "run", steps=3)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'nx\[dev\]'"):
        plot_run(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(run)])
    assert exit_info.value.code == 2
    assert "nx plot: plotting metrics needs matplotlib" in capsys.readouterr().err


def test_nx_plot_writes_the_png(tmp_path, capsys):
    a = make_run(tmp_path / "a", steps=12)
    b = make_run(tmp_path / "b", steps=12)
    out = tmp_path / "plots" / "cmp.png"
    assert main(["plot", str(a), str(b), "--out", str(out), "--keys", "loss", "lr"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert image_of(out).width > 300
    assert main(["plot", str(a / "metrics.jsonl"), "--keys", "mfu"]) == 0
    assert (a / "metrics.png").is_file()


def test_nx_plot_reports_a_missing_run_and_exits_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nx plot: no run directory or metrics file at") and str(tmp_path / "nope") in err
    assert err.count("\n") == 1

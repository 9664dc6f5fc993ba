import json

import pytest
from PIL import Image

from nxrecipes.cli import main


def test_info_prints_versions_devices_and_kernels(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"].startswith("2.")
    assert "cpu" in info["devices"]
    assert "rope" in info["kernels"]
    assert info["optional"].keys() == {"triton", "xformers"}


def test_components_lists_protocols_and_implementations(capsys):
    assert main(["components"]) == 0
    out = capsys.readouterr().out
    assert "nxcore.schedule.schedule.Schedule" in out and "LinearHead" in out


def test_data_preview_writes_a_png(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "-n", "6", "--task", "t2i", "edit", "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.width >= 300 and image.height >= 300


def test_data_export_writes_images_and_jsonl(tmp_path):
    assert main(["data", "export", "-n", "5", "--split", "test", "--out", str(tmp_path), "--quiet"]) == 0
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[0])
    assert first["task"] == "t2i" and (tmp_path / first["image"]).is_file()


def test_data_export_can_leave_out_distractors(tmp_path):
    argv = ["data", "export", "-n", "20", "--split", "test", "--quiet", "--max-distractors", "0"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    for line in (tmp_path / "samples.jsonl").read_text().splitlines():
        record = json.loads(line)
        named = sum(q["count"] for q in record["spec"]["objects"])
        assert len(record["scene"]["objects"]) == named


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "preview", "--split", "nope", "-n", "2"], "split"),
        (["data", "preview", "--task", "dance", "-n", "2"], "unknown task 'dance'"),
        (["data", "preview", "--size", "8", "-n", "2"], "size"),
        (["data", "preview", "--max-distractors", "-1", "-n", "2"], "max_distractors = -1"),
    ],
)
def test_bad_arguments_are_reported_not_raised(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


def test_eval_scores_an_exported_folder(tmp_path, capsys):
    assert main(["data", "export", "-n", "12", "--split", "test", "--out", str(tmp_path), "--quiet"]) == 0
    report = tmp_path / "report.json"
    argv = ["eval", "--images", str(tmp_path), "--prompts", str(tmp_path / "samples.jsonl"), "--quiet"]
    assert main([*argv, "--json", str(report)]) == 0
    assert "overall" in capsys.readouterr().out
    assert json.loads(report.read_text())["overall"] == 1.0


def test_eval_names_missing_images(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a red circle"}\n')
    assert main(["eval", "--images", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl")]) == 2
    assert "000000.png" in capsys.readouterr().err

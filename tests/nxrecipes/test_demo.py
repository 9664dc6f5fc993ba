from PIL import Image

from nxrecipes import cli
from nxrecipes.demo import main


def test_demo_writes_a_grid_of_every_step(tmp_path, capsys):
    path = main(["--out", str(tmp_path)])
    image = Image.open(path)
    assert image.height > 3 * 96 and image.width > 12 * 96
    out = capsys.readouterr().out
    assert "256x256: 12 steps, 900 tokens" in out


def test_cli_lists_components(capsys):
    cli.main(["components"])
    out = capsys.readouterr().out
    assert "ScaleSchedule" in out and "nxcore.schedule.schedule.Schedule" in out
    assert "OutputHead" in out and "LinearHead" in out

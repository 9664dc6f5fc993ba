"""The progressive-resolution curriculum: stages by step, NextFlow's 256 -> 512 -> 1024."""

import pytest

from nxcore.config import Config
from nxcore.schedule import NEXTFLOW_LEVELS
from nxrecipes.train import Curriculum, Stage, nextflow_curriculum


def test_nextflow_curriculum_levels_and_scales():
    c = nextflow_curriculum(steps_256=100, steps_512=50)
    assert [(s.name, s.start_step, s.level, s.num_scales) for s in c] == [
        ("256", 0, 256, 12), ("512", 100, 512, 16), ("1024", 150, 1024, 18)
    ]
    assert all(s.num_scales == NEXTFLOW_LEVELS[s.level] for s in c)
    expected = {0: 256, 99: 256, 100: 512, 149: 512, 150: 1024, 10**9: 1024}
    assert {step: c.stage_at(step).level for step in expected} == expected
    assert c.stage_at(120).num_scales == 16
    assert c.end_of("256") == 100 and c.end_of(c.stages[1]) == 150 and c.end_of("1024") is None
    assert len(c) == 3


def test_curriculum_round_trips_through_json():
    c = nextflow_curriculum(10, 20)
    back = Config.from_json(c.to_json())
    assert back == c and isinstance(back.stages[0], Stage)


@pytest.mark.parametrize(
    ("stages", "error", "match"),
    [
        ((), ValueError, "stages is empty"),
        ((Stage("a", 5, 256, 12),), ValueError, "first stage 'a' starts at step 5; the first stage must start at step 0"),
        ((Stage("a", 0, 256, 12), Stage("b", 10, 512, 16), Stage("c", 10, 1024, 18)), ValueError,
         r"stage 'c' starts at step 10, not after stage 'b' \(step 10\)"),
        ((Stage("a", 0, 256, 12), Stage("a", 3, 512, 16)), ValueError, r"unique; repeated: \['a'\]"),
        (Stage("a", 0, 256, 12), TypeError, "list or tuple of Stage"),
        (("a",), TypeError, "every entry must be a Stage"),
    ],
)
def test_bad_curricula_are_refused(stages, error, match):
    with pytest.raises(error, match=match):
        Curriculum(stages)


def test_bad_stage_and_arguments():
    with pytest.raises(ValueError, match="Stage.num_scales = 0"):
        Stage("a", 0, 256, 0)
    with pytest.raises(ValueError, match="Stage.name = ''"):
        Stage("", 0, 256, 12)
    with pytest.raises(ValueError, match="steps_512 = 0 must be an int >= 1"):
        nextflow_curriculum(10, 0)
    with pytest.raises(ValueError, match="step = -1 must be an int >= 0"):
        nextflow_curriculum(10, 10).stage_at(-1)
    with pytest.raises(ValueError, match="no stage named 'x'"):
        nextflow_curriculum(10, 10).end_of("x")

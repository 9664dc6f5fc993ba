"""``parse_reward``: every accepted form gives the reward it names (checked by the scores it gives),
and anything else a ValueError that names the part and lists the forms."""

import pytest
import torch

from nxcore.checkpoint import save_pretrained
from nxcore.reward import WeightedReward
from nxrecipes.data.shapeworld.render import render, to_float
from nxrecipes.data.shapeworld.world import Scene, ShapeObject
from nxrecipes.eval import REWARD_FORMS, parse_reward
from nxrecipes.eval.learned_reward import LearnedShapeReward, LearnedShapeRewardConfig
from nxrecipes.eval.shapeeval import ShapeEvalReward

CIRCLE_LEFT = ShapeObject("circle", "red", "small", 0.25, 0.5)
SQUARE_RIGHT = ShapeObject("square", "blue", "small", 0.75, 0.5)
IMAGES = to_float(render(Scene([CIRCLE_LEFT, SQUARE_RIGHT]), 64))[None].repeat(4, 1, 1, 1)
PROMPTS = [
    "a red circle to the right of a blue square",  # position: 2/3
    "a red circle and a green square",  # color_attr: 1/2
    "two red circles",  # counting: 0
    "a red circle",  # colors: 1
]
PARTIAL = torch.tensor([2 / 3, 0.5, 0.0, 1.0])


@pytest.fixture(scope="module")
def learned_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LearnedShapeReward(LearnedShapeRewardConfig(image_size=32, width=16, hidden=16))
    path = tmp_path_factory.mktemp("learned") / "reward"
    save_pretrained(model, path)
    return path, model.eval()


def test_shapeeval_forms():
    partial = parse_reward("shapeeval")
    assert isinstance(partial, ShapeEvalReward) and partial.partial_credit and partial.categories is None
    torch.testing.assert_close(partial(IMAGES, PROMPTS), PARTIAL)
    strict = parse_reward(" shapeeval-strict ")
    assert isinstance(strict, ShapeEvalReward) and not strict.partial_credit
    assert torch.equal(strict(IMAGES, PROMPTS), torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_category_weights():
    model = parse_reward("shapeeval:position=3, colors=0.5")
    assert model.categories == {"position": 3.0, "colors": 0.5}
    torch.testing.assert_close(model(IMAGES, PROMPTS), torch.tensor([2.0, 0.0, 0.0, 0.5]))
    strict = parse_reward("shapeeval-strict:colors=2")
    assert torch.equal(strict(IMAGES, PROMPTS), torch.tensor([0.0, 0.0, 0.0, 2.0]))


def test_weighted_sums_equal_the_hand_sum():
    model = parse_reward("0.25*shapeeval + 2 * shapeeval-strict + shapeeval:counting=1,colors=1")
    assert isinstance(model, WeightedReward) and [w for _, w in model.terms] == [0.25, 2.0, 1.0]
    expected = 0.25 * PARTIAL + 2 * torch.tensor([0.0, 0.0, 0.0, 1.0]) + torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(model(IMAGES, PROMPTS), expected)
    single = parse_reward("-1.5e0*shapeeval")
    assert isinstance(single, WeightedReward)
    torch.testing.assert_close(single(IMAGES, PROMPTS), -1.5 * PARTIAL)
    assert [w for _, w in parse_reward("1e+1*shapeeval+shapeeval").terms] == [10.0, 1.0]


def test_learned_forms_load_the_checkpoint(learned_dir):
    path, original = learned_dir
    model = parse_reward(f"learned={path}")
    assert isinstance(model, LearnedShapeReward) and not model.training
    assert torch.equal(model(IMAGES, PROMPTS), original(IMAGES, PROMPTS))
    mix = parse_reward(f"0.7*shapeeval+0.3*learned={path}")
    expected = 0.7 * PARTIAL + 0.3 * original(IMAGES, PROMPTS)
    torch.testing.assert_close(mix(IMAGES, PROMPTS), expected)


def test_missing_learned_checkpoint_is_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_reward(f"learned={tmp_path / 'nothing'}")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("shapeevil", r"reward term 'shapeevil' of 'shapeevil': unknown reward 'shapeevil'"),
        ("x*shapeeval", r"term 'x\*shapeeval' .* the weight before '\*' is not a number"),
        ("shapeeval+", r"empty term"),
        ("+shapeeval", r"empty term"),
        ("shapeeval:counting", r"category weight 'counting' is not CATEGORY=NUMBER"),
        ("shapeeval:counting=a", r"category weight 'counting=a' is not CATEGORY=NUMBER"),
        ("shapeeval:counting=1,counting=2", r"category 'counting' is given twice"),
        ("shapeeval:count=1", r"unknown category 'count' in categories; choose among"),
        ("shapeeval:counting=-1", r"must be a finite number >= 0"),
        ("shapeeval:counting=inf", r"categories\['counting'\] = inf must be a finite number"),
        ("shapeeval:counting=0", r"gives no category a positive weight"),
        ("learned=", r"learned= needs a checkpoint directory"),
        ("   ", r"reward spec is empty"),
    ],
)
def test_unreadable_specs_name_the_part_and_the_forms(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_reward(spec)
    assert all(form in str(info.value) for form in REWARD_FORMS)


def test_spec_must_be_a_string():
    with pytest.raises(TypeError, match="must be a str"):
        parse_reward(None)


def test_parsed_rewards_conform():
    from nxcore.testing.check_reward import check_reward_model

    for spec in ("shapeeval", "0.5*shapeeval-strict+shapeeval:counting=1"):
        check_reward_model(parse_reward(spec))

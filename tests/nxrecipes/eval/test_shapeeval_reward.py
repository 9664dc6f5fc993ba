"""``ShapeEvalReward``: 1 for images that satisfy their prompt, partial credit otherwise, the
RewardModel contract, clear errors."""

import numpy as np
import pytest
import torch

from nxcore.reward import RewardModel
from nxcore.testing.check_reward import check_reward_model
from nxrecipes.data.shapeworld.captions import prompt_for_spec
from nxrecipes.data.shapeworld.render import render, to_float
from nxrecipes.data.shapeworld.scenes import random_spec, scene_for_spec
from nxrecipes.data.shapeworld.spec import CATEGORIES
from nxrecipes.data.shapeworld.world import BACKGROUND, Scene, ShapeObject
from nxrecipes.eval.shapeeval import ShapeEvalReward


def image(*objects, size=64):
    return to_float(render(Scene(objects), size))


CIRCLE_LEFT = ShapeObject("circle", "red", "small", 0.25, 0.5)
SQUARE_RIGHT = ShapeObject("square", "blue", "small", 0.75, 0.5)


def test_is_a_reward_model_that_passes_the_conformance_check():
    for model in ShapeEvalReward.examples():
        assert isinstance(model, RewardModel)
        check_reward_model(model)


def test_images_drawn_for_their_prompts_earn_one():
    rng = np.random.default_rng(0)
    prompts, images = [], []
    for category in CATEGORIES * 2:
        spec = random_spec(rng, category)
        prompts.append(prompt_for_spec(spec, rng))
        images.append(to_float(render(scene_for_spec(spec, rng, size=64), 64)))
    rewards = ShapeEvalReward()(torch.stack(images), prompts)
    assert rewards.dtype == torch.float32 and rewards.shape == (len(prompts),)
    assert torch.equal(rewards, torch.ones(len(prompts)))


@pytest.mark.parametrize(
    ("prompt", "partial", "binary"),
    [
        ("a red circle to the left of a blue square", 1.0, 1.0),
        ("a red circle to the right of a blue square", 2 / 3, 0.0),  # both there, relation wrong
        ("a red circle above a green star", 1 / 3, 0.0),  # the star is missing, so is the relation
        ("a red circle and a blue square", 1.0, 1.0),
        ("a red circle and a green square", 0.5, 0.0),
        ("two red circles", 0.0, 0.0),  # counting: the count is exact or nothing
        ("a purple triangle", 0.0, 0.0),
    ],
)
def test_partial_credit_is_the_fraction_of_requirements_met(prompt, partial, binary):
    images = image(CIRCLE_LEFT, SQUARE_RIGHT)[None]
    assert ShapeEvalReward()(images, [prompt]).item() == pytest.approx(partial)
    assert ShapeEvalReward(partial_credit=False)(images, [prompt]).item() == binary


def test_blank_and_noise_images_earn_nothing():
    prompts = ["a red circle", "two blue squares", "a green triangle above a yellow star", "a purple cross"]
    blank = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(4, 3, 64, 64)
    noise = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for images in (blank, noise):
        assert torch.equal(ShapeEvalReward()(images, prompts), torch.zeros(4))


def test_rewards_stay_on_the_images_device_and_out_of_autograd():
    images = image(CIRCLE_LEFT)[None].requires_grad_(True)
    rewards = ShapeEvalReward()(images, ["a red circle"])
    assert rewards.device == images.device and not rewards.requires_grad
    if torch.cuda.is_available():
        assert ShapeEvalReward()(images.detach().cuda(), ["a red circle"]).device.type == "cuda"


def test_bad_prompts_and_images_raise_clear_errors():
    model = ShapeEvalReward()
    images = image(CIRCLE_LEFT)[None].repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match=r"prompt 'a tasty sandwich' is not a ShapeWorld prompt"):
        model(images, ["a red circle", "a tasty sandwich"])
    with pytest.raises(ValueError, match="got 1 prompts for 2 images"):
        model(images, ["a red circle"])
    with pytest.raises(ValueError, match=r"images\[0\]: image contains NaN"):
        model(torch.full((1, 3, 32, 32), float("nan")), ["a red circle"])
    with pytest.raises(TypeError, match="partial_credit must be a bool"):
        ShapeEvalReward(partial_credit=1)
    assert "partial_credit=True" in repr(model)


def test_score_takes_any_image_form():
    model = ShapeEvalReward()
    pil = render(Scene([CIRCLE_LEFT, SQUARE_RIGHT]), 64)
    assert model.score(pil, "a red circle left of a blue square") == 1.0
    assert model.score(np.asarray(pil), "a blue square") == 1.0


# --- per-category weights ---------------------------------------------------------------------


def drawn_for_each_category(seed=1):
    """One image per category, drawn for its prompt (so the unweighted reward is 1 for each)."""
    rng = np.random.default_rng(seed)
    prompts, images = [], []
    for category in CATEGORIES:
        spec = random_spec(rng, category)
        prompts.append(prompt_for_spec(spec, rng))
        images.append(to_float(render(scene_for_spec(spec, rng, size=64), 64)))
    return torch.stack(images), prompts


def test_category_weights_scale_each_prompt_by_its_category_and_zero_the_rest():
    images, prompts = drawn_for_each_category()
    assert torch.equal(ShapeEvalReward()(images, prompts), torch.ones(len(CATEGORIES)))
    weighted = ShapeEvalReward(categories={"counting": 1.0, "position": 2.5})(images, prompts)
    expected = torch.tensor([{"counting": 1.0, "position": 2.5}.get(c, 0.0) for c in CATEGORIES])
    assert torch.equal(weighted, expected)
    counting_only = ShapeEvalReward(categories={"counting": 1.0})(images, prompts)
    assert torch.equal(counting_only, (torch.tensor([c == "counting" for c in CATEGORIES])).float())


def test_category_weights_multiply_partial_credit_and_strict_scores():
    images = image(CIRCLE_LEFT, SQUARE_RIGHT)[None].repeat(3, 1, 1, 1)
    prompts = ["a red circle to the right of a blue square",  # position, 2/3
               "a red circle and a green square",  # color_attr, 1/2
               "a red circle"]  # colors, 1
    weights = {"position": 3.0, "color_attr": 0.5, "colors": 2}
    partial = ShapeEvalReward(categories=weights)(images, prompts)
    torch.testing.assert_close(partial, torch.tensor([2.0, 0.25, 2.0]))
    strict = ShapeEvalReward(partial_credit=False, categories=weights)(images, prompts)
    assert torch.equal(strict, torch.tensor([0.0, 0.0, 2.0]))
    assert ShapeEvalReward(categories=weights).score(images[0], prompts[0]) == pytest.approx(2.0)


def test_zero_weight_prompts_are_not_scored():
    nan = torch.full((1, 3, 32, 32), float("nan"))
    model = ShapeEvalReward(categories={"counting": 1.0})
    assert model(nan, ["a red circle"]).item() == 0.0  # a colors prompt: weight 0, image never read
    with pytest.raises(ValueError, match="image contains NaN"):
        model(nan, ["two red circles"])
    with pytest.raises(ValueError, match="not a ShapeWorld prompt"):
        model(nan, ["a tasty sandwich"])  # prompts are still all read


@pytest.mark.parametrize(
    ("categories", "error", "message"),
    [
        ({"count": 1.0}, ValueError, r"unknown category 'count' in categories; choose among \['single_object'"),
        ({"counting": -1.0}, ValueError, r"categories\['counting'\] = -1.0 must be a finite number >= 0"),
        ({"counting": float("nan")}, ValueError, "must be a finite number"),
        ({"counting": float("inf")}, ValueError, "must be a finite number"),
        ({"counting": True}, ValueError, "must be a finite number"),
        ({"counting": "1"}, ValueError, "must be a finite number"),
        ({"counting": 0.0}, ValueError, "gives no category a positive weight"),
        ({}, ValueError, "gives no category a positive weight"),
        (["counting"], TypeError, "categories must be a mapping"),
    ],
)
def test_bad_category_weights_raise(categories, error, message):
    with pytest.raises(error, match=message):
        ShapeEvalReward(categories=categories)


def test_weighted_examples_conform_and_repr_shows_the_weights():
    for model in ShapeEvalReward.examples():
        check_reward_model(model)
    assert any(m.categories for m in ShapeEvalReward.examples())
    model = ShapeEvalReward(categories={"counting": 1.0, "position": 2.0})
    assert repr(model) == "ShapeEvalReward(partial_credit=True, categories={'counting': 1.0, 'position': 2.0})"
    assert repr(ShapeEvalReward()) == "ShapeEvalReward(partial_credit=True)"

import pytest
import torch
from PIL import Image

from nxrecipes.nextflow.generate import ImageSampling, TextSampling
from nxrecipes.nextflow.pipeline import NextFlowPipeline


@pytest.fixture(scope="module")
def pipeline(world):
    return NextFlowPipeline(world.model(), world.text, world.image, world.schedule)


def pictures(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(8, 8, 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def test_text_to_image_gives_images_in_the_unit_range(pipeline):
    images = pipeline.text_to_image(["a red circle", "two blue squares"], sampling=ImageSampling(cfg=2.0))
    assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    again = pipeline.text_to_image(["a red circle", "two blue squares"], sampling=ImageSampling(cfg=2.0))
    torch.testing.assert_close(images, again)


def test_edit_in_context_caption_think_and_interleave_run_end_to_end(pipeline):
    edited = pipeline.edit(pictures(2), ["make the circle blue", "remove the square"],
                           sampling=ImageSampling(cfg=2.0))
    assert edited.shape == (2, 3, 8, 8)
    pairs = [(pictures(1, 1)[0], pictures(1, 2)[0]), (pictures(1, 3)[0], pictures(1, 4)[0])]
    assert pipeline.in_context("do the same", pairs, pictures(1, 5)[0]).shape == (1, 3, 8, 8)
    captions = pipeline.caption(pictures(3), sampling=TextSampling(greedy=True, max_tokens=5))
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    traces, images = pipeline.think_then_draw(["the colour of the sky"], text=TextSampling(max_tokens=4))
    assert len(traces) == 1 and images.shape == (1, 3, 8, 8)
    pieces = pipeline.interleave("a story", text=TextSampling(max_tokens=4))
    assert pieces and all(isinstance(p, str | torch.Tensor) for p in pieces)


@pytest.mark.parametrize(("ratio", "shape"), [(0.25, (2, 8)), (4.0, (8, 2)), (0.5, (3, 6))])
def test_any_table14_ratio(pipeline, ratio, shape):
    schedule = pipeline.schedule_for_ratio(ratio)
    assert schedule.steps[-1] == shape and len(schedule.steps) == len(pipeline.schedule.steps)
    images = pipeline.text_to_image(["a red circle"], ratio=ratio)
    assert images.shape == (1, 3, 2 * shape[0], 2 * shape[1])


def test_bad_inputs(pipeline):
    with pytest.raises(ValueError, match=r"ratio = 5.0 is outside 1:4 .. 4:1"):
        pipeline.text_to_image(["a red circle"], ratio=5.0)
    with pytest.raises(ValueError, match=r"needs \[batch, 3, 8, 8\] images"):
        pipeline.edit(torch.zeros(1, 3, 16, 16), ["make it red"])
    with pytest.raises(ValueError, match="got 2 images and 1 instructions"):
        pipeline.edit(pictures(2), ["make it red"])
    with pytest.raises(TypeError, match="prompts must be a non-empty list of strings"):
        pipeline.text_to_image("a red circle")

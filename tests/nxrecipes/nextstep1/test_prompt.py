"""The official prompt template: text-to-image rows, the "h*w" prefix as plain BPE text, guidance
rows, left padding, the edit layout with its placeholder latents, and the errors."""

import pytest
import torch

from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxrecipes.nextstep1.prompt import (
    build_prompts,
    generation_prefix,
    guidance_branches,
    model_special_ids,
    token_grid,
)

CORPUS = ["a red circle above a blue square", "two green triangles to the left of a yellow star",
          "make the circle blue", "copy the picture"] * 3
AREA, BOI, EOI, P = "<|image_area|>", "<|begin_of_image|>", "<|end_of_image|>", "<|image_placeholder|>"


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextstep1(), min_frequency=1)


def rows(tok, batch):
    """The decoded text of every row without its padding."""
    return [tok.decode(ids[mask].tolist()) for ids, mask in zip(batch.ids, batch.attention_mask, strict=True)]


def test_text_to_image_row_is_caption_then_area_grid_text_and_boi(tok):
    batch = build_prompts(tok, ["a red circle"], (2, 3))
    pieces = [tok.decode([i]) for i in batch.ids[0].tolist()]
    assert pieces[-5:] == [AREA, "2", "*", "3", BOI]  # "h*w" is ordinary text: digits and "*"
    assert "".join(pieces[:-5]) == "a red circle"
    assert rows(tok, batch) == [f"a red circle{AREA}2*3{BOI}"]
    assert batch.branches == 1 and batch.images == 1 and batch.context is None and batch.grid == (2, 3)
    assert generation_prefix(tok, (12, 34)) == tok.encode(f"{AREA}12*34") + [tok.special_id(BOI)]
    # the caption and the prefix are encoded apart, as upstream: no BPE merge crosses them
    assert batch.ids[0].tolist() == tok.encode("a red circle") + generation_prefix(tok, (2, 3))


def test_guidance_rows_positive_prompt_repeats_and_left_padding(tok):
    batch = build_prompts(tok, ["a red circle", "two green triangles"], (2, 2), num_images_per_caption=2,
                          positive_prompt="copy", negative_prompt="blue", cfg=3.0)
    grid = f"{AREA}2*2{BOI}"
    assert rows(tok, batch) == [f"a red circle copy{grid}"] * 2 + [f"two green triangles copy{grid}"] * 2 \
        + [f"blue{grid}"] * 4
    assert batch.branches == 2 and batch.num_captions == 2 and batch.per_caption == 2 and batch.rows == 8
    pad = tok.special_id("[PAD]")
    lengths = batch.attention_mask.sum(1)
    for ids, mask, n in zip(batch.ids, batch.attention_mask, lengths, strict=True):
        start = batch.ids.shape[1] - int(n)
        assert not mask[:start].any() and mask[start:].all()  # left padding
        assert (ids[:start] == pad).all()
    assert (batch.ids[:, -1] == tok.special_id(BOI)).all()  # every row ends where generation starts
    no_negative = build_prompts(tok, ["a red circle"], (2, 2), cfg=3.0)
    assert rows(tok, no_negative)[1] == f"{AREA}2*2{BOI}"  # the default negative prompt is ""


def test_edit_layout_three_branches_and_context_latents(tok):
    source = torch.randn(1, 1, 2, 64)
    batch = build_prompts(tok, ["<image>make the circle blue"], (2, 2), sources=source, negative_prompt="copy",
                          cfg=3.0, cfg_img=2.0)
    image = f"{AREA}1*2{BOI}{P}{P}{EOI}"
    prefix = f"{AREA}2*2{BOI}"
    assert rows(tok, batch) == [f"{image}make the circle blue{prefix}", f"{image}copy{prefix}", f"copy{prefix}"]
    assert batch.branches == 3
    torch.testing.assert_close(batch.context, torch.cat([source[0].reshape(2, 64)] * 2), rtol=0, atol=0)
    text_only = build_prompts(tok, ["<image>make the circle blue"], (2, 2), sources=source, cfg=3.0)
    assert rows(tok, text_only) == [f"{image}make the circle blue{prefix}", prefix]  # upstream's 2 rows
    torch.testing.assert_close(text_only.context, source[0].reshape(2, 64), rtol=0, atol=0)


def test_guidance_branches_and_special_ids(tok):
    assert [guidance_branches(*w) for w in ((1.0, 1.0), (7.5, 1.0), (7.5, 2.0), (1.0, 2.0))] == [1, 2, 3, 3]
    assert model_special_ids(tok) == {"pad_id": 0, "image_area_id": 1, "boi": 2, "eoi": 3,
                                      "image_placeholder_id": 4}
    assert token_grid((512, 256), 16) == (32, 16)


def test_errors_name_the_argument_value_and_fix(tok):
    src = torch.randn(1, 1, 1, 64)
    with pytest.raises(ValueError, match=r"captions\[0\] holds '<image>' but no source image was given"):
        build_prompts(tok, ["<image>make it blue"], (1, 1))
    with pytest.raises(ValueError, match=r"holds no '<image>' tag but a source image was given.*'<image>make"):
        build_prompts(tok, ["make it blue"], (1, 1), sources=src)
    with pytest.raises(ValueError, match=r"captions\[0\] holds 2 '<image>' tags"):
        build_prompts(tok, ["<image><image>x"], (1, 1), sources=src)
    with pytest.raises(ValueError, match=r"cfg_img = 2.0 needs an input image.*set cfg_img=1.0"):
        build_prompts(tok, ["a red circle"], (1, 1), cfg=3.0, cfg_img=2.0)
    with pytest.raises(ValueError, match=r"got 1 source images for 2 captions"):
        build_prompts(tok, ["<image>a", "<image>b"], (1, 1), sources=src)
    with pytest.raises(ValueError, match=r"hw = \(100, 64\): H = 100 is not divisible by 16.*e\.g\. 96"):
        token_grid((100, 64), 16)
    with pytest.raises(ValueError, match=r"W = 0 must be an int >= 1"):
        token_grid((64, 0), 16)
    with pytest.raises(ValueError, match=r"cfg = nan must be a finite number"):
        build_prompts(tok, ["a"], (1, 1), cfg=float("nan"))
    with pytest.raises(ValueError, match=r"num_images_per_caption = 0"):
        build_prompts(tok, ["a"], (1, 1), num_images_per_caption=0)
    with pytest.raises(TypeError, match=r"captions must be a non-empty list of strings"):
        build_prompts(tok, "a red circle", (1, 1))
    plain = BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextflow())
    with pytest.raises(ValueError, match=r"names no image_area token.*SpecialTokens.nextstep1\(\)"):
        model_special_ids(plain)

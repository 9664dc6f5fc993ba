import pytest
import torch

from nxcore.head import LinearHead, SplitHead
from nxrecipes.nextflow import Example, Image, NextFlowConfig, Text, collate, nextflow_7b, separate_heads


def example(world, codes, index, prompt="a red circle", **kw):
    return Example([Text(world.ids(prompt), loss=False), Image.of([c[index] for c in codes], world.schedule),
                    Text([world.vocab.special_id("<eos>")])], **kw)


@pytest.mark.parametrize("extended", [False, True])
def test_padded_rows_give_the_hidden_states_of_each_row_alone(world, extended):
    model = world.extended_model() if extended else world.model()
    codes = world.codes(2)
    long = example(world, codes, 0, "a big blue square on the left of a small circle")
    short = example(world, codes, 1)
    with torch.no_grad():
        both = model(collate([long, short], world.vocab))
        alone = [model(collate([e], world.vocab))[0] for e in (long, short)]
    for b, h in enumerate(alone):
        torch.testing.assert_close(both[b, : h.shape[0]], h, atol=2e-5, rtol=1e-4)


def test_block_path_equals_the_dense_mask_path(world):
    model = world.model()
    batch = collate([example(world, world.codes(1), 0)] * 2, world.vocab)
    seq = batch.ids.shape[1]
    with torch.no_grad():
        x = model.embed(batch.ids, batch.layouts, batch.images)
        pos = model.positions(batch.layouts, seq)
        blocks = model.run_layers(x, pos, **model.attention(batch.layouts, seq))
        dense = model.run_layers(x, pos, **model.attention(batch.layouts, seq, dense=True))
    assert "blocks" in model.attention(batch.layouts, seq)
    torch.testing.assert_close(blocks, dense, atol=2e-5, rtol=1e-4)


def test_grid_positions_tell_apart_the_cells_that_share_an_upsampled_input(world):
    codes = world.codes(1)
    batch = collate([example(world, codes, 0)], world.vocab)
    (span,) = batch.layouts[0].images
    two_by_two = slice(span.start + 1, span.start + 5)  # step 1: its input is the 1x1 code, up-sampled
    model = world.model(grid_positions=True)
    inputs = {}
    with torch.no_grad():
        inputs[True] = model.embed(batch.ids, batch.layouts, batch.images)[0]
        model.grid_position = None
        inputs[False] = model.embed(batch.ids, batch.layouts, batch.images)[0]
    plain, placed = inputs[False][two_by_two], inputs[True][two_by_two]
    assert torch.allclose(plain, plain[:1].expand_as(plain))
    assert float(torch.cdist(placed, placed).add(torch.eye(4) * 1e9).min()) > 1e-3
    text = torch.ones(batch.ids.shape[1], dtype=torch.bool)
    text[span.start : span.end] = False
    torch.testing.assert_close(inputs[True][text], inputs[False][text])


def test_the_refiner_moves_each_image_scale_on_its_own_grid_and_leaves_text_alone(world):
    model = world.extended_model()
    codes = world.codes(2)
    batch = collate([example(world, codes, 0), example(world, codes, 1, "a big blue square")], world.vocab)
    seq = batch.ids.shape[1]
    with torch.no_grad():
        x = model.embed(batch.ids, batch.layouts, batch.images)
        plain = model.run_layers(x, model.positions(batch.layouts, seq), **model.attention(batch.layouts, seq))
        refined = model(batch)
    expected = plain.clone()
    for b, layout in enumerate(batch.layouts):
        (span,) = layout.images
        start = span.start
        for h, w in world.schedule.steps:
            expected[b, start : start + h * w] = model.refine_step(plain[b : b + 1, start : start + h * w], h, w)
            start += h * w
    torch.testing.assert_close(refined, expected)
    image = torch.zeros(seq, dtype=torch.bool)
    image[span.start : span.end] = True
    assert torch.equal(refined[1, ~image], plain[1, ~image])
    assert not torch.allclose(refined[1, image], plain[1, image])


@pytest.mark.parametrize("mode", ["residual", "accumulated"])
def test_code_embeddings_start_as_the_projected_tokenizer_inputs(world, mode):
    model = world.model(inputs=mode)
    projection = model.init_code_embeddings(world.image, generator=torch.Generator().manual_seed(0))
    codes = world.codes(3)
    ours = model.image_inputs(codes, world.schedule)
    theirs = world.image.next_scale_inputs(codes, world.schedule, mode=mode)
    scale = model.code_embeddings.square().mean().sqrt() / (
        world.image.embed_codes(torch.arange(world.image.codebook_size)[:, None, None], 0)[:, :, 0, 0] @ projection
    ).square().mean().sqrt()
    for a, b in zip(ours, theirs, strict=True):
        want = torch.einsum("nchw,cd->ndhw", b, projection) * scale
        torch.testing.assert_close(a, want, atol=1e-5, rtol=1e-4)


def test_residual_and_accumulated_inputs_differ_after_the_first_step(world):
    codes = world.codes(2)
    res = world.model(inputs="residual").image_inputs(codes, world.schedule)
    acc = world.model(inputs="accumulated").image_inputs(codes, world.schedule)
    assert not torch.allclose(res[1], acc[1])


@pytest.mark.parametrize("mode", ["residual", "accumulated"])
def test_step_input_is_the_last_of_the_image_inputs(world, mode):
    model = world.model(inputs=mode)
    codes = world.codes(2, seed=3)
    for k in range(1, world.schedule.num_steps):
        torch.testing.assert_close(model.step_input(codes[:k], world.schedule),
                                   model.image_inputs(codes[:k], world.schedule)[-1])


def test_code_logits_are_the_code_columns_of_the_logits(world):
    model = world.model()
    hidden = torch.randn(2, 3, model.dim, generator=torch.Generator().manual_seed(0))
    lo, hi = world.vocab.code_range
    torch.testing.assert_close(model.code_logits(hidden), model.logits(hidden)[..., lo:hi])


def test_loss_trains_and_reports_per_scale_metrics(world):
    model = world.model().train()
    batch = collate([example(world, world.codes(2), i) for i in range(2)], world.vocab)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss, metrics = model.loss(batch, detail=True, per_scale=True)
        optim.zero_grad()
        loss.backward()
        optim.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    assert {"loss/text", "loss/image", "loss/scale_0", "loss/scale_2", "tokens"} <= set(metrics)
    # every parameter that takes part receives a gradient: embeddings, layers, head
    assert model.embed_tokens.weight.grad is not None and model.scale_embed.embed.weight.grad is not None


def test_the_loss_is_also_the_forward_with_loss(world):
    # what a DDP / FSDP wrapper calls: the loss computed inside forward
    model = world.model()
    batch = collate([example(world, world.codes(1), 0)], world.vocab)
    a, _ = model.loss(batch)
    b, metrics = model(batch, with_loss=True, detail=True)
    torch.testing.assert_close(a, b)
    assert "loss/image" in metrics


def test_separate_heads_is_one_config_change(world):
    shared = world.model()
    split = world.model(head=separate_heads(world.config()).head)
    assert isinstance(shared.head, LinearHead) and isinstance(split.head, SplitHead)
    assert split.head.range_sizes[:2] == (world.vocab.text_size, world.vocab.codebook_size)
    loss, _ = split.loss(collate([example(world, world.codes(1), 0)], world.vocab))
    assert torch.isfinite(loss)


def test_sampling_nll_is_the_split_heads_own_loss(world):
    # a code competes with codes only: for separate heads that is exactly their training loss
    split = world.model(head=separate_heads(world.config()).head)
    batch = collate([example(world, world.codes(1), 0)], world.vocab)
    with torch.no_grad():
        hidden = split(batch)
    rows = batch.targets != -100
    nll = split.sampling_nll(hidden[rows], batch.targets[rows])
    torch.testing.assert_close(nll.mean(), split.head.loss(hidden[rows], batch.targets[rows]))


def test_config_round_trips_through_json(world):
    cfg = separate_heads(world.config(inputs="accumulated"))
    assert NextFlowConfig.from_json(cfg.to_json()) == cfg


def test_nextflow_7b_has_the_qwen25_vl_7b_decoder():
    cfg = nextflow_7b()
    layer = cfg.layer
    assert (cfg.num_layers, layer.dim, layer.num_heads, layer.num_kv_heads, layer.hidden) == (28, 3584, 28, 4, 18944)
    assert cfg.vocabulary.padded_size == 152064 + 16384
    with torch.device("meta"):  # shapes only, no 7B allocation
        model = cfg.build()
    # Qwen2.5-7B has 7.61B parameters (untied embeddings); the codes add an input and an output row each
    assert model.num_parameters() == pytest.approx(7.61e9 + 2 * 16384 * 3584 + 3584 * 3584, rel=0.002)


def test_bad_configs(world):
    with pytest.raises(ValueError, match="NextFlowConfig.head covers 12 ids but the vocabulary has padded_size"):
        world.config(head=separate_heads(world.config()).head.replace(range_sizes=(6, 6)))
    with pytest.raises(ValueError, match="inputs"):
        world.config(inputs="summed")
    with pytest.raises(TypeError, match="batch must be a nextflow Batch"):
        world.model()("tokens")

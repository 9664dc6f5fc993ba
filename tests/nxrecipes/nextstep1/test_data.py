"""NextStep-1 rows: the official template for t2i and edit, which image carries the loss, CFG
dropout, right-padded collation, the autoencoder's latents, the per-index cache, bad inputs."""

import pytest
import torch

from nxcore.tokenizer import BPETokenizer, SpecialTokens
from nxcore.tokenizer.autoencoder import NextStepAutoencoder, autoencoder_tiny
from nxrecipes.data.shapeworld import ShapeWorld
from nxrecipes.data.shapeworld.corpus import text_corpus
from nxrecipes.nextstep1 import nextstep1_tiny
from nxrecipes.nextstep1.data import NEXTSTEP1_SPECIALS, RowBuilder
from nxrecipes.nextstep1.train import NextStep1Batches
from nxrecipes.tokenizer.data import to_model

SIZE = 32  # ShapeWorld's smallest; the tiny autoencoder's downsample 8 makes it a 4 x 4 grid


@pytest.fixture(scope="module")
def text():
    return BPETokenizer.train(text_corpus(20), 300, special_tokens=NEXTSTEP1_SPECIALS)


@pytest.fixture(scope="module")
def ae():
    torch.manual_seed(0)
    return NextStepAutoencoder(autoencoder_tiny(ch_mult=(1, 2, 2))).eval()  # latent_dim 16, downsample 8


@pytest.fixture(scope="module")
def records():
    world = ShapeWorld(size=SIZE, tasks=("t2i", "edit"), length=40, seed=0)
    t2i = [r for r in world if r.task == "t2i"][:2]
    edit = [r for r in world if r.task == "edit"][:2]
    return t2i, edit


def builder(text, ae, **changes):
    return RowBuilder(text=text, image_tokenizer=ae, **changes)


def test_rows_follow_the_official_template(text, ae, records):
    b = builder(text, ae, drop_text_prob=0.0)
    (t2i, _), (edit, _) = records
    image = text.encode(NEXTSTEP1_SPECIALS.image_string(4, 4))
    assert b.image_ids(4, 4) == image  # the string tokenises to the ids the builder writes
    assert image[0] == text.special_id("<|image_area|>") and image[-1] == text.special_id("<|end_of_image|>")

    batch = b.build([t2i, edit], [0, 1])
    rows = [batch.ids[i][batch.attention_mask[i]].tolist() for i in range(2)]
    assert rows[0] == text.encode(t2i.prompt) + image
    assert rows[1] == image + text.encode(edit.instruction) + image
    assert batch.tasks == ("t2i", "edit")
    # right padding with [PAD]
    assert batch.attention_mask[0].tolist() == [True] * len(rows[0]) + [False] * (len(rows[1]) - len(rows[0]))
    assert (batch.ids[0, len(rows[0]):] == text.special_id("[PAD]")).all()

    # latents in row-major placeholder order: t2i target, edit source, edit target
    expect = [ae.encode(to_model(im)[None]).flatten(1, 2)[0]
              for im in (t2i.image, edit.source_image, edit.target_image)]
    assert torch.allclose(batch.latents, torch.cat(expect), atol=1e-4)  # batched vs one by one
    assert batch.latents.shape == (48, ae.latent_dim)
    assert int((batch.ids == text.special_id("<|image_placeholder|>")).sum()) == 48
    assert batch.image_weights.tolist() == [1.0] * 16 + [0.0] * 16 + [1.0] * 16  # the source is input only


def test_a_model_takes_the_batch_and_the_source_carries_no_image_loss(text, ae, records):
    (t2i, _), (edit, _) = records
    batch = builder(text, ae, drop_text_prob=0.0).build([t2i, edit], [0, 1])
    specials = {name: text.special_id(getattr(NEXTSTEP1_SPECIALS, role)) for name, role in (
        ("pad_id", "pad"), ("image_area_id", "image_area"), ("boi", "boi"), ("eoi", "eoi"),
        ("image_placeholder_id", "image_placeholder"))}
    torch.manual_seed(0)
    model = nextstep1_tiny(num_layers=1, vocab_size=text.vocab_size, latent_dim=16, **specials).build()
    with torch.no_grad():
        for p in model.image_head.parameters():
            p.add_(0.05 * torch.randn(p.shape))

    def loss(targets):
        return model.loss(batch.ids, batch.latents, targets=targets, attention_mask=batch.attention_mask,
                          image_weights=batch.image_weights, generator=torch.Generator().manual_seed(0))

    base = loss(batch.latents)
    assert base.image_tokens == 48 and base.text_tokens > 0 and torch.isfinite(base.total)
    moved = batch.latents.clone()
    moved[16:32] += 10.0  # the source's targets: weight 0, so the loss does not see them
    assert torch.equal(loss(moved).image, base.image)
    moved[32:] += 10.0
    assert not torch.equal(loss(moved).image, base.image)


def test_cfg_dropout_empties_the_text_and_optionally_the_source(text, ae, records):
    (t2i, _), (edit, _) = records
    image = text.encode(NEXTSTEP1_SPECIALS.image_string(4, 4))
    batch = builder(text, ae, drop_text_prob=1.0).build([t2i, edit], [0, 1])
    assert batch.ids[0][batch.attention_mask[0]].tolist() == image
    assert batch.ids[1][batch.attention_mask[1]].tolist() == image + image
    batch = builder(text, ae, drop_image_prob=1.0).build([edit], [0])
    assert batch.ids[0].tolist() == image and batch.image_weights.tolist() == [1.0] * 16

    b = builder(text, ae, drop_text_prob=0.3, seed=3)
    coins = [b.coins(i, epoch) for epoch in (0, 1) for i in range(400)]
    assert coins == [b.coins(i, epoch) for epoch in (0, 1) for i in range(400)]  # deterministic
    rate = sum(drop for drop, _ in coins) / len(coins)
    assert 0.25 < rate < 0.35 and coins[:400] != coins[400:]  # epochs draw fresh coins


def test_input_noise_perturbs_only_the_target_image_inputs_and_keeps_clean_targets(text, ae, records):
    (t2i, _), (edit, _) = records
    clean = builder(text, ae, drop_text_prob=0.0).build([t2i, edit], [0, 1])
    assert clean.targets is None  # off by default: the targets are the inputs
    b = builder(text, ae, drop_text_prob=0.0, input_noise=0.5, seed=2)
    noisy = b.build([t2i, edit], [0, 1])
    assert torch.equal(noisy.ids, clean.ids) and torch.equal(noisy.targets, clean.latents)
    moved = (noisy.latents - clean.latents).norm(dim=1)
    assert (moved[:16] > 0).all() and (moved[32:] > 0).all()  # the two target images
    assert torch.equal(noisy.latents[16:32], clean.latents[16:32])  # the edit's source is read clean
    # sigma ~ U[0, 0.5] per token: the per-token RMS spans that range and stays within it (up to chance)
    per_token = (noisy.latents - clean.latents).pow(2).mean(dim=1).sqrt()[noisy.image_weights > 0]
    assert per_token.max() < 0.5 * 1.6 and per_token.min() < 0.2 and per_token.max() > 0.3, per_token
    again = b.build([t2i, edit], [0, 1])
    assert torch.equal(again.latents, noisy.latents)  # deterministic per (seed, epoch, index)
    assert not torch.equal(b.build([t2i, edit], [0, 1], epoch=1).latents, noisy.latents)
    assert not torch.equal(b.build([t2i, edit], [5, 1]).latents[:16], noisy.latents[:16])
    with pytest.raises(ValueError, match="input_noise"):
        builder(text, ae, input_noise=-0.1)


def test_the_cache_gives_the_same_batches_without_rendering_again(text, ae):
    class Counting(list):
        reads = 0

        def __getitem__(self, i):
            Counting.reads += 1
            return super().__getitem__(i)

    world = Counting(ShapeWorld(size=SIZE, tasks=("t2i", "edit"), length=4, seed=1))
    b = builder(text, ae, drop_text_prob=0.5)
    plain = NextStep1Batches(world, b, 2, seed=0)
    cached = NextStep1Batches(world, b, 2, seed=0, cache=True)
    for _ in range(4):  # two epochs
        x, y = plain.next_batch(), cached.next_batch()
        assert torch.equal(x.ids, y.ids) and torch.equal(x.latents, y.latents)
    Counting.reads = 0
    for _ in range(2):
        cached.next_batch()
    assert Counting.reads == 0
    state = plain.state_dict()
    again = NextStep1Batches(world, b, 2, seed=0)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch().ids, plain.next_batch().ids)


def test_bad_inputs_are_named(text, ae, records):
    plain = BPETokenizer.train(text_corpus(5), 300, special_tokens=SpecialTokens.nextflow())
    with pytest.raises(ValueError, match="lacks the special tokens"):
        builder(plain, ae)
    with pytest.raises(TypeError, match="continuous image tokenizer"):
        builder(text, torch.nn.Linear(2, 2))
    b = builder(text, ae)
    caption = ShapeWorld(size=SIZE, tasks=("captioning",), length=1)[0]
    with pytest.raises(ValueError, match="no NextStep-1 row for task 'captioning'"):
        b.build([caption], [0])
    (t2i, _), _ = records
    with pytest.raises(ValueError, match="not multiples of the tokenizer's downsample 8"):
        b.encode([t2i.image.resize((36, 36))])
    with pytest.raises(ValueError, match="different sizes"):
        b.encode([t2i.image, t2i.image.resize((40, 40))])
    with pytest.raises(ValueError, match="one index per record"):
        b.build([t2i], [0, 1])

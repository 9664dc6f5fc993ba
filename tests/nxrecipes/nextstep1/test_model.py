"""NextStep1: official parameter names, placeholder embeddings, teacher-forced = KV-cached hidden
states (left padding, image tokens), the weighted text + image loss and its targets, bad inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from nxrecipes.nextstep1 import NextStep1, NextStep1Loss, nextstep1_tiny
from nxrecipes.nextstep1.model import sincos_2d

CFG = nextstep1_tiny(num_layers=2)
P, BOI, EOI, PAD, AREA = CFG.image_placeholder_id, CFG.boi, CFG.eoi, CFG.pad_id, CFG.image_area_id


def model(**changes) -> NextStep1:
    torch.manual_seed(0)
    m = CFG.replace(**changes).build().eval()
    with torch.no_grad():  # a trained-looking head: its zero-initialised output layers would hide bugs
        for p in m.image_head.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return m


def batch():
    """Two rows, the second left-padded, each with an image of 3 tokens (6 placeholders in all)."""
    ids = torch.tensor([
        [5, 6, 7, AREA, 11, BOI, P, P, P, EOI, 9],
        [PAD, PAD, PAD, 8, AREA, BOI, P, P, P, EOI, 10],
    ])
    mask = ids != PAD
    latents = torch.randn(6, 64, generator=torch.Generator().manual_seed(0))
    return ids, latents, mask


def official_keys(num_layers: int, head_depth: int, *, lm_head: bool = True) -> set[str]:
    """Fact sheet §5: the checkpoint's keys, no ``model.`` prefix."""
    keys = {"embed_tokens.weight", "norm.weight", "image_in_projector.weight", "image_in_projector.bias",
            "image_out_projector.weight", "image_out_projector.bias"}
    if lm_head:
        keys.add("lm_head.weight")
    for n in range(num_layers):
        keys |= {f"layers.{n}.self_attn.{p}.{s}" for p in ("q_proj", "k_proj", "v_proj") for s in ("weight", "bias")}
        keys |= {f"layers.{n}.self_attn.o_proj.weight"}
        keys |= {f"layers.{n}.mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
        keys |= {f"layers.{n}.{p}.weight" for p in ("input_layernorm", "post_attention_layernorm")}
    head = ["net.input_proj", "net.cond_embed", "net.time_embed.mlp.0", "net.time_embed.mlp.2",
            "net.final_layer.linear", "net.final_layer.adaLN_modulation.1"]
    for i in range(head_depth):
        head += [f"net.res_blocks.{i}.{m}" for m in ("in_ln", "mlp.0", "mlp.2", "adaLN_modulation.1")]
    keys |= {f"image_head.{k}.{s}" for k in head for s in ("weight", "bias")}
    return keys


def test_state_dict_keys_are_the_official_checkpoint_keys():
    m = model()
    assert set(m.state_dict()) == official_keys(2, 3)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["image_in_projector.weight"] == (128, 64) and shapes["image_out_projector.weight"] == (128, 128)
    assert shapes["layers.1.self_attn.k_proj.weight"] == (64, 128) and shapes["lm_head.weight"] == (1032, 128)
    tied = model(tie_word_embeddings=True)
    assert set(tied.state_dict()) == official_keys(2, 3, lm_head=False)
    h = torch.randn(3, 128)
    torch.testing.assert_close(tied.logits(h), h @ tied.embed_tokens.weight.T)
    pos = model(use_gen_pos_embed=True, gen_pos_grid=4).state_dict()
    assert set(pos) == official_keys(2, 3) | {"gen_pos_embed"} and pos["gen_pos_embed"].shape == (1, 16, 128)


def test_backbone_init_is_qwen2s_and_the_head_keeps_its_own():
    torch.manual_seed(0)
    m = CFG.build()
    for p in (m.embed_tokens.weight, m.layers[0].self_attn.q_proj.weight, m.image_out_projector.weight):
        assert abs(p.std().item() - 0.02) < 0.002
    assert m.layers[0].self_attn.q_proj.bias.abs().max() == 0 and m.image_in_projector.bias.abs().max() == 0
    assert m.image_head.net.final_layer.linear.weight.abs().max() == 0  # zero output layer: not re-initialised
    assert abs(m.image_head.net.time_embed.mlp[0].weight.std().item() - 0.02) < 0.003


def test_placeholders_carry_the_projected_latents_in_row_major_order():
    m = model()
    ids, latents, _ = batch()
    with torch.no_grad():
        x = m.embed(ids, latents)
        images = ids == P
        torch.testing.assert_close(x[images], m.image_in_projector(latents))
        torch.testing.assert_close(x[~images], m.embed_tokens(ids[~images]))


def test_teacher_forced_hidden_states_equal_kv_cached_steps():
    m = model()
    ids, latents, mask = batch()
    order = torch.zeros_like(ids)
    images = ids == P
    order[images] = torch.arange(int(images.sum()))

    def lat(cols):  # the latents of the placeholders in ids[:, cols], row-major
        sel = images[:, cols]
        return latents[order[:, cols][sel]] if sel.any() else None

    with torch.no_grad():
        full = m(ids, latents, attention_mask=mask)
        caches = m.new_caches(2, ids.shape[1])
        parts = [m(ids[:, :4], lat(slice(0, 4)), attention_mask=mask[:, :4], caches=caches)]
        for p in range(4, ids.shape[1]):
            parts.append(m(ids[:, p : p + 1], lat(slice(p, p + 1)), attention_mask=mask[:, : p + 1], caches=caches))
    assert caches[0].length == ids.shape[1]
    stepped = torch.cat(parts, dim=1)
    assert (full - stepped).abs().max() <= 1e-5


def test_positions_run_over_the_padded_sequence_and_only_their_differences_matter():
    m = model()
    ids, latents, mask = batch()
    with torch.no_grad():
        default = m(ids, latents, attention_mask=mask)
        explicit = m(ids, latents, attention_mask=mask, positions=torch.arange(ids.shape[1]))
        from_mask = (mask.long().cumsum(1) - 1).clamp_min(0)  # what HF would derive; upstream does not
        shifted = m(ids, latents, attention_mask=mask, positions=from_mask)
        stretched = m(ids, latents, attention_mask=mask, positions=2 * torch.arange(ids.shape[1]))
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    # RoPE is relative and padding keys are masked: the upstream quirk changes no real token's state
    torch.testing.assert_close(default[mask], shifted[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(default[mask], stretched[mask], atol=1e-3)


def test_a_padded_row_gives_the_hidden_states_of_the_row_alone_at_its_positions():
    m = model()
    ids, latents, mask = batch()
    with torch.no_grad():
        both = m(ids, latents, attention_mask=mask)
        alone = m(ids[1:, 3:], latents[3:], positions=torch.arange(3, ids.shape[1]))
    torch.testing.assert_close(both[1, 3:], alone[0], atol=1e-5, rtol=1e-5)


def test_loss_combines_weighted_text_cross_entropy_and_flow_matching():
    m = model()
    m.train()
    ids, latents, mask = batch()
    out = m.loss(ids, latents, attention_mask=mask, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, NextStep1Loss)
    assert all(torch.isfinite(t) for t in (out.total, out.text, out.image))
    torch.testing.assert_close(out.total, 0.01 * out.text + 1.0 * out.image)
    # text targets: next ids that are neither placeholders nor padding, from non-padding positions
    assert out.text_tokens == 7 + 4 and out.image_tokens == 6
    out.total.backward()
    for p in (m.embed_tokens.weight, m.layers[0].self_attn.q_proj.weight, m.lm_head.weight,
              m.image_in_projector.weight, m.image_out_projector.weight, m.image_head.net.input_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_loss_parts_are_the_cross_entropy_and_the_head_loss_of_the_preceding_positions():
    m = model(lm_loss_weight=0.5, image_loss_weight=2.0)
    ids, latents, mask = batch()
    with torch.no_grad():
        out = m.loss(ids, latents, attention_mask=mask, generator=torch.Generator().manual_seed(3))
        hidden = m(ids, latents, attention_mask=mask)
        logits = m.logits(hidden[:, :-1])
        target = ids[:, 1:]
        keep = (target != P) & mask[:, 1:] & mask[:, :-1]
        text = F.cross_entropy(logits[keep], target[keep])
        before = torch.zeros_like(ids, dtype=torch.bool)
        before[:, :-1] = ids[:, 1:] == P  # the position preceding every image token (boi for the first)
        assert (ids[before] == BOI).sum() == 2
        cond = m.condition(hidden[before])
        image = m.image_head.loss(cond, latents, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.text, text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image, image)
    torch.testing.assert_close(out.total, 0.5 * text + 2.0 * image, atol=1e-5, rtol=1e-5)


def test_labels_targets_and_image_weights_reach_the_losses():
    m = model()
    ids, latents, mask = batch()
    labels = ids.clone()
    labels[0, :5] = -100
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        base = m.loss(ids, latents, attention_mask=mask, generator=gen())
        fewer = m.loss(ids, latents, attention_mask=mask, labels=labels, generator=gen())
        other = m.loss(ids, latents, targets=latents + 1, attention_mask=mask, generator=gen())
        weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
        half = m.loss(ids, latents, attention_mask=mask, image_weights=weights, generator=gen())
    assert fewer.text_tokens == base.text_tokens - 4 and fewer.text != base.text
    assert other.image != base.image and half.image != base.image


def test_text_only_batches_have_a_zero_image_loss():
    m = model()
    out = m.loss(torch.tensor([[1, 2, 3, 4]]))
    assert out.image.item() == 0.0 and out.image_tokens == 0 and out.text_tokens == 3
    out.total.backward()


def test_gen_pos_embed_is_mae_2d_sincos_added_before_the_projector():
    table = sincos_2d(8, 3)  # dim/4 = 2 frequencies: 1 and 1/100
    k = 5  # row 1, col 2
    want = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
            math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    torch.testing.assert_close(table[k], torch.tensor(want))
    m = model(use_gen_pos_embed=True, gen_pos_grid=4)
    h = torch.randn(2, 128)
    index = torch.tensor([0, 7])
    torch.testing.assert_close(m.condition(h, index), m.image_out_projector(h + m.gen_pos_embed[0, index]))
    ids, latents, mask = batch()
    with torch.no_grad():
        out = m.loss(ids, latents, attention_mask=mask, generator=torch.Generator().manual_seed(0))
        hidden = m(ids, latents, attention_mask=mask)
        before = torch.zeros_like(ids, dtype=torch.bool)
        before[:, :-1] = ids[:, 1:] == P
        cond = m.condition(hidden[before], torch.tensor([0, 1, 2, 0, 1, 2]))
        want = m.image_head.loss(cond, latents, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.image, want)
    with pytest.raises(ValueError, match="use_gen_pos_embed is on: pass index"):
        m.condition(h)


def _bad(name):
    m = model()
    ids, latents, mask = batch()
    caches = m.new_caches(2, 20)
    return {
        "count": lambda: m(ids, latents[:5]),
        "none": lambda: m(ids),
        "width": lambda: m(ids, torch.randn(6, 16)),
        "ids range": lambda: m(torch.tensor([[1, 5000]])),
        "ids dtype": lambda: m(ids.float()),
        "mask shape": lambda: m(ids, latents, attention_mask=mask[:, :5]),
        "mask dtype": lambda: m(ids, latents, attention_mask=mask.long()),
        "cache batch": lambda: m(ids[:1, :3], caches=caches),
        "caches": lambda: m(ids[:, :3], caches=caches[:1]),
        "positions": lambda: m(ids, latents, positions=torch.arange(4)),
        "image first": lambda: m.loss(torch.tensor([[P, EOI]]), torch.randn(1, 64)),
        "labels": lambda: m.loss(ids, latents, labels=ids + 2000),
        "too long": lambda: m.new_caches(1, 5000),
        "config": lambda: NextStep1(object()),
    }[name]


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("count", ValueError, r"latents has 5 tokens but ids holds 6 image placeholders \(id 1028\)"),
        ("none", ValueError, r"ids holds 6 image placeholders.*latents is None"),
        ("width", ValueError, r"latents has width 16 but the model reads latent_dim = 64"),
        ("ids range", ValueError, r"ids holds values in \[1, 5000\] but the vocabulary is \[0, 1032\)"),
        ("ids dtype", TypeError, r"ids must have an integer dtype"),
        ("mask shape", ValueError, r"attention_mask has shape \(2, 5\) but must be \[batch, kv\] = \[2, 11\]"),
        ("mask dtype", TypeError, r"attention_mask must have dtype torch.bool"),
        ("cache batch", ValueError, r"the caches hold batch = 2 rows but x has 1"),
        ("caches", TypeError, r"caches must be a list of 2 KVCache"),
        ("positions", ValueError, r"positions has shape \(4,\); pass \[seq\] = \[11\]"),
        ("image first", ValueError, r"image placeholder sits at position 0"),
        ("labels", ValueError, r"labels contains \d+, outside \[0, 1032\)"),
        ("too long", ValueError, r"max_len = 5000 exceeds the model's max_seq_len = 4096"),
        ("config", TypeError, r"config must be a NextStep1Config, got object"),
    ],
)
def test_bad_inputs_name_the_argument(name, error, message):
    call = _bad(name)
    with pytest.raises(error, match=message):
        call()

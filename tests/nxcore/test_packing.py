import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.packing import PackedLayout
from nxcore.schedule import Schedule
from nxcore.testing import strategies as nxst


@st.composite
def packed_layouts(draw, max_samples: int = 4, max_padding: int = 5) -> PackedLayout:
    layouts = draw(st.lists(nxst.layouts(max_segments=3), min_size=1, max_size=max_samples))
    row = PackedLayout(tuple(layouts))
    return row.pad_to(row.content_length + draw(st.integers(0, max_padding)))


def _brute_force_mask(row: PackedLayout) -> torch.Tensor:
    """Block-diagonal: each sample's own mask on its diagonal block, then a causal padding block."""
    parts = [layout.attention_mask() for layout in row.layouts]
    parts.append(torch.ones(row.padding, row.padding, dtype=torch.bool).tril())
    return torch.block_diag(*parts)


def _mask_from_blocks(row: PackedLayout) -> torch.Tensor:
    blocks = row.attention_blocks()
    n = row.length
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    mask = torch.zeros(n, n, dtype=torch.bool)
    for s, e, c, kv in zip(blocks.starts.tolist(), blocks.ends.tolist(), blocks.causal.tolist(),
                           blocks.kv_starts.tolist(), strict=True):
        rows = (q >= s) & (q < e)
        inside = (k >= s) & ((k <= q) if c else (k < e))
        before = (k >= kv) & (k < s)
        mask |= rows & (inside | before)
    return mask


@given(packed_layouts())
def test_mask_is_block_diagonal_over_the_samples_own_masks(row):
    assert torch.equal(row.attention_mask(), _brute_force_mask(row))


@given(packed_layouts())
def test_kv_range_describes_the_mask(row):
    mask = _brute_force_mask(row)
    start, end = row.kv_start(), row.kv_end()
    keys = torch.arange(row.length)
    for q in range(row.length):
        visible = keys[mask[q]]
        assert int(visible.min()) == int(start[q]) and int(visible.max()) + 1 == int(end[q])
        assert visible.numel() == int(end[q] - start[q])  # contiguous: [kv_start, kv_end)


@given(packed_layouts())
def test_attention_blocks_reproduce_the_mask(row):
    blocks = row.attention_blocks()
    assert blocks.starts[0] == 0 and blocks.ends[-1] == row.length
    assert torch.equal(blocks.starts[1:], blocks.ends[:-1])  # blocks tile the row in order
    assert torch.equal(_mask_from_blocks(row), row.attention_mask())
    doc = row.document()
    for s, e, d in zip(blocks.starts.tolist(), blocks.ends.tolist(), blocks.document.tolist(), strict=True):
        assert torch.all(doc[s:e] == d)


@given(packed_layouts())
def test_blocks_are_each_samples_blocks_shifted(row):
    blocks = row.attention_blocks()
    for i, (layout, offset) in enumerate(zip(row.layouts, row.offsets, strict=True)):
        own = layout.attention_blocks()
        sel = blocks.document == i
        assert torch.equal(blocks.starts[sel], own.starts + offset)
        assert torch.equal(blocks.ends[sel], own.ends + offset)
        assert torch.equal(blocks.causal[sel], own.causal)
        assert torch.all(blocks.kv_starts[sel] == offset)


@given(packed_layouts())
def test_padding_is_isolated_and_no_row_is_empty(row):
    mask = row.attention_mask()
    real = row.document() >= 0
    assert not mask[real][:, ~real].any()  # real tokens never see padding
    assert not mask[~real][:, real].any()  # padding never sees real tokens
    assert mask.any(dim=1).all()  # every query sees at least one key: no NaN softmax
    assert int((~real).sum()) == row.padding


@given(packed_layouts())
def test_offsets_documents_and_boundaries(row):
    assert row.length == sum(layout.length for layout in row.layouts) + row.padding
    assert row.lengths == tuple(layout.length for layout in row.layouts)
    doc = row.document()
    for i, (o, n) in enumerate(zip(row.offsets, row.lengths, strict=True)):
        assert torch.all(doc[o : o + n] == i)
    cu = row.cu_seqlens()
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == row.length
    assert cu.numel() == row.num_samples + 1 + (1 if row.padding else 0)
    assert cu[: row.num_samples].tolist() == list(row.offsets)


@given(packed_layouts(), st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.0, 1.0, 2.5]))
def test_loss_weights_are_the_samples_weights_then_zeros(row, alpha, text_weight):
    w = row.loss_weights(alpha=alpha, text_weight=text_weight)
    expected = torch.cat(
        [layout.loss_weights(alpha=alpha, text_weight=text_weight) for layout in row.layouts]
        + [torch.zeros(row.padding)]
    )
    assert w.shape == (row.length,) and w.dtype == torch.float32
    assert torch.equal(w, expected)
    assert torch.all(w[row.content_length :] == 0)


def _layout(text: int) -> SequenceLayout:
    return SequenceLayout.of(TextSpan(text), DiscreteImage(Schedule(((1, 1), (2, 2)))))


def test_a_small_row_by_hand():
    row = PackedLayout.of(_layout(2), SequenceLayout.of(TextSpan(3))).pad_to(12)
    assert row.offsets == (0, 7) and row.padding == 2 and row.length == 12
    assert row.document().tolist() == [0] * 7 + [1] * 3 + [-1] * 2
    assert row.kv_start().tolist() == [0] * 7 + [7] * 3 + [10] * 2
    assert row.kv_end().tolist() == [1, 2, 3, 7, 7, 7, 7, 8, 9, 10, 11, 12]
    assert row.cu_seqlens().tolist() == [0, 7, 10, 12]


def test_pad_to_repads_and_keeps_samples():
    row = PackedLayout.of(_layout(1), _layout(2))
    assert row.padding == 0 and row.pad_to(row.content_length) == row
    padded = row.pad_to(20)
    assert padded.padding == 20 - row.content_length and padded.layouts == row.layouts
    assert padded.pad_to(15).padding == 15 - row.content_length
    assert hash(padded) == hash(row.pad_to(20))


def test_pad_to_rejects_a_short_length():
    row = PackedLayout.of(_layout(3))
    with pytest.raises(ValueError, match=r"length=5 is shorter than the 8 tokens.*length >= 8"):
        row.pad_to(5)
    with pytest.raises(TypeError, match="length must be an int, got float"):
        row.pad_to(9.0)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="at least one SequenceLayout"):
        PackedLayout(())
    with pytest.raises(TypeError, match=r"layouts\[1\] must be a SequenceLayout, got TextSpan"):
        PackedLayout((_layout(1), TextSpan(2)))
    with pytest.raises(TypeError, match=r"wrap it: PackedLayout\(\(layout,\)\)"):
        PackedLayout(_layout(1))
    with pytest.raises(ValueError, match="padding must be an int >= 0, got -1"):
        PackedLayout((_layout(1),), padding=-1)


def test_devices_are_honoured():
    row = PackedLayout.of(_layout(2)).pad_to(10)
    assert row.attention_blocks("meta").starts.device.type == "meta"
    assert row.kv_end("meta").device.type == "meta"

"""MultiscaleRoPE3D (NextFlow Eq. 1): centres, shared coordinate range, 1D text, relative scores,
section assignment, offset modes."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.layout import ContinuousImage, DiscreteImage, SequenceLayout, TextSpan
from nxcore.position import MultiscaleRoPE3D, RoPE1D, default_sections, image_coordinates
from nxcore.schedule import Schedule
from nxcore.testing import strategies as nxst
from nxcore.testing.check_position import check_rotary_encoder


def raw(enc, schedule):
    """Eq. 1 coordinates of one image, alone in the layout (no offset)."""
    return enc.positions(SequenceLayout.of(DiscreteImage(schedule))).double()


@st.composite
def proportional_schedules(draw):
    """Steps (a m_1, b m_1), ..., (a m_K, b m_K): every step has one aspect ratio a:b."""
    a, b = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ms = sorted(set(draw(st.lists(st.integers(1, 8), min_size=1, max_size=4))))
    return Schedule(steps=tuple((a * m, b * m) for m in ms))


# --- fields --------------------------------------------------------------------------------

def test_defaults_follow_qwen25_vl():
    enc = MultiscaleRoPE3D()
    assert (enc.head_dim, enc.theta, enc.sections, enc.range_factor, enc.image_offset) == (
        128, 1e6, (16, 24, 24), 64.0, "continue")
    assert enc.num_axes == 3


def test_default_sections_scale_proportionally():
    assert default_sections(128) == (16, 24, 24)
    assert default_sections(64) == (8, 12, 12) and default_sections(16) == (2, 3, 3)
    for head_dim in range(2, 514, 2):
        s0, s1, s2 = default_sections(head_dim)
        pairs = head_dim // 2
        assert s0 + s1 + s2 == pairs and s1 == s2 and min(s0, s1) >= 0, head_dim
        assert abs(s1 - 3 * pairs / 8) <= 0.5 and abs(s0 - pairs / 4) <= 1, head_dim
        assert MultiscaleRoPE3D(head_dim=head_dim).sections == (s0, s1, s2)


def test_validation_messages():
    with pytest.raises(ValueError, match=r"sections \(4, 4, 4\) sum to 12 but head_dim 16 has 8"):
        MultiscaleRoPE3D(head_dim=16, sections=(4, 4, 4))
    with pytest.raises(ValueError, match=r"sections must be three ints >= 0"):
        MultiscaleRoPE3D(head_dim=16, sections=(4, 4))
    with pytest.raises(ValueError, match=r"range_factor must be a finite number > 0, got 0"):
        MultiscaleRoPE3D(range_factor=0)
    with pytest.raises(ValueError, match=r"image_offset must be 'continue'.*got 'qwen'"):
        MultiscaleRoPE3D(image_offset="qwen")
    with pytest.raises(ValueError, match=r"head_dim must be an even int >= 2 .*got 10.5"):
        MultiscaleRoPE3D(head_dim=10.5)
    assert MultiscaleRoPE3D(head_dim=16, sections=[8, 0, 0]).sections == (8, 0, 0)


# --- Eq. 1 geometry -------------------------------------------------------------------------

def test_eq1_on_a_small_grid():
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=8.0, image_offset="none")
    pos = raw(enc, Schedule(steps=((1, 1), (2, 4))))
    unit = 8.0 / math.sqrt(8)
    assert pos[0].tolist() == [0.0, 4.0, 4.0]
    expected = [[1.0, (i + 0.5) * unit, (j + 0.5) * unit] for i in range(2) for j in range(4)]
    torch.testing.assert_close(pos[1:], torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)


@given(proportional_schedules(), st.sampled_from([8.0, 64.0, 5.5]))
def test_coarse_positions_are_centres_of_the_regions_they_cover(schedule, c):
    """Token (i, j) of an h x w step covers rows [i H/h, (i+1) H/h) of the final H x W grid; its
    coordinates are the centre of that region in the final grid's coordinates."""
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=c, image_offset="none")
    pos = raw(enc, schedule)
    big_h, big_w = schedule.grid
    unit = c / math.sqrt(big_h * big_w)  # final-grid coordinate of one fine cell
    for s, (h, w) in enumerate(schedule.steps):
        block = pos[schedule.offsets[s]:schedule.offsets[s + 1]]
        i = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
        j = torch.arange(w, dtype=torch.float64).repeat(h)
        centre_r = (i + 0.5) * (big_h / h) * unit
        centre_c = (j + 0.5) * (big_w / w) * unit
        torch.testing.assert_close(block[:, 1], centre_r, rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(block[:, 2], centre_c, rtol=1e-6, atol=1e-5)
        assert bool((block[:, 0] == s).all())
        if big_h % h == 0 and big_w % w == 0:  # the mean of the fine cells it covers
            fine = pos[schedule.offsets[-2]:].reshape(big_h, big_w, 3)
            means = fine.reshape(h, big_h // h, w, big_w // w, 3).mean(dim=(1, 3)).reshape(-1, 3)
            torch.testing.assert_close(block[:, 1:], means[:, 1:], rtol=1e-6, atol=1e-5)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
def test_two_resolutions_of_one_aspect_ratio_share_the_range(a, b, m1, m2):
    """Grids (a m, b m) for two m: every coordinate lies in the same box [0, C sqrt(a/b)] x
    [0, C sqrt(b/a)] (the square [0, C] when a = b) and the cells tile it exactly."""
    c = 16.0
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=c, image_offset="none")
    boxes = []
    for m in (m1, m2):
        h, w = a * m, b * m
        pos = raw(enc, Schedule(steps=((h, w),)))
        half = c / math.sqrt(h * w) / 2  # half a cell
        lo = (pos[:, 1].min() - half, pos[:, 2].min() - half)
        hi = (pos[:, 1].max() + half, pos[:, 2].max() + half)
        boxes.append((*lo, *hi))
        assert [float(v) for v in lo] == pytest.approx([0.0, 0.0], abs=1e-5)
        assert float(pos[:, 1].min()) == pytest.approx(c / (2 * math.sqrt(h * w)), rel=1e-6)
    expected = (0.0, 0.0, c * math.sqrt(a / b), c * math.sqrt(b / a))
    for box in boxes:
        assert [float(v) for v in box] == pytest.approx(expected, rel=1e-6, abs=1e-5)
        if a == b:
            assert box[2] == pytest.approx(c) and box[3] == pytest.approx(c)


def test_16_and_32_square_grids_fill_zero_to_c():
    enc = MultiscaleRoPE3D(head_dim=8, image_offset="none")  # C = 64
    for side in (16, 32):
        pos = raw(enc, Schedule(steps=((side, side),)))[:, 1:]
        assert float(pos.min()) == pytest.approx(32 / side) and float(pos.max()) == pytest.approx(
            64 - 32 / side)
        assert bool(((pos > 0) & (pos < 64)).all())


def test_continuous_image_is_one_scale():
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=6.0, image_offset="none")
    pos = enc.positions(SequenceLayout.of(ContinuousImage(2, 3))).double()
    assert bool((pos[:, 0] == 0).all())
    torch.testing.assert_close(pos, image_coordinates(((2, 3),), 6.0), rtol=1e-6, atol=1e-6)


# --- text and offsets ----------------------------------------------------------------------

@given(st.integers(1, 50), st.sampled_from(["continue", "none"]),
       st.sampled_from([(8, None), (16, (8, 0, 0)), (16, (0, 4, 4)), (128, None)]),
       st.sampled_from([10000.0, 1e6]))
def test_text_only_is_exactly_1d_rope(n, mode, dims, theta):
    head_dim, sections = dims
    enc = MultiscaleRoPE3D(head_dim=head_dim, theta=theta, sections=sections, image_offset=mode)
    layout = SequenceLayout.of(TextSpan(n))
    pos = enc.positions(layout)
    assert torch.equal(pos, torch.arange(n, dtype=torch.float32)[:, None].expand(n, 3))
    x = torch.randn(3, n, head_dim, generator=torch.Generator().manual_seed(n))
    one_d = RoPE1D(head_dim=head_dim, theta=theta)
    assert torch.equal(enc.apply(x, pos), one_d.apply(x, one_d.positions(layout)))


def _expected_positions(layout, c, mode):
    """The documented rule, walked token by token in plain Python."""
    rows, t = [], 0
    for seg in layout.segments:
        if isinstance(seg, TextSpan):
            rows += [[t + n] * 3 for n in range(seg.length)]
            t += seg.length
            continue
        steps = seg.schedule.steps if isinstance(seg, DiscreteImage) else ((seg.h, seg.w),)
        top, t0 = 0.0, t if mode == "continue" else 0
        for s, (h, w) in enumerate(steps):
            unit = c / math.sqrt(h * w)
            for i in range(h):
                for j in range(w):
                    coord = [s, unit * (i + 0.5), unit * (j + 0.5)]
                    top = max(top, *coord)
                    rows.append([t0 + v for v in coord])
        if mode == "continue":
            t = t0 + math.floor(top + 1e-9) + 1
    return torch.tensor(rows, dtype=torch.float64)


@given(nxst.layouts(), st.sampled_from(["continue", "none"]), st.sampled_from([4.0, 7.5, 64.0]))
def test_positions_follow_the_documented_rule(layout, mode, c):
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=c, image_offset=mode)
    pos = enc.positions(layout)
    assert pos.shape == (layout.length, 3) and pos.dtype == torch.float32
    torch.testing.assert_close(pos.double(), _expected_positions(layout, c, mode),
                               rtol=1e-6, atol=1e-4)
    table = layout.tokens()
    text = table.text_index[table.modality == 0].double()
    if mode == "none":
        assert torch.equal(pos[table.modality == 0, 0].double(), text)


def test_text_after_an_image_resumes_one_past_its_largest_coordinate():
    # C = 8, final grid 4 x 4, K = 3: largest coordinate (4 - 0.5) * 8 / 4 = 7, so text resumes
    # at t0 + 8 = t0 + C
    sched = Schedule(steps=((1, 1), (2, 2), (4, 4)))
    layout = SequenceLayout.of(TextSpan(3), DiscreteImage(sched), TextSpan(2),
                               DiscreteImage(sched), ContinuousImage(2, 2), TextSpan(1))
    enc = MultiscaleRoPE3D(head_dim=8, range_factor=8.0)
    pos = enc.positions(layout)
    first = pos[3:3 + sched.total_tokens]
    assert first[0].tolist() == [3.0, 7.0, 7.0]  # the 1 x 1 step: t0 + centre (4, 4)
    assert float(first.min()) == 3.0 and float(first.max()) == 3.0 + 7.0
    after = 3 + sched.total_tokens
    assert pos[after].tolist() == [11.0] * 3 and pos[after + 1].tolist() == [12.0] * 3
    second = pos[after + 2:after + 2 + sched.total_tokens]
    torch.testing.assert_close(second, first + 10.0)  # the same image, 10 positions later
    cont = pos[after + 2 + sched.total_tokens:-1]  # a 2 x 2 continuous image right after: t0 = 21
    assert cont[:, 0].tolist() == [21.0] * 4 and cont[0, 1:].tolist() == [23.0, 23.0]
    assert pos[-1].tolist() == [21.0 + 7.0] * 3  # max coordinate 6 -> resumes at 21 + 7

    none = MultiscaleRoPE3D(head_dim=8, range_factor=8.0, image_offset="none").positions(layout)
    assert none[after].tolist() == [3.0] * 3 and none[-1].tolist() == [5.0] * 3
    torch.testing.assert_close(none[3:3 + sched.total_tokens], first - 3.0)


# --- rotation ------------------------------------------------------------------------------

@given(nxst.layouts(max_segments=3, max_side=4), st.sampled_from(MultiscaleRoPE3D.examples()[:3]))
def test_contract_on_drawn_layouts(layout, enc):
    check_rotary_encoder(enc, layout)


def test_scores_depend_only_on_relative_position_per_axis():
    enc = MultiscaleRoPE3D(head_dim=16, theta=100.0)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 16, generator=gen)
    def score(pq, pk):
        return float((enc.apply(q, torch.tensor([pq])) * enc.apply(k, torch.tensor([pk]))).sum())
    base = score([1.0, 2.5, 3.0], [0.0, 1.0, 0.5])
    assert score([4.0, 2.75, -1.0], [3.0, 1.25, -3.5]) == pytest.approx(base, rel=1e-4, abs=1e-5)
    assert score([2.0, 2.5, 3.0], [0.0, 1.0, 0.5]) != pytest.approx(base, rel=1e-3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_axis_moves_only_its_section(axis):
    enc = MultiscaleRoPE3D(head_dim=16)  # sections (2, 3, 3)
    x = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(axis))
    pos = torch.rand(5, 3, generator=torch.Generator().manual_seed(9)) * 10
    moved = pos.clone()
    moved[:, axis] += 1.7
    changed = (enc.apply(x, pos) - enc.apply(x, moved)).abs().amax(dim=(0, 1)) > 1e-6
    bounds = [0, 2, 5, 8]
    pairs = torch.zeros(8, dtype=torch.bool)
    pairs[bounds[axis]:bounds[axis + 1]] = True
    assert torch.equal(changed, torch.cat((pairs, pairs)))

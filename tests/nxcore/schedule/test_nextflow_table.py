"""NextFlow Table 14 as data, the level cut, ratio lookup and aspect-ratio bucketing."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nxcore.schedule import (
    NEXTFLOW_LEVELS,
    Schedule,
    nearest_nextflow_ratio,
    nextflow_schedule,
    nextflow_schedule_for_size,
)
from nxcore.schedule.nextflow_table import NEXTFLOW_TABLE

RATIOS = [row.ratio for row in NEXTFLOW_TABLE]
BY_RATIO = {row.ratio: row for row in NEXTFLOW_TABLE}

# Rows whose steps end on a grid of another ratio than the one printed (a slip in the paper:
# their steps are the transposes of the 3.111, 2.889 and 2.5 rows), and rows above 1:1 that print
# the transposed resolution of those rows. Pinned so that a silent "fix" of the data shows up.
STEPS_OFF_RATIO = {0.295: (36, 112), 0.311: (36, 104), 0.345: (40, 100)}
RESOLUTION_OFF_RATIO = {2.5: (1856, 640), 2.889: (2001, 624), 3.111: (1984, 592)}


# --- the table itself --------------------------------------------------------------------------

def test_table_has_41_rows_of_18_steps():
    # The caption says "40 aspect ratios"; the paper prints 41 rows: 20 below 1:1, 1:1, 20 above.
    assert len(NEXTFLOW_TABLE) == 41
    assert sum(r < 1 for r in RATIOS) == 20 and sum(r > 1 for r in RATIOS) == 20
    assert all(len(row.steps) == 18 for row in NEXTFLOW_TABLE)


def test_ratios_are_sorted_and_labels_unique():
    assert RATIOS == sorted(RATIOS)
    assert RATIOS[0] == 0.25 and RATIOS[-1] == 4.0
    labels = [row.label for row in NEXTFLOW_TABLE]
    assert len(set(labels)) == len(labels)


def test_every_row_is_a_valid_never_shrinking_schedule_from_1x1():
    for row in NEXTFLOW_TABLE:
        schedule = Schedule(row.steps)  # validates: ints >= 1, never shrinking
        assert schedule.steps[0] == (1, 1), row.label


def test_rows_are_transposes_of_their_reciprocal_rows():
    for row in NEXTFLOW_TABLE:
        transposed = tuple((w, h) for h, w in row.steps)
        mirrors = [other for other in NEXTFLOW_TABLE if other.steps == transposed]
        assert len(mirrors) == 1, row.label
        (mirror,) = mirrors
        # The slipped rows pair 0.295/3.111, 0.311/2.889 and 0.345/2.5 instead of reciprocals.
        slipped = row.ratio in STEPS_OFF_RATIO or mirror.ratio in STEPS_OFF_RATIO
        assert (abs(math.log(row.ratio * mirror.ratio)) < 0.01) != slipped, row.label


def test_row_1_to_1_as_printed():
    row = BY_RATIO[1.0]
    assert row.label == "1:1" and row.resolution == (1024, 1024)
    sides = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)
    assert row.steps == tuple((s, s) for s in sides)


def test_row_1_to_4_as_printed():
    row = BY_RATIO[0.25]
    assert row.label == "1:4" and row.resolution == (512, 2048)
    assert row.steps == (
        (1, 1), (1, 4), (2, 6), (2, 8), (2, 10), (3, 12), (4, 14), (4, 16), (5, 20),
        (6, 24), (7, 28), (8, 32), (10, 40), (12, 48), (14, 56), (16, 64), (24, 96), (32, 128),
    )


def test_odd_printed_labels_and_resolutions_are_kept():
    row = BY_RATIO[0.276]
    assert row.label == "10:36"  # 10/36 = 0.278, printed next to 0.276
    assert row.resolution == (576, 2088)  # 2088 is not a multiple of 16
    assert row.steps[-1] == (32, 116)
    assert BY_RATIO[0.311].resolution == (624, 2001)


def test_final_grid_ratio_matches_printed_ratio():
    # Within 1.2 %: the 0.260 row ends on 32/124 = 0.258 and the 0.781 row on 56/72 = 0.778; the
    # other rows agree to the printed three decimals.
    for row in NEXTFLOW_TABLE:
        h, w = row.steps[-1]
        if row.ratio in STEPS_OFF_RATIO:
            assert (h, w) == STEPS_OFF_RATIO[row.ratio]
            assert abs(math.log(h / w / row.ratio)) > 0.08, row.label
        else:
            assert abs(math.log(h / w / row.ratio)) < 0.012, row.label


def test_printed_resolution_ratio_matches_printed_ratio():
    # Within 1.5 %: 1.286 prints 1270x992 (1.280), 3.875 prints 2080x544 (3.824).
    for row in NEXTFLOW_TABLE:
        height, width = row.resolution
        off = abs(math.log(height / width / row.ratio))
        if row.ratio in RESOLUTION_OFF_RATIO:
            assert row.resolution == RESOLUTION_OFF_RATIO[row.ratio]
            assert off > 0.07, row.label
        else:
            assert off < 0.015, row.label


def test_per_step_area_is_roughly_constant_across_ratios():
    # Areas are compared with the 1:1 row at the same step. Steps 1-8 are tiny integer grids (step
    # 2 is 1x3, 1x4, 2x2 or 2x3), so one rounded side moves the area by up to half: 0.66x..1.5x.
    # From step 9 on every side is >= 5 and the data stays within 12 % (0.88x..1.08x; the paper
    # rounds sides down more often than up, so non-square rows mostly have fewer tokens).
    square = BY_RATIO[1.0].steps
    for k in range(18):
        ref = square[k][0] * square[k][1]
        low, high = (0.66, 1.5) if k < 8 else (0.88, 1.12)
        for row in NEXTFLOW_TABLE:
            h, w = row.steps[k]
            assert low <= h * w / ref <= high, (row.label, k, (h, w))


# --- levels and lookup -------------------------------------------------------------------------

def test_levels_are_prefixes():
    assert NEXTFLOW_LEVELS == {256: 12, 512: 16, 1024: 18}
    for row in NEXTFLOW_TABLE:
        full = nextflow_schedule(row.ratio)
        assert full.steps == row.steps
        assert nextflow_schedule(row.ratio, level=512) == full.truncate(16)
        assert nextflow_schedule(row.ratio, level=256) == full.truncate(12)


def test_square_levels_end_on_level_over_16():
    for level in NEXTFLOW_LEVELS:
        assert nextflow_schedule(1.0, level).grid == (level // 16, level // 16)


def test_square_token_totals():
    # 1+4+9+16+25+36+49+64+100+144+196+256 = 900; + 400+576+784+1024 = 3684; + 2304+4096 = 10084
    assert nextflow_schedule(1.0, 256).total_tokens == 900
    assert nextflow_schedule(1.0, 512).total_tokens == 3684
    assert nextflow_schedule(1.0, 1024).total_tokens == 10084
    assert nextflow_schedule(1.0).offsets[-3:] == (3684, 5988, 10084)


def test_lookup_by_label_and_by_float():
    assert nextflow_schedule("1:4") == nextflow_schedule(0.25)
    assert nextflow_schedule(" 10 : 36 ") == nextflow_schedule(0.276)
    assert nextflow_schedule(0.2765) == nextflow_schedule(0.276)  # within 1e-3
    assert nextflow_schedule(2).grid == (88, 44)
    assert nextflow_schedule("1:4", level=512).grid == (16, 64)


def test_unknown_ratio_names_the_nearest_known_ones():
    with pytest.raises(ValueError, match=r"ratio=0.7 .*nearest known: 0.685 \('13:19'\), 0.722"):
        nextflow_schedule(0.7)
    with pytest.raises(ValueError, match=r"nearest known: 4.0 \('4:1'\)\. "):
        nextflow_schedule(5.0)
    with pytest.raises(ValueError, match=r"ratio='16:9' .*nearest known: 1.75 \('7:4'\), 1.909"):
        nextflow_schedule("16:9")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_or_nan_ratio_is_rejected(bad):
    with pytest.raises(ValueError, match=rf"ratio must be a finite number > 0 .*got {bad}"):
        nextflow_schedule(bad)


@pytest.mark.parametrize("bad", ["square", "1:0", "a:b", "-1:4"])
def test_unparseable_label_is_rejected(bad):
    with pytest.raises(ValueError, match=rf"ratio='{bad}' is not a ratio label; pass a label"):
        nextflow_schedule(bad)


@pytest.mark.parametrize("bad", [None, True, (1, 4)])
def test_ratio_of_wrong_type_is_rejected(bad):
    with pytest.raises(TypeError, match=r"ratio must be a float \(height / width\) or a label"):
        nextflow_schedule(bad)


@pytest.mark.parametrize("bad", [768, 2048, True, "1024"])
def test_unknown_level_lists_the_levels(bad):
    with pytest.raises(ValueError, match=r"level must be one of 256 \(12 steps\), 512 .*, 1024"):
        nextflow_schedule(1.0, level=bad)
    with pytest.raises(ValueError, match=r"level must be one of"):
        nextflow_schedule_for_size(64, 64, level=bad)


# --- bucketing -------------------------------------------------------------------------------

def test_bucketing_is_exact_for_table_ratios():
    for ratio in RATIOS:
        assert nearest_nextflow_ratio(ratio, 1.0) == ratio
        assert nearest_nextflow_ratio(1000 * ratio, 1000) == ratio


def test_bucketing_the_printed_grids_and_resolutions():
    for row in NEXTFLOW_TABLE:
        if row.ratio not in STEPS_OFF_RATIO:
            assert nearest_nextflow_ratio(*row.steps[-1]) == row.ratio, row.label
        if row.ratio not in RESOLUTION_OFF_RATIO:
            assert nearest_nextflow_ratio(*row.resolution) == row.ratio, row.label


def test_bucketing_common_sizes():
    assert nearest_nextflow_ratio(720, 1280) == 0.571  # 16:9 landscape -> 4:7
    assert nearest_nextflow_ratio(1280, 720) == 1.75
    assert nearest_nextflow_ratio(1, 100) == 0.25  # beyond 1:4 -> the end row
    assert nearest_nextflow_ratio(100, 1) == 4.0
    assert nextflow_schedule_for_size(512, 512, level=512) == nextflow_schedule(1.0, 512)
    assert nextflow_schedule_for_size(600, 1800).grid == (36, 108)
    # 0.3 buckets to the printed 0.295 row, whose steps end on 36x112 (ratio 0.321).
    assert nextflow_schedule_for_size(600, 2000).grid == (36, 112)


def test_bucketing_compares_in_log_space():
    # 0.6 and 0.685 are the neighbours of 0.64: linear midpoint 0.6425, log midpoint 0.6411.
    assert nearest_nextflow_ratio(0.642, 1) == 0.685
    assert nearest_nextflow_ratio(0.640, 1) == 0.6


@given(
    st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False),
    st.floats(1e-3, 1e4, allow_nan=False, allow_infinity=False),
)
def test_bucketing_returns_the_nearest_table_ratio(height, width):
    ratio = nearest_nextflow_ratio(height, width)
    assert ratio in BY_RATIO
    distance = abs(math.log(ratio) - math.log(height / width))
    assert all(distance <= abs(math.log(r) - math.log(height / width)) + 1e-12 for r in RATIOS)
    assert nextflow_schedule_for_size(height, width, 512) == nextflow_schedule(ratio, 512)


@pytest.mark.parametrize(
    ("height", "width", "error", "match"),
    [
        (0, 10, ValueError, r"height must be a finite number > 0, got 0"),
        (10, -3, ValueError, r"width must be a finite number > 0, got -3"),
        (float("nan"), 10, ValueError, r"height must be a finite number > 0, got nan"),
        ("10", 10, TypeError, r"height must be a number, got str '10'"),
        (10, None, TypeError, r"width must be a number, got NoneType"),
    ],
)
def test_bucketing_rejects_bad_sizes(height, width, error, match):
    with pytest.raises(error, match=match):
        nearest_nextflow_ratio(height, width)

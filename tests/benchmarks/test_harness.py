import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
harness = pytest.importorskip("harness")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_rss_sees_a_transient_allocation_after_an_earlier_larger_one():
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed before the probe: must not count
    del big
    base = harness.reset_peak_rss()
    t = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched
    del t
    peak = harness.peak_rss_since(base)
    assert 24 < peak < 56, peak

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "packing.py"
STRATEGIES = ("batch_padding", "batch_padding_varlen", "fixed_length", "fixed_compute",
              "fixed_compute_unsorted", "fixed_compute_capped")
FIELDS = ("num_steps", "num_rows", "useful_tokens", "padding_tokens", "time", "busy", "throughput",
          "idle_fraction", "padding_fraction", "speedup", "paper_speedup", "tokens_per_s_per_rank",
          "mean_row_tokens", "max_row_tokens")


def test_quick_benchmark_writes_the_table_and_json(tmp_path):
    out = tmp_path / "packing.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "fixed_compute" in proc.stdout and "3.4x" in proc.stdout and "4.1x" in proc.stdout
    result = json.loads(out.read_text())
    assert result["config"]["quick"] is True and result["config"]["ranks"] == 8
    assert result["config"]["hidden"] == 3584 and result["config"]["layers"] == 28
    assert set(result["mix"]) == {"text", "t2i", "editing", "interleaved"}
    assert sum(m["samples"] for m in result["mix"].values()) == result["config"]["num_samples"]
    s = result["strategies"]
    assert set(s) == set(STRATEGIES)
    for name in STRATEGIES:
        assert all(field in s[name] for field in FIELDS), name
        assert s[name]["useful_tokens"] == result["useful_tokens"]
    assert s["batch_padding"]["speedup"] == 1.0
    assert s["batch_padding"]["paper_speedup"] == 1.0
    assert s["fixed_length"]["paper_speedup"] == 3.4 and s["fixed_compute"]["paper_speedup"] == 4.1
    assert s["fixed_compute"]["speedup"] > s["fixed_length"]["speedup"] > s["batch_padding_varlen"]["speedup"] > 1
    assert s["fixed_compute"]["padding_tokens"] == 0
    assert s["batch_padding"]["padding_tokens"] > s["fixed_length"]["padding_tokens"]
    assert s["fixed_compute"]["idle_fraction"] < s["fixed_length"]["idle_fraction"]
    assert result["real_throughput"] is None and "--real" in result["real_throughput_note"]


def _load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("packing_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shrunk_mix_keeps_the_kinds_and_shrinks_the_lengths():
    bench = _load_benchmark()
    full, kinds = bench.make_mix(300, seed=3)
    small, small_kinds = bench.make_mix(300, seed=3, length_scale=16)
    assert kinds == small_kinds
    ratio = sum(s.length for s in full) / sum(s.length for s in small)
    assert 10 < ratio < 25
    assert max(s.length for s in small) <= 16384 // 16


@pytest.mark.slow
def test_real_two_process_throughput_with_the_shared_trainer():
    bench = _load_benchmark()
    real = bench.measure_real_throughput(num_samples=64, timeout=300)
    s = real["strategies"]
    assert set(s) == {"batch_padding", "fixed_length", "fixed_compute"}
    assert s["batch_padding"]["speedup"] == 1.0
    for r in s.values():
        assert r["tokens_per_s"] > 0 and r["steps_timed"] >= 1 and r["simulated_speedup"] > 0
    assert s["fixed_length"]["speedup"] > 1.0  # packing beats padding for real, too

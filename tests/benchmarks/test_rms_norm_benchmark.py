import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "rms_norm.py"


def test_quick_benchmark_writes_the_table_and_json(tmp_path):
    out = tmp_path / "rms_norm.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=True)
    assert "| model | tokens | mode | eager_ms | nx_ms | compiled_ms" in proc.stdout
    result = json.loads(out.read_text())
    assert result["config"]["widths"] == {"qwen2.5-vl-7b": 3584, "nextstep-1": 5120}
    assert len(result["cpu"]) == 2 * 1 * 2  # widths x tokens x (forward, forward+backward)
    for row in result["cpu"]:
        assert row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["nx_ms"] > 0
        assert row["compiled_speedup"] == row["eager_ms"] / row["compiled_ms"]
    assert result["gpu"] is None or result["gpu"]

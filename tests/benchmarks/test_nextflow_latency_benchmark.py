import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "nextflow_latency.py"


def test_quick_latency_benchmark_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "latency.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--model", "tiny",
                           "--dtype", "fp32", "--repeats", "1", "--warmup", "0", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, check=True)
    assert "| level | batch | rows |" in proc.stdout and "| forward | tokens |" in proc.stdout
    result = json.loads(out.read_text())
    assert [r["settings"]["batch"] for r in result["reports"]] == [1, 4]
    for report in result["reports"]:
        assert [f["forward"] for f in report["forwards"]] == ["prompt", "scale 0", "scale 1", "scale 2"]
        assert report["settings"]["rows"] == 2 * report["settings"]["batch"]  # CFG rows
        assert report["seconds"]["per_call"] > 0 and report["floors"]["roofline_s"] > 0

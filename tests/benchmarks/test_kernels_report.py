"""The kernel shoot-out's ``--quick`` path: its JSON and markdown are complete and self-consistent.

Runs ``benchmarks/kernels.py --quick`` (toy shapes) in a subprocess with the compiled competitors
skipped (compiling takes minutes); checks structure, never timing values.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import nxkernels.info  # noqa: F401  (registers every op)
from nxkernels.dispatch import registered_ops

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels") / "kernels.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--skip", "compiled", "flex",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_every_nxkernels_op_is_covered_at_both_shapes(report):
    result, _ = report
    rows = result["rows"]
    covered = {op for r in rows for op in r["covers"]}
    assert covered >= set(registered_ops()), set(registered_ops()) - covered
    not_applicable = {(n["op"], n["shape"]) for n in result["config"]["not_applicable"]}
    for op in {r["op"] for r in rows}:
        for shape in ("7b", "14b"):
            present = any(r["op"] == op and r["shape"] == shape for r in rows)
            assert present != ((op, shape) in not_applicable), (op, shape)


def test_rows_have_both_modes_where_there_is_a_backward(report):
    result, _ = report
    modes = {}
    for r in result["rows"]:
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        modes.setdefault((r["op"], r["shape"]), set()).add(r["mode"])
    for (op, _), found in modes.items():
        expected = {"forward"} if op in ("vq", "decode_attention") else {"forward", "forward+backward"}
        assert found == expected, (op, found)


def test_ratios_come_from_the_ms_columns_and_not_run_rows_carry_a_reason(report):
    result, _ = report
    for r in result["rows"]:
        res = r["results"]
        assert {"nx", "eager", "compiled"} <= set(res), r["op"]
        assert "ms" in res["nx"] and res["nx"]["ms"] > 0 and "peak_mib" in res["nx"]
        for name, entry in res.items():
            if "not_run" in entry:
                assert isinstance(entry["not_run"], str) and entry["not_run"].strip(), (r["op"], name)
                assert "ms" not in entry
            else:
                assert entry["ms"] > 0 and isinstance(entry["peak_mib"], float)
        assert res["compiled"]["not_run"] == "skipped (--skip compiled)"
        ran = {k: e["ms"] for k, e in res.items() if k != "nx" and "ms" in e}
        assert ran, r["op"]
        best = min(ran, key=ran.get)
        assert r["best_competitor"] == best
        assert r["ratio"] == pytest.approx(res["nx"]["ms"] / ran[best], rel=1e-12)


def test_gpu_only_competitors_say_why_they_did_not_run(report):
    result, _ = report
    by_op = {}
    for r in result["rows"]:
        by_op.setdefault(r["op"], r)
    for op in ("rms_norm", "swiglu", "rope", "linear_cross_entropy"):
        assert "no CUDA device" in by_op[op]["results"]["liger"]["not_run"]
    for op in ("scale_attention", "decode_attention"):
        res = by_op[op]["results"]
        assert "no CUDA device" in res["xformers"]["not_run"]
        assert {"sdpa_math", "sdpa_flash", "sdpa_efficient"} <= set(res)
    backward = next(r for r in result["rows"] if r["op"] == "scale_attention" and r["mode"] != "forward")
    assert "not_run" in backward["results"]["flex"]
    assert "gemm_argmin" in by_op["vq"]["results"]


def test_markdown_has_a_header_a_summary_and_one_table_per_op_and_shape(report):
    result, md = report
    assert md.startswith("# Kernel shoot-out")
    assert "2 threads" in md and "Load average" in md
    assert "GPU: **pending**" in md
    assert "## Summary" in md and "| op | shape | mode | tokens | CPU nx ms" in md
    for r in result["rows"]:
        assert f"\n## {r['op']}" in md
        assert f"### {r['shape']} (" in md
        assert f"CPU float32: {r['detail']}" in md
    assert md.count("| ratio nx / best (time, memory) |") == len({(r["op"], r["shape"]) for r in result["rows"]})
    assert "not run: skipped (--skip compiled)" in md
    assert "not applicable" in md

"""Importing nx is cheap and safe: no triton, no xformers, no CUDA initialisation, no cycles."""

import ast
import pathlib
import subprocess
import sys

import pytest

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"

PROBE = """
import sys, torch
import nxcore, nxkernels, nxrecipes
from nxcore.testing.discovery import import_all
import_all()
banned = sorted(m for m in sys.modules if m.split(".")[0] in {"triton", "xformers"})
print("BANNED", banned)
print("CUDA", torch.cuda.is_initialized())
"""


def test_import_touches_neither_triton_xformers_nor_cuda():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert "BANNED []" in out, out
    assert "CUDA False" in out, out


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("nxkernels", {"nxcore", "nxrecipes"}), ("nxcore", {"nxrecipes"})],
)
def test_imports_flow_one_way(package, forbidden):
    offenders = {
        str(p.relative_to(SRC)): sorted(_imports(p) & forbidden)
        for p in (SRC / package).rglob("*.py")
        if _imports(p) & forbidden
    }
    assert offenders == {}, f"{package} must not import {sorted(forbidden)}: {offenders}"

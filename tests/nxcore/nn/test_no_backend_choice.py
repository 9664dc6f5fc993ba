"""nxcore never picks a kernel backend: no ``backend=`` argument, no ``use_backend``, no ``NX_KERNELS``
anywhere in ``src/nxcore`` (the choice belongs to the user and ``nxkernels.dispatch``)."""

import ast
from pathlib import Path

import nxcore

NXCORE = Path(nxcore.__file__).parent


def backend_choices(source: str) -> list[tuple[int, str]]:
    """(line, what) for every place ``source`` picks a kernel backend."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            found += [(node.lineno, "backend=") for kw in node.keywords if kw.arg == "backend"]
        elif isinstance(node, ast.Name | ast.Attribute | ast.alias):
            name = getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", "")
            if name == "use_backend":
                found.append((getattr(node, "lineno", 0), "use_backend"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value == "NX_KERNELS":
            found.append((node.lineno, "NX_KERNELS"))
    return found


def test_the_scan_finds_each_kind_of_choice():
    source = (
        "from nxkernels.dispatch import use_backend\n"
        "y = rms_norm(x, w, 1e-6, backend='triton')\n"
        "os.environ['NX_KERNELS'] = 'reference'\n"
    )
    assert sorted(what for _, what in backend_choices(source)) == ["NX_KERNELS", "backend=", "use_backend"]
    assert backend_choices("y = rms_norm(x, w, 1e-6)\nbackend = 'x'\n") == []


def test_no_file_in_nxcore_picks_a_kernel_backend():
    files = sorted(NXCORE.rglob("*.py"))
    assert len(files) > 10 and NXCORE / "nn" / "attention.py" in files
    offenders = [
        f"{path.relative_to(NXCORE.parent)}:{line}: {what}"
        for path in files
        for line, what in backend_choices(path.read_text())
    ]
    assert offenders == [], "nxcore must call nxkernels ops without choosing a backend:\n" + "\n".join(
        offenders
    )

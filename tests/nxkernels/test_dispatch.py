"""The dispatcher: priority, pinning, NX_KERNELS parsing, use_backend, the cache, every reason."""

import itertools
import logging
import subprocess
import sys

import pytest
import torch

from nxkernels import dispatch
from nxkernels.dispatch import Backend, Op, parse_mode, requested_mode, use_backend

_ids = itertools.count()
TOL = {d: 0.0 for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def make_op(*backends: Backend) -> Op:
    return Op(f"toy_{next(_ids)}", backends=backends, shape_class=lambda x, **kw: (x.shape[-1],))


def backend(name, *, devices=("cpu",), dtypes=(torch.float32,), available=None, check=None,
            max_last_dim=None, auto_devices=None) -> Backend:
    return Backend(
        name, "math:sqrt", devices=devices, dtypes=dtypes, atol=TOL, rtol=TOL,
        max_last_dim=max_last_dim, available=available or (lambda dev: []), check=check,
        auto_devices=auto_devices,
    )


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("NX_KERNELS", raising=False)
    dispatch.clear_cache()
    yield
    dispatch.clear_cache()


def test_auto_takes_the_first_backend_that_can_run():
    op = make_op(backend("triton", available=lambda dev: ["no driver"]),
                 backend("torch", dtypes=(torch.float16,)), backend("reference"))
    assert op.select(torch.zeros(2, 3)).name == "reference"
    assert op.select(torch.zeros(2, 3, dtype=torch.float16)).name == "torch"


def test_a_pinned_backend_that_cannot_run_raises_with_every_reason():
    op = make_op(
        backend("triton", devices=("cuda",), max_last_dim=2,
                check=lambda x, **kw: ["flag=True is not honoured"] if kw.get("flag") else []),
        backend("reference"),
    )
    with pytest.raises(ValueError) as err:
        op.select(torch.zeros(2, 3, dtype=torch.float64), flag=True, backend="triton")
    msg = str(err.value)
    for reason in ("runs on cuda tensors, not cpu", "dtype float64 is not supported",
                   "last dimension 3 exceeds the limit 2", "flag=True is not honoured"):
        assert reason in msg, msg
    assert op.select(torch.zeros(2, 3), flag=True).name == "reference"  # auto falls back quietly


def test_auto_with_no_backend_left_lists_every_rejected_backend():
    op = make_op(backend("triton", available=lambda dev: ["no driver"]), backend("reference"))
    with pytest.raises(ValueError, match=r"(?s)triton: no driver.*reference: dtype int64"):
        op.select(torch.zeros(2, 3, dtype=torch.int64))


def test_auto_skips_a_backend_outside_its_auto_devices_but_a_pin_reaches_it():
    op = make_op(backend("triton", devices=("cuda", "cpu"), auto_devices=("cuda",)),
                 backend("reference"))
    assert op.select(torch.zeros(2)).name == "reference"
    assert op.select(torch.zeros(2), backend="triton").name == "triton"
    with use_backend("triton"):
        assert op.select(torch.zeros(2)).name == "triton"
    only = make_op(backend("triton", devices=("cuda", "cpu"), auto_devices=("cuda",)))
    with pytest.raises(ValueError, match="on cpu it runs only when asked for by name"):
        only.select(torch.zeros(2))


def test_pinning_an_unknown_or_absent_backend_names_the_choices():
    op = make_op(backend("reference"))
    with pytest.raises(ValueError, match="backend='fast' is not understood"):
        op.select(torch.zeros(1), backend="fast")
    with pytest.raises(ValueError, match="has no backend 'xformers'; its backends are reference"):
        op.select(torch.zeros(1), backend="xformers")


@pytest.mark.parametrize(("value", "mode"), [("", "auto"), (" Reference ", "reference"),
                                             ("AUTO", "auto"), ("triton", "triton")])
def test_env_var_is_parsed_strictly(value, mode):
    assert requested_mode({"NX_KERNELS": value}) == mode


@pytest.mark.parametrize("value", ["fast", "cuda", "1", "reference,triton"])
def test_env_var_rejects_unknown_spellings(value):
    with pytest.raises(ValueError, match="NX_KERNELS=.* is not understood; use one of auto"):
        requested_mode({"NX_KERNELS": value})


def test_env_var_pins_ops_that_have_the_backend_and_leaves_the_others_on_auto(monkeypatch):
    with_torch = make_op(backend("torch"), backend("reference"))
    without = make_op(backend("reference"))
    monkeypatch.setenv("NX_KERNELS", "reference")
    assert with_torch.select(torch.zeros(2)).name == "reference"
    monkeypatch.setenv("NX_KERNELS", "torch")
    assert without.select(torch.zeros(2)).name == "reference"
    monkeypatch.setenv("NX_KERNELS", "triton")
    blocked = make_op(backend("triton", available=lambda dev: ["no driver"]), backend("reference"))
    with pytest.raises(ValueError, match="NX_KERNELS / use_backend='triton'.*\n  triton: no driver"):
        blocked.select(torch.zeros(2))


def test_use_backend_overrides_env_locally_and_nests(monkeypatch):
    op = make_op(backend("torch"), backend("reference"))
    monkeypatch.setenv("NX_KERNELS", "torch")
    assert op.select(torch.zeros(2)).name == "torch"
    with use_backend("reference"):
        assert op.select(torch.zeros(2)).name == "reference"
        with use_backend("auto"):
            assert op.select(torch.zeros(2)).name == "torch"
        assert op.select(torch.zeros(2)).name == "reference"
        assert op.select(torch.zeros(2), backend="torch").name == "torch"  # a pin beats both
    assert op.select(torch.zeros(2)).name == "torch"
    with pytest.raises(ValueError, match="use_backend='fused' is not understood"):
        with use_backend("fused"):
            pass
    assert parse_mode("Triton") == "triton"


def test_choice_is_cached_per_shape_class_and_logged_once(caplog):
    calls = []

    def check(x, **kw):
        calls.append(x.shape[-1])
        return []

    op = make_op(backend("torch", check=check),
                 backend("reference", dtypes=(torch.float32, torch.float16)))
    with caplog.at_level(logging.DEBUG, logger="nxkernels.dispatch"):
        for _ in range(3):
            assert op.select(torch.zeros(4, 8)).name == "torch"
            assert op.select(torch.zeros(2, 8)).name == "torch"  # same class (last dim 8)
        op.select(torch.zeros(4, 16))
        op.select(torch.zeros(4, 8, dtype=torch.float16))  # other dtype: torch rejects it
    assert calls == [8, 16, 8]
    logged = [r.getMessage() for r in caplog.records if op.name in r.getMessage()]
    assert len(logged) == 3, logged
    dispatch.clear_cache()
    op.select(torch.zeros(4, 8))
    assert calls == [8, 16, 8, 8]


def test_backends_declare_tolerances_for_every_dtype():
    with pytest.raises(ValueError, match="declares no atol/rtol"):
        Backend("torch", "math:sqrt", devices=("cpu",), dtypes=(torch.float32,), atol={}, rtol={})
    with pytest.raises(ValueError, match="backend name 'fast' must be one of"):
        Backend("fast", "math:sqrt", devices=("cpu",), dtypes=(), atol={}, rtol={})
    assert backend("torch").tolerance(torch.float32) == {"atol": 0.0, "rtol": 0.0}


def test_impl_is_imported_on_first_use():
    import math

    assert backend("torch").load() is math.sqrt


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reasons = dispatch.triton_reasons("cpu")
    assert reasons and ("TRITON_INTERPRET=1" in reasons[0] or "not installed" in reasons[0])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if dispatch.importlib.util.find_spec("triton") is not None:
        assert dispatch.triton_reasons("cpu") == []
    assert dispatch.triton_reasons("mps")


def test_info_lists_every_op_and_backend_with_reasons():
    out = subprocess.run([sys.executable, "-m", "nxkernels.info"], capture_output=True, text=True,
                         check=True, timeout=120, env={"PATH": "", "NX_KERNELS": "auto"}).stdout
    assert "rms_norm:" in out and "rope:" in out
    assert "triton     cpu   unavailable:" in out and "TRITON_INTERPRET=1" in out
    assert "reference  cpu   available" in out


def test_importing_nxkernels_and_its_ops_loads_no_triton_and_no_cuda():
    # Importing loads neither triton nor xformers. Calling an op on CPU loads no triton backend of
    # ours; torch itself imports triton on a custom op's first call (torch._dynamo checks for it).
    probe = ("import sys, torch, nxkernels.info as i; i.load_ops(); import nxkernels.rms_norm as r;"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in {'triton', 'xformers'}));"
             "r.rms_norm(torch.ones(2, 3), torch.ones(3));"
             "print(sorted(m for m in sys.modules if m.startswith('nxkernels') and 'triton' in m),"
             " torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         timeout=120, env={"PATH": "", "NX_KERNELS": "auto"}).stdout
    assert out.split("\n")[:2] == ["[]", "[] False"], out


def test_every_nxkernels_op_ends_with_an_available_reference_and_declares_tolerances():
    from nxkernels.info import load_ops

    load_ops()
    ops = {n: op for n, op in dispatch.registered_ops().items() if op.module.startswith("nxkernels.")}
    assert "rms_norm" in ops
    for name, op in ops.items():
        assert op.backends[-1].name == "reference", name
        assert op.backends[-1].availability_reasons("cpu") == [], name
        for b in op.backends:
            assert set(b.dtypes) <= set(b.atol) and set(b.dtypes) <= set(b.rtol), (name, b.name)
            if b.name == "triton":
                assert b.auto_devices == ("cuda",), f"{name}: auto must not pick the interpreter"


def test_dispatched_ops_trace_under_torch_compile_fullgraph():
    from nxkernels.adaln import adaln_modulate, gated_residual
    from nxkernels.swiglu import swiglu, swiglu_reference

    g, u = torch.randn(3, 5), torch.randn(3, 5)
    x, mod = torch.randn(2, 3, 8), torch.randn(2, 1, 8)
    got = torch.compile(lambda a, b: swiglu(a, b), backend="eager", fullgraph=True)(g, u)
    torch.testing.assert_close(got, swiglu_reference(g, u))
    fn = torch.compile(lambda a, m: gated_residual(a, m, adaln_modulate(a, m, m)), backend="eager",
                       fullgraph=True)
    torch.testing.assert_close(fn(x, mod), gated_residual(x, mod, adaln_modulate(x, mod, mod)))


def test_eager_inference_calls_the_kernel_directly_with_the_custom_ops_result(monkeypatch):
    """Without autograd and outside torch.compile the ops skip their custom-op dispatch; the result is
    the custom op's, and a call that needs gradients still goes through the op (and its backward)."""
    from nxkernels.rms_norm import rms_norm
    from nxkernels.rope import apply_rope, apply_rope_qk
    from nxkernels.swiglu import swiglu

    g = torch.Generator().manual_seed(0)
    x, w, r = torch.randn(3, 5, 8, generator=g), torch.rand(8, generator=g), torch.randn(3, 5, 8, generator=g)
    pos, inv = torch.arange(5.0)[:, None], torch.rand(4, generator=g)
    calls = {
        "rms_norm": lambda: rms_norm(x, w, 1e-6),
        "rms_norm residual": lambda: rms_norm(x, w, 1e-6, residual=r),
        "rope": lambda: apply_rope(x, pos, inv),
        "rope qk": lambda: apply_rope_qk(x, r, pos, inv),
        "swiglu": lambda: swiglu(x, r),
    }
    with torch.no_grad():
        direct = {name: call() for name, call in calls.items()}
    assert dispatch.eager_inference(x) and not dispatch.eager_inference(x.requires_grad_())
    through_op = {name: call() for name, call in calls.items()}
    for name in calls:
        ops = torch.utils._pytree.tree_leaves(through_op[name])
        for a, b in zip(torch.utils._pytree.tree_leaves(direct[name]), ops, strict=True):
            assert torch.equal(a, b.detach()), name
        assert ops[0].requires_grad, name  # the op path keeps autograd
    x.requires_grad_(False)

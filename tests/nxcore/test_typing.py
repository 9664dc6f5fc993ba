import pytest
import torch
from jaxtyping import TypeCheckError

from nxcore import typing as nxtyping
from nxcore.typing import Float, Tensor, typecheck, typecheck_enabled


@pytest.mark.parametrize("value", ["1", "true", "ON", " yes "])
def test_switch_on_spellings(value):
    assert typecheck_enabled({"NX_TYPECHECK": value}) is True


@pytest.mark.parametrize("value", ["", "0", "false", "Off", "no"])
def test_switch_off_spellings(value):
    assert typecheck_enabled({"NX_TYPECHECK": value}) is False
    assert typecheck_enabled({}) is False


@pytest.mark.parametrize("value", ["2", "maybe", "enabled"])
def test_switch_rejects_unknown_values(value):
    with pytest.raises(ValueError, match="NX_TYPECHECK=.* is not understood"):
        typecheck_enabled({"NX_TYPECHECK": value})


def _add(x: Float[Tensor, "n d"], y: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
    return x + y


def test_off_returns_the_undecorated_function(monkeypatch):
    monkeypatch.setenv("NX_TYPECHECK", "0")
    assert nxtyping.typecheck(_add) is _add


def test_on_checks_shapes_and_dtypes(monkeypatch):
    monkeypatch.setenv("NX_TYPECHECK", "1")
    checked = typecheck(_add)
    assert checked(torch.ones(2, 3), torch.ones(2, 3)).shape == (2, 3)
    with pytest.raises(TypeCheckError):
        checked(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(TypeCheckError):
        checked(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3, dtype=torch.int64))


def test_checked_function_runs_unchecked_under_torch_compile(monkeypatch):
    monkeypatch.setenv("NX_TYPECHECK", "1")
    checked = typecheck(_add)

    @torch.compile(backend="eager", fullgraph=True)
    def f(x, y):
        return checked(x, y) * 2

    torch._dynamo.reset()
    out = f(torch.ones(2, 3), torch.ones(2, 3))
    assert torch.equal(out, torch.full((2, 3), 4.0))


def test_own_validation_message_wins_over_the_shape_error(monkeypatch):
    monkeypatch.setenv("NX_TYPECHECK", "1")

    def validated(x: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        if x.ndim != 2:
            raise ValueError(f"x must have 2 dimensions, got {x.ndim}; reshape it")
        return x

    checked = typecheck(validated)
    with pytest.raises(ValueError, match="x must have 2 dimensions, got 3") as info:
        checked(torch.ones(1, 2, 3))
    assert isinstance(info.value.__cause__, TypeCheckError)

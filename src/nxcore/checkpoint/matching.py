"""Matching a state dict to a module: one report of every missing, unexpected, mis-shaped key."""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping

import attrs
import torch
from torch import Tensor, nn

from nxcore.checkpoint.loading import load_state
from nxcore.checkpoint.remap import KeyMap, remap_keys
from nxcore.checkpoint.safetensors_io import check_state, view_id

__all__ = ["CheckpointMismatchError", "KeyMismatch", "LoadReport", "load_into", "load_checked"]

_SHOW = 20  # keys listed per kind in a mismatch message


@attrs.frozen
class KeyMismatch:
    """A key present on both sides whose shape (or kind of dtype) differs."""

    key: str
    module_shape: tuple[int, ...]
    checkpoint_shape: tuple[int, ...]
    module_dtype: torch.dtype
    checkpoint_dtype: torch.dtype

    def __str__(self) -> str:
        return (
            f"{self.key}: module {self.module_shape} {_dt(self.module_dtype)}, checkpoint "
            f"{self.checkpoint_shape} {_dt(self.checkpoint_dtype)}"
        )


@attrs.frozen
class LoadReport:
    """What ``load_into`` could not load.

    ``missing``: module keys absent from the checkpoint; ``unexpected``: checkpoint keys the module
    lacks; ``mismatched``: keys on both sides whose shapes (or dtype kinds) differ, left unloaded.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[KeyMismatch, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit a module; ``.report`` holds every problem at once."""

    def __init__(self, message: str, report: LoadReport) -> None:
        super().__init__(message)
        self.report = report


def load_into(
    module: nn.Module,
    state: Mapping[str, Tensor] | str | os.PathLike,
    *,
    key_map: KeyMap | None = None,
    strict: bool = True,
    dtype: torch.dtype | None = None,
) -> LoadReport:
    """Copy ``state`` (a state dict, or a path for ``load_state``) into ``module``.

    Keys are first renamed with ``key_map`` (see ``remap_keys``), then compared with
    ``module.state_dict()``. With ``strict`` any missing, unexpected or mis-shaped key raises one
    ``CheckpointMismatchError`` listing them all, and nothing is loaded; otherwise what matches
    is loaded and the rest comes back in the ``LoadReport``. A module key tied to a loaded key
    (same parameter) is not missing. Floating-point tensors are cast to ``dtype`` (the module is
    converted to it first) or, when ``dtype`` is None, to each parameter's dtype; integer and
    bool tensors are never cast to floating point (a kind mismatch counts as mis-shaped).
    """
    source = None
    if isinstance(state, str | os.PathLike):
        source = str(state)
        state = load_state(state)
    return load_checked(module, state, key_map=key_map, strict=strict, dtype=dtype, source=source)


def load_checked(module, state, *, key_map, strict, dtype, source) -> LoadReport:
    """``load_into`` with ``source`` (a path, for messages) given."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(
            f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}"
        )
    check_state(state, "state")
    if key_map is not None:
        state = remap_keys(state, key_map)
    expected = module.state_dict()
    report = _compare(expected, state)
    if strict and not report.ok:
        raise CheckpointMismatchError(_message(report, expected, state, module, source), report)
    if dtype is not None:
        module.to(dtype=dtype)
    skip = set(report.unexpected) | {m.key for m in report.mismatched}
    with torch.no_grad():
        module.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
    return report


def _kind(t: Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_complex():
        return "complex"
    return "float" if t.is_floating_point() else "int"


def _compare(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> LoadReport:
    unexpected = tuple(k for k in state if k not in expected)
    mismatched = tuple(
        KeyMismatch(k, tuple(e.shape), tuple(state[k].shape), e.dtype, state[k].dtype)
        for k, e in expected.items()
        if k in state and (e.shape != state[k].shape or _kind(e) != _kind(state[k]))
    )
    missing = [k for k in expected if k not in state]
    if missing:  # a key tied to a loaded key gets its values through that one
        bad = {m.key for m in mismatched}
        tied: dict[tuple, list[str]] = defaultdict(list)
        for k, t in expected.items():
            if (view := view_id(t)) is not None:
                tied[view].append(k)
        loaded = {k for k in state if k in expected and k not in bad}
        missing = [
            k for k in missing
            if not ((view := view_id(expected[k])) is not None and loaded & set(tied[view]))
        ]
    return LoadReport(tuple(missing), unexpected, mismatched)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _listing(lines: list[str]) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:_SHOW])
    return shown + (f"\n  ... and {len(lines) - _SHOW} more" if len(lines) > _SHOW else "")


def _message(report: LoadReport, expected, state, module: nn.Module, source: str | None) -> str:
    what = f"checkpoint {source}" if source else "the state dict"
    parts = [
        f"{what} does not match {type(module).__name__}: {len(report.missing)} missing, "
        f"{len(report.unexpected)} unexpected, {len(report.mismatched)} mis-shaped key(s)"
    ]
    if report.missing:
        rows = [f"{k} {tuple(expected[k].shape)} {_dt(expected[k].dtype)}" for k in report.missing]
        parts.append("missing keys (in the module, not in the checkpoint):\n" + _listing(rows))
    if report.unexpected:
        rows = [f"{k} {tuple(state[k].shape)} {_dt(state[k].dtype)}" for k in report.unexpected]
        parts.append("unexpected keys (in the checkpoint, not in the module):\n" + _listing(rows))
    if report.mismatched:
        rows = [str(m) for m in report.mismatched]
        parts.append(
            "mis-shaped keys (same name, different shape or kind of dtype):\n" + _listing(rows)
        )
    hint = _prefix_hint(report.missing, report.unexpected)
    if hint:
        parts.append(f"hint: {hint}")
    parts.append(
        "Fix: rename checkpoint keys with key_map=[(regex, replacement), ...] or a callable, or "
        "pass strict=False to load the keys that match and get a LoadReport of the rest"
    )
    return "\n".join(parts)


def _prefix_hint(missing: tuple[str, ...], unexpected: tuple[str, ...]) -> str | None:
    """A key_map that fixes a prefix added or dropped on one side, when one explains some keys."""
    votes: Counter[tuple[str, str]] = Counter()
    sides = ((unexpected, set(missing), "strip"), (missing, set(unexpected), "add"))
    for keys, others, kind in sides:
        for key in keys[:10_000]:
            for i, ch in enumerate(key):
                if ch == "." and key[i + 1:] in others:
                    votes[(kind, key[: i + 1])] += 1
    if not votes:
        return None
    (kind, prefix), count = votes.most_common(1)[0]
    if kind == "strip":
        return (
            f"{count} unexpected key(s) are missing keys with the prefix {prefix!r}; "
            f"key_map=[(r'^{re.escape(prefix)}', '')] removes it"
        )
    return (
        f"{count} missing key(s) are unexpected keys without the prefix {prefix!r}; "
        f"key_map=[(r'^', {prefix!r})] adds it"
    )

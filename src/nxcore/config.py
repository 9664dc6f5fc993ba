"""Frozen attrs configs with ``build()`` and a lossless JSON round-trip.

A component owns its config::

    @config
    class LinearHeadConfig(Config):
        dim: int = attrs.field(validator=positive())
        vocab_size: int = attrs.field(validator=positive())

        def build(self) -> LinearHead:
            return LinearHead(self.dim, self.vocab_size)

A recipe config is a tree of component configs; a sub-config names its own type, so swapping a head
is replacing one sub-config. In JSON every config carries ``"type": "module:QualName"``; loading
imports that path and accepts it only if it is a ``Config`` subclass. A JSON field the config does
not have is an error, never ignored.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import attrs

__all__ = [
    "Config",
    "as_tuple",
    "boolean",
    "channel_multipliers",
    "config",
    "finite_number",
    "in_range",
    "integer",
    "non_negative",
    "one_of",
    "positive",
]

_C = TypeVar("_C", bound=type)
TYPE_KEY = "type"


def config(cls: _C) -> _C:
    """Decorator for component configs: frozen, keyword-only attrs classes."""
    return attrs.frozen(kw_only=True)(cls)


class Config:
    """Base of every nx config: JSON round-trip, file I/O, and ``build()``."""

    def build(self) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} does not define build()")

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validators run again)."""
        return attrs.evolve(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {TYPE_KEY: type_path(type(self))}
        for field in attrs.fields(type(self)):
            out[field.name] = _encode(getattr(self, field.name))
        return out

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        from nxcore.checkpoint import atomic_write_text

        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        if not isinstance(data, dict):
            raise TypeError(f"a config must be a JSON object, got {type(data).__name__}")
        target = _resolve_type(data[TYPE_KEY]) if TYPE_KEY in data else cls
        if not issubclass(target, cls):
            raise TypeError(
                f"config type {type_path(target)} is not a {cls.__qualname__}; "
                f"load it with {type_path(target)}.from_dict or fix the 'type' field"
            )
        hints = typing.get_type_hints(target)
        known = {f.name: f for f in attrs.fields(target)}
        unknown = sorted(set(data) - set(known) - {TYPE_KEY})
        if unknown:
            raise ValueError(
                f"{target.__qualname__} has no field(s) {unknown}; known fields are "
                f"{sorted(known)}. Remove them or fix their spelling"
            )
        kwargs = {
            name: _decode(value, hints.get(name, Any)) for name, value in data.items()
            if name != TYPE_KEY
        }
        return target(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"config is not valid JSON: {err}") from err
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Self:
        return cls.from_json(Path(path).read_text())


def type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _resolve_type(path: str) -> type:
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"config 'type' must look like 'package.module:ClassName', got {path!r}")
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"config type {path!r} cannot be found: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, Config) and attrs.has(obj)):
        raise TypeError(f"config type {path!r} is not an nx Config class; refusing to build it")
    return obj


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _decode(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _decode(value, non_none[0]) if len(non_none) == 1 else _decode_untyped(value)
    if isinstance(value, dict) and TYPE_KEY in value:
        return Config.from_dict(value)
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(_decode(v, a) for v, a in zip(value, args, strict=True))
        return tuple(_decode_untyped(v) for v in value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    return _decode_untyped(value)


def _decode_untyped(value: Any) -> Any:
    if isinstance(value, dict) and TYPE_KEY in value:
        return Config.from_dict(value)
    if isinstance(value, list):
        return tuple(_decode_untyped(v) for v in value)
    return value


# --- validators whose messages name the field, the value and the allowed range ---------------

def _validator(check: Callable[[Any], bool], allowed: str):
    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not check(value):
            raise ValueError(
                f"{type(instance).__qualname__}.{attribute.name} = {value!r} is not allowed; "
                f"expected {allowed}"
            )

    return validate


def positive():
    return _validator(lambda v: _is_number(v) and v > 0, "a number > 0")


def non_negative():
    return _validator(lambda v: _is_number(v) and v >= 0, "a number >= 0")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")

    def check(v: Any) -> bool:
        if not _is_number(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return _validator(check, f"a number in {lo}{low}, {high}{hi}")


def one_of(*choices: Any):
    return _validator(lambda v: v in choices, f"one of {list(choices)}")


def _where(instance: Any, attribute: attrs.Attribute) -> str:
    return f"{type(instance).__qualname__}.{attribute.name}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(*, above: float | None = None, at_most: float | None = None):
    """attrs validator: a finite real number (not a bool), optionally > ``above``, <= ``at_most``."""
    parts = ["a finite number"]
    if above is not None:
        parts.append(f"> {above}")
    if at_most is not None:
        parts.append(f"<= {at_most}")
    allowed = " ".join(parts)

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        ok = _is_number(value) and math.isfinite(value)
        ok = ok and (above is None or value > above) and (at_most is None or value <= at_most)
        if not ok:
            raise ValueError(
                f"{_where(instance, attribute)} = {value!r} is not allowed; expected {allowed}"
            )

    return validate


def boolean():
    """attrs validator: True or False (not 0 / 1, not a string)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(
                f"{_where(instance, attribute)} = {value!r} is not allowed; expected True or False "
                f"(got {type(value).__name__})"
            )

    return validate


def integer(*, at_least: int):
    """attrs validator: a Python int (not a bool) >= ``at_least``."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(
                f"{_where(instance, attribute)} = {value!r} is not allowed; expected an int "
                f">= {at_least} (got {type(value).__name__})"
            )
        if value < at_least:
            raise ValueError(
                f"{_where(instance, attribute)} = {value!r} is not allowed; expected an int "
                f">= {at_least}"
            )

    return validate


def as_tuple(value: Any) -> Any:
    """attrs converter: a list becomes a tuple (JSON gives lists back); anything else is unchanged."""
    return tuple(value) if isinstance(value, list) else value


def channel_multipliers(example: tuple[int, ...] = (1, 2, 4)):
    """attrs validator: a non-empty tuple of ints >= 1, one channel multiplier per resolution level
    (a CNN's ``ch_mult``); ``example`` goes into the message."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        ok = isinstance(value, tuple) and len(value) >= 1 and all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in value
        )
        if not ok:
            raise ValueError(
                f"{_where(instance, attribute)} = {value!r} is not allowed; expected a non-empty tuple of "
                f"ints >= 1, one channel multiplier per resolution level, e.g. {example}"
            )

    return validate

"""Find every implementation of a protocol in the nx packages, so conformance suites need no
per-class edits.

An implementation is a concrete class that subclasses the protocol explicitly (the house rule) and
defines a classmethod ``examples()`` returning a few small instances for the conformance checks.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Iterable
from types import UnionType
from typing import Any, get_args

DEFAULT_PACKAGES = ("nxcore", "nxkernels", "nxrecipes")
OPTIONAL_BACKENDS = {"triton", "xformers"}  # nxkernels/<op>/triton.py import their extra eagerly
_imported: set[str] = set()


def import_all(packages: Iterable[str] = DEFAULT_PACKAGES) -> None:
    """Import every module of ``packages`` so that all subclasses are defined."""
    for name in packages:
        if name in _imported:
            continue
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if leaf.startswith("__") or ".testing" in info.name or leaf in OPTIONAL_BACKENDS:
                continue  # test helpers and fused backends hold no implementations and need extras
            importlib.import_module(info.name)
        _imported.add(name)


def implementations(protocol: Any, packages: Iterable[str] = DEFAULT_PACKAGES) -> list[type]:
    """Concrete explicit subclasses of ``protocol`` (a Protocol class or a union of them)."""
    packages = tuple(packages)
    import_all(packages)
    protocols = get_args(protocol) if isinstance(protocol, UnionType) else (protocol,)
    found: dict[str, type] = {}
    for proto in protocols:
        stack = list(proto.__subclasses__())
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if getattr(cls, "_is_protocol", False) or inspect.isabstract(cls):
                continue
            if cls.__module__.split(".")[0] not in packages:
                continue
            cls = _published(cls)
            if cls is not None:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def _published(cls: type) -> type | None:
    """The class its module actually exports under that name: attrs' slotted classes replace the
    class object, leaving the discarded original among ``__subclasses__()`` until collected."""
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def examples_of(cls: type) -> list[Any]:
    """The instances ``cls.examples()`` provides for conformance checks."""
    make = getattr(cls, "examples", None)
    if make is None:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} implements an nx protocol but has no classmethod "
            "examples(); add one returning a few small instances so the conformance suite can run"
        )
    items = list(make())
    if not items:
        raise ValueError(f"{cls.__qualname__}.examples() returned no instances")
    return items


def conformance_cases(protocol: Any, packages: Iterable[str] = DEFAULT_PACKAGES) -> list[Any]:
    """pytest parameters: one per example instance of every implementation of ``protocol``."""
    import pytest

    cases = []
    for cls in implementations(protocol, packages):
        for i, item in enumerate(examples_of(cls)):
            cases.append(pytest.param(item, id=f"{cls.__qualname__}-{i}"))
    if not cases:
        cases.append(pytest.param(None, id="none", marks=pytest.mark.skip(
            reason=f"no implementation of {protocol!r} in {tuple(packages)} yet")))
    return cases

"""Renaming checkpoint keys: ordered regex rules or a callable."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = ["KeyMap", "remap_keys"]

Rule = tuple["str | re.Pattern[str]", "str | Callable[[re.Match[str]], str] | None"]
KeyMap = Sequence[Rule] | Mapping[str, "str | None"] | Callable[[str], "str | None"]


def remap_keys(state: Mapping[str, Tensor], key_map: KeyMap) -> dict[str, Tensor]:
    """Rename the keys of ``state``; the result keeps the original order.

    ``key_map`` is either

    - a sequence of ``(regex, replacement)`` rules (a dict of them works too, in its order): for
      each key the first rule whose regex matches anywhere in the key (``re.search``) applies,
      rewriting every match with ``re.sub``; a replacement of ``None`` drops the key; a key no
      rule matches is kept as is. Example: ``[(r"^model\\.", ""), (r"\\.gamma$", ".weight")]``;
    - a callable ``key -> new key``, returning ``None`` to drop the key.

    Two keys that end up with the same name are an error, unless they hold the same tensor (tied
    weights).
    """
    if not isinstance(state, Mapping):
        raise TypeError(
            f"state must be a mapping from str keys to tensors, got {type(state).__name__}"
        )
    rename = compile_key_map(key_map)
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, value in state.items():
        new = rename(key)
        if new is None:
            continue
        if not isinstance(new, str):
            raise TypeError(
                f"key_map returned {new!r} ({type(new).__name__}) for key {key!r}; it must return "
                "a str, or None to drop the key"
            )
        if new in out and out[new] is not value:
            raise ValueError(
                f"key_map renames both {source[new]!r} and {key!r} to {new!r}; make the rules "
                "tell them apart, or drop one of them (replacement None)"
            )
        out[new] = value
        source[new] = key
    return out


def compile_key_map(key_map: Any) -> Callable[[str], Any]:
    """``key_map`` as a function ``key -> new key | None``, validating every rule up front."""
    if isinstance(key_map, str | bytes | re.Pattern):
        raise TypeError(
            f"key_map must be a sequence of (regex, replacement) pairs or a callable, got "
            f"{type(key_map).__name__} {key_map!r}; wrap one rule in a list: "
            "key_map=[(pattern, replacement)]"
        )
    if callable(key_map) and not isinstance(key_map, Mapping):
        return key_map
    rules: Iterable[Any]
    if isinstance(key_map, Mapping):
        rules = key_map.items()
    elif isinstance(key_map, Iterable):
        rules = key_map
    else:
        raise TypeError(
            f"key_map must be a sequence of (regex, replacement) pairs or a callable, got "
            f"{type(key_map).__name__}"
        )
    compiled: list[tuple[re.Pattern[str], Any]] = []
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple | list) and len(rule) == 2):
            raise TypeError(f"key_map rule {i} must be a (regex, replacement) pair, got {rule!r}")
        pattern, replacement = rule
        if not isinstance(pattern, str | re.Pattern):
            raise TypeError(
                f"key_map rule {i}: the regex must be a str or re.Pattern, got {pattern!r}"
            )
        if replacement is not None and not (isinstance(replacement, str) or callable(replacement)):
            raise TypeError(
                f"key_map rule {i}: the replacement must be a str, a callable or None (drop), "
                f"got {replacement!r}"
            )
        try:
            compiled.append((re.compile(pattern), replacement))
        except re.error as err:
            raise ValueError(f"key_map rule {i}: {pattern!r} is not a valid regex ({err})") from err

    def rename(key: str) -> str | None:
        for i, (regex, replacement) in enumerate(compiled):
            if regex.search(key) is None:
                continue
            if replacement is None:
                return None
            try:
                return regex.sub(replacement, key)
            except (re.error, IndexError) as err:
                raise ValueError(
                    f"key_map rule {i}: replacement {replacement!r} cannot be applied to key "
                    f"{key!r} ({err}); check its group references"
                ) from err
        return key

    return rename

"""The unified vocabulary of a discrete model (NextFlow): one id space for text tokens, visual codes
and special tokens, read by the shared output head and its loss.

Layout, with T = ``text_size``, C = ``codebook_size``, S = ``len(tail_specials)``::

    [0, T)              text ids: exactly the text tokenizer's ids, its own special tokens included
    [T, T + C)          visual codes: code c of the image codebook is id T + c
    [T + C, T + C + S)  special tokens the text tokenizer lacks, in the order given
    [size, padded_size) padding up to a multiple of ``pad_to_multiple_of`` (matmul-friendly head
                        width); never a valid input or target

Placement rule for special tokens: **a special string has exactly one id**. If the text tokenizer
already has it as a special token (a tokenizer trained with ``SpecialTokens.nextflow()`` has
``<boi>``, ``<eoi>``, ...; NextStep-1's Qwen2.5 tokenizer has ``<|begin_of_image|>``, ...) it keeps
its text id, so ``tokenizer.encode("<boi>")`` and ``vocabulary.special_id("<boi>")`` agree and a
pretrained checkpoint's ids stay valid. Only specials the tokenizer lacks get a tail id. (The
alternative, moving all image specials to the tail, would give a string two ids whenever the
tokenizer also knows it.)

NextFlow's loss slices the visual-code logits with ``code_range``; the head is built
``padded_size`` wide and masks the padding with ``valid_mask``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import torch
from torch import Tensor

from nxcore.checks import check_tensor
from nxcore.config import Config, config, integer
from nxcore.tokenizer.protocol import TextTokenizer
from nxcore.tokenizer.text import SpecialTokens
from nxcore.typing import Bool, Int, typecheck

__all__ = ["Vocabulary"]


def _pairs(value: object) -> tuple[tuple[str, int], ...]:
    if isinstance(value, Mapping):
        value = value.items()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(
            f"text_specials must be a mapping or pairs of (special string, text id), got {value!r}"
        )
    return tuple(tuple(p) for p in value)  # type: ignore[misc]


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"tail_specials must be a tuple of special strings, got {value!r}")
    return tuple(value)


@config
class Vocabulary(Config):
    """One id space: text ids, then visual codes, then the specials the text tokenizer lacks.

    Build it with ``Vocabulary.from_tokenizer(tokenizer, codebook_size, SpecialTokens.nextflow())``;
    it is a config, so ``to_dict``/``from_dict`` (and ``save``/``load``) round-trip it through JSON
    for a checkpoint.
    """

    text_size: int = attrs.field(validator=integer(at_least=1))
    codebook_size: int = attrs.field(validator=integer(at_least=1))
    text_specials: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_pairs)
    tail_specials: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    pad_to_multiple_of: int = attrs.field(default=1, validator=integer(at_least=1))

    def __attrs_post_init__(self) -> None:
        seen: set[str] = set()
        ids: set[int] = set()
        for pair in self.text_specials:
            if len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
                raise ValueError(
                    f"Vocabulary.text_specials holds {pair!r}; each entry must be (special string, text id)"
                )
            name, index = pair
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < self.text_size:
                raise ValueError(
                    f"Vocabulary.text_specials gives {name!r} the id {index!r}, outside the text range "
                    f"[0, {self.text_size}); a special the text tokenizer lacks belongs in tail_specials"
                )
            if name in seen or index in ids:
                raise ValueError(
                    f"Vocabulary.text_specials repeats {name!r} or its id {index}; each special needs "
                    "its own string and id"
                )
            seen.add(name)
            ids.add(index)
        for name in self.tail_specials:
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"Vocabulary.tail_specials holds {name!r}; each entry must be a non-empty string"
                )
            if name in seen:
                raise ValueError(
                    f"Vocabulary.tail_specials repeats {name!r}, which already has an id; a special "
                    "string has exactly one id (remove the duplicate)"
                )
            seen.add(name)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: TextTokenizer,
        codebook_size: int,
        specials: SpecialTokens | Iterable[str] = (),
        *,
        pad_to_multiple_of: int = 1,
    ) -> Vocabulary:
        """The layout for ``tokenizer`` and a codebook of ``codebook_size`` codes. Every special of
        the tokenizer keeps its text id; strings of ``specials`` it lacks go to the tail, in order."""
        if not isinstance(tokenizer, TextTokenizer):
            raise TypeError(f"tokenizer must implement TextTokenizer, got {type(tokenizer).__name__}")
        if isinstance(specials, str):
            raise TypeError(
                f"specials must be a SpecialTokens or strings, got the single string {specials!r}"
            )
        strings = specials.strings if isinstance(specials, SpecialTokens) else tuple(specials)
        known = dict(tokenizer.special_tokens)
        tail = tuple(dict.fromkeys(s for s in strings if s not in known))
        return cls(
            text_size=int(tokenizer.vocab_size),
            codebook_size=codebook_size,
            text_specials=tuple(sorted(known.items(), key=lambda kv: kv[1])),
            tail_specials=tail,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    # --- layout --------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of valid ids: text + codes + tail specials."""
        return self.text_size + self.codebook_size + len(self.tail_specials)

    @property
    def padded_size(self) -> int:
        """``size`` rounded up to a multiple of ``pad_to_multiple_of``: the head's width."""
        m = self.pad_to_multiple_of
        return -(-self.size // m) * m

    @property
    def text_range(self) -> tuple[int, int]:
        return (0, self.text_size)

    @property
    def code_range(self) -> tuple[int, int]:
        return (self.text_size, self.text_size + self.codebook_size)

    @property
    def special_range(self) -> tuple[int, int]:
        """The tail of specials the text tokenizer lacks (empty when it has them all)."""
        return (self.code_range[1], self.size)

    @property
    def padding_range(self) -> tuple[int, int]:
        return (self.size, self.padded_size)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Every special string and its id (text-range specials, then the tail)."""
        start = self.special_range[0]
        out = dict(self.text_specials)
        out.update({name: start + i for i, name in enumerate(self.tail_specials)})
        return out

    def special_id(self, name: str) -> int:
        """The id of special string ``name`` (e.g. ``"<boi>"``)."""
        table = self.special_tokens
        if name not in table:
            raise ValueError(
                f"unknown special token {name!r}; this vocabulary's special tokens are {sorted(table)}. "
                "Pass it in specials= when building the Vocabulary"
            )
        return table[name]

    # --- id classification -------------------------------------------------------------------

    @typecheck
    def is_text(self, ids: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """True on ids in the text range (the text tokenizer's own specials included)."""
        check_tensor("ids", ids, kind="int")
        return (ids >= 0) & (ids < self.text_size)

    @typecheck
    def is_code(self, ids: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """True on visual-code ids."""
        check_tensor("ids", ids, kind="int")
        start, end = self.code_range
        return (ids >= start) & (ids < end)

    @typecheck
    def is_special(self, ids: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """True on the id of any special token, in the text range or in the tail."""
        check_tensor("ids", ids, kind="int")
        start, end = self.special_range
        tail = (ids >= start) & (ids < end)
        if not self.text_specials:
            return tail
        text = torch.tensor([i for _, i in self.text_specials], dtype=ids.dtype, device=ids.device)
        return tail | torch.isin(ids, text)

    @typecheck
    def is_valid(self, ids: Int[Tensor, "*shape"]) -> Bool[Tensor, "*shape"]:
        """True on ids in [0, size); padding ids and negatives are invalid."""
        check_tensor("ids", ids, kind="int")
        return (ids >= 0) & (ids < self.size)

    def valid_mask(self, device: torch.device | str = "cpu") -> Bool[Tensor, " vocab"]:
        """[padded_size] bool, False on padding ids: mask the head's logits with it."""
        mask = torch.zeros(self.padded_size, dtype=torch.bool, device=device)
        mask[: self.size] = True
        return mask

    def _describe(self, index: int) -> str:
        for label, (lo, hi) in (
            ("a text id", self.text_range),
            ("a visual-code id", self.code_range),
            ("a tail special id", self.special_range),
        ):
            if lo <= index < hi:
                return f"{label}, in [{lo}, {hi})"
        if self.size <= index < self.padded_size:
            lo, hi = self.padding_range
            return (
                f"a padding id, in [{lo}, {hi}), which pads the head to a multiple of "
                f"{self.pad_to_multiple_of} and is never a valid id"
            )
        return f"outside the vocabulary [0, {self.size})"

    def check_ids(self, ids: Tensor, *, name: str = "ids", ignore_index: int | None = None) -> Tensor:
        """Raise ``ValueError`` unless every id (other than ``ignore_index``) is in [0, size)."""
        check_tensor(name, ids, kind="int")
        bad = ~self.is_valid(ids)
        if ignore_index is not None:
            bad &= ids != ignore_index
        if bad.any():
            value = int(ids[bad][0])
            raise ValueError(
                f"{name} contains {value}, {self._describe(value)}; valid ids are [0, {self.size})"
            )
        return ids

    # --- codes <-> ids -------------------------------------------------------------------------

    @typecheck
    def code_to_id(self, codes: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape"]:
        """Unified ids (int64) of visual codes in [0, codebook_size)."""
        check_tensor("codes", codes, kind="int")
        bad = (codes < 0) | (codes >= self.codebook_size)
        if bad.any():
            value = int(codes[bad][0])
            raise ValueError(
                f"codes contains {value}, outside [0, codebook_size={self.codebook_size}); pass codebook "
                "indices (a DiscreteImageTokenizer's codes), not unified ids"
            )
        return codes.to(torch.int64) + self.text_size

    @typecheck
    def id_to_code(self, ids: Int[Tensor, "*shape"]) -> Int[Tensor, "*shape"]:
        """Codebook indices (int64) of visual-code ids; any other id is an error."""
        check_tensor("ids", ids, kind="int")
        bad = ~self.is_code(ids)
        if bad.any():
            value = int(ids[bad][0])
            start, end = self.code_range
            raise ValueError(
                f"ids contains {value}, {self._describe(value)}; id_to_code takes only visual-code ids "
                f"in [{start}, {end}). Select them first with ids[vocabulary.is_code(ids)]"
            )
        return ids.to(torch.int64) - self.text_size

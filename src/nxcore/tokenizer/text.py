"""Text tokenization: byte-level BPE through Hugging Face ``tokenizers``, and the special tokens of
NextFlow and NextStep-1.

``BPETokenizer`` wraps a ``tokenizers.Tokenizer``. It trains a byte-level BPE on any corpus (every
string round-trips: ``decode(encode(s)) == s``), saves and loads ``tokenizer.json``, and loads any
other ``tokenizer.json`` too, e.g. a local Qwen2.5 one (NextStep-1's backbone)::

    tok = BPETokenizer.train(corpus, vocab_size=2048, special_tokens=SpecialTokens.nextflow())
    tok.save("run/tokenizer.json")
    qwen = BPETokenizer.from_file("~/models/Qwen2.5-14B").with_special_tokens(SpecialTokens.nextstep1())

Special tokens are added tokens flagged ``special`` in the file: BPE never splits them
(``encode("<boi>")`` is one id), ``special_tokens`` maps each to its id, and ``decode`` writes them
back verbatim (``skip_special_tokens=True`` drops them). ``encode`` adds nothing on its own: BOS/EOS
only with ``bos=True``/``eos=True``, for a tokenizer whose ``SpecialTokens`` names them.

``SpecialTokens`` describes the special strings a model uses and the role of each (pad, BOS, EOS,
image begin/end, NextStep-1's image-area and placeholder tokens, thinking). It is a config: it
travels in a checkpoint's JSON and a ``tokenizer.json`` need not know the roles.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import attrs
import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from nxcore.checkpoint.atomic import as_path, atomic_write_text
from nxcore.config import Config, config
from nxcore.tokenizer.protocol import TextTokenizer
from nxcore.typing import Bool, Int

__all__ = ["BPETokenizer", "SpecialTokens", "TokenBatch"]

TOKENIZER_FILE = "tokenizer.json"
_ROLES = ("pad", "bos", "eos", "image_area", "boi", "eoi", "image_placeholder")
_THINK_ROLES = ("think_begin", "think_end")


def _optional_token(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(
            f"{type(instance).__qualname__}.{attribute.name} = {value!r} is not allowed; expected a "
            "non-empty string (the special token's text) or None"
        )


def _as_tuple(value: object) -> tuple:
    if isinstance(value, str):
        raise TypeError(
            f"extra must be a tuple of special-token strings, got the single string {value!r}; "
            f"wrap it: ({value!r},)"
        )
    return tuple(value)


def _token_tuple(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(
            f"{type(instance).__qualname__}.{attribute.name} = {value!r} is not allowed; expected a "
            "tuple of non-empty strings"
        )


@config
class SpecialTokens(Config):
    """The special strings of a model, by role; every field is optional.

    ``strings`` lists them in a fixed order: pad, bos, eos, image_area, boi, eoi, image_placeholder,
    then ``extra``, then think_begin, think_end. That is the order in which NextStep-1 added its
    tokens to Qwen2.5 (``[PAD]`` = 151665, ``<|image_area|>`` = 151666, ``<|begin_of_image|>`` =
    151667, ...), so ``with_special_tokens(SpecialTokens.nextstep1())`` on a Qwen2.5 tokenizer gives
    NextStep-1's ids. A string may fill two roles (e.g. pad = eos); it is listed once.
    """

    pad: str | None = attrs.field(default=None, validator=_optional_token)
    bos: str | None = attrs.field(default=None, validator=_optional_token)
    eos: str | None = attrs.field(default=None, validator=_optional_token)
    image_area: str | None = attrs.field(default=None, validator=_optional_token)
    boi: str | None = attrs.field(default=None, validator=_optional_token)
    eoi: str | None = attrs.field(default=None, validator=_optional_token)
    image_placeholder: str | None = attrs.field(default=None, validator=_optional_token)
    think_begin: str | None = attrs.field(default=None, validator=_optional_token)
    think_end: str | None = attrs.field(default=None, validator=_optional_token)
    extra: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_token_tuple)

    @classmethod
    def nextflow(cls) -> SpecialTokens:
        """NextFlow: pad, image begin/end around each image's codes, and a thinking span for
        think-before-drawing."""
        return cls(pad="<pad>", boi="<boi>", eoi="<eoi>", think_begin="<think>", think_end="</think>")

    @classmethod
    def nextstep1(cls) -> SpecialTokens:
        """NextStep-1 (the tokens it adds to Qwen2.5). An image is written
        ``<|image_area|>`` + ``"{h}*{w}"`` + ``<|begin_of_image|>`` + h*w ``<|image_placeholder|>``
        + ``<|end_of_image|>``; the placeholders' embeddings are replaced by projected latents."""
        return cls(
            pad="[PAD]",
            image_area="<|image_area|>",
            boi="<|begin_of_image|>",
            eoi="<|end_of_image|>",
            image_placeholder="<|image_placeholder|>",
            extra=("<|begin_of_prompt_refinement|>", "<|end_of_prompt_refinement|>"),
            think_begin="<|begin_of_thinking|>",
            think_end="<|end_of_thinking|>",
        )

    @classmethod
    def of(cls, strings: Iterable[str]) -> SpecialTokens:
        """Special strings without roles."""
        if isinstance(strings, str):
            raise TypeError(
                f"strings must be an iterable of special-token strings, got the single string {strings!r}; "
                f"wrap it in a list: [{strings!r}]"
            )
        return cls(extra=tuple(strings))

    @property
    def strings(self) -> tuple[str, ...]:
        ordered = [getattr(self, r) for r in _ROLES] + list(self.extra)
        ordered += [getattr(self, r) for r in _THINK_ROLES]
        return tuple(dict.fromkeys(s for s in ordered if s is not None))

    def image_string(self, h: int, w: int) -> str:
        """NextStep-1's text for one h x w token grid: image area, ``"h*w"``, begin-of-image, h*w
        placeholders, end-of-image (needs image_area, boi, image_placeholder and eoi)."""
        missing = [r for r in ("image_area", "boi", "image_placeholder", "eoi") if getattr(self, r) is None]
        if missing:
            raise ValueError(
                f"image_string needs the roles {missing}, which this SpecialTokens leaves unset; use "
                "SpecialTokens.nextstep1() or set them"
            )
        for name, value in (("h", h), ("w", w)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1 (token-grid side), got {value!r}")
        return f"{self.image_area}{h}*{w}{self.boi}{self.image_placeholder * (h * w)}{self.eoi}"


@attrs.frozen(eq=False)
class TokenBatch:
    """Padded token ids [batch, seq] and the attention mask (True on real tokens)."""

    ids: Int[Tensor, "batch seq"]
    attention_mask: Bool[Tensor, "batch seq"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        return self.attention_mask.sum(-1)


def _byte_level_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _special(text: str) -> AddedToken:
    return AddedToken(text, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False)


def _checked_corpus(corpus: Iterable[str]) -> Iterator[str]:
    for i, item in enumerate(corpus):
        if not isinstance(item, str):
            raise TypeError(
                f"corpus item {i} is a {type(item).__name__} ({item!r:.40}); the corpus must yield str"
            )
        yield item


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class BPETokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` as an nx ``TextTokenizer``, plus the roles of its specials.

    ``vocab_size`` is one past the largest id of the file (base vocabulary and added tokens). A
    ``SpecialTokens`` passed here names roles (pad, BOS, ...) among the file's special tokens; every
    string it lists must be a special of the file (add missing ones with ``with_special_tokens``).
    """

    def __init__(self, tokenizer: Tokenizer, special_tokens: SpecialTokens | None = None) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}; load a file "
                "with BPETokenizer.from_file(path)"
            )
        specials = SpecialTokens() if special_tokens is None else special_tokens
        if not isinstance(specials, SpecialTokens):
            raise TypeError(
                f"special_tokens must be a SpecialTokens or None, got {type(specials).__name__}; wrap "
                "plain strings with SpecialTokens.of([...])"
            )
        self._tok = tokenizer
        self.specials = specials
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values(), default=-1) + 1
        added = tokenizer.get_added_tokens_decoder()
        self._added: dict[int, str] = {i: t.content for i, t in added.items()}
        self._special: dict[str, int] = {t.content: i for i, t in sorted(added.items()) if t.special}
        missing = [s for s in specials.strings if s not in self._special]
        if missing:
            raise ValueError(
                f"special_tokens names {missing}, which the tokenizer does not have as special tokens; "
                "add them with BPETokenizer(...).with_special_tokens(special_tokens) or train with them"
            )

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        corpus: Iterable[str],
        vocab_size: int,
        *,
        special_tokens: SpecialTokens | Sequence[str] | None = None,
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Byte-level BPE trained on ``corpus`` (any iterable of str, read once).

        The vocabulary holds the special tokens first (ids 0..S-1, in ``SpecialTokens.strings``
        order), then the 256 byte tokens, then merges up to ``vocab_size`` in all (fewer when the
        corpus runs out of pairs seen ``min_frequency`` times). ``special_tokens`` defaults to
        ``SpecialTokens.nextflow()``.
        """
        if special_tokens is None:
            special_tokens = SpecialTokens.nextflow()
        elif not isinstance(special_tokens, SpecialTokens):
            special_tokens = SpecialTokens.of(special_tokens)
        strings = special_tokens.strings
        floor = 256 + len(strings)
        if not _is_index(vocab_size) or vocab_size < floor:
            raise ValueError(
                f"vocab_size must be an int >= {floor} (256 byte tokens + {len(strings)} special tokens), "
                f"got {vocab_size!r}; raise vocab_size"
            )
        if not _is_index(min_frequency) or min_frequency < 0:
            raise ValueError(f"min_frequency must be an int >= 0, got {min_frequency!r}")
        if isinstance(corpus, str):
            raise TypeError(
                "corpus must be an iterable of str, got a single str; pass [text] or a list of lines"
            )
        tok = _byte_level_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[_special(s) for s in strings],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(_checked_corpus(corpus), trainer=trainer)
        return cls(tok, special_tokens)

    @classmethod
    def from_file(cls, path: str | os.PathLike, special_tokens: SpecialTokens | None = None) -> BPETokenizer:
        """Load a ``tokenizer.json`` (or a directory holding one), e.g. a local Qwen2.5 checkpoint.

        The file's added tokens flagged ``special`` become ``special_tokens``; its normalizer,
        pre-tokenizer and decoder are used as they are (Qwen's NFC normalizer included).
        """
        file = Path(as_path(path, "path")).expanduser()
        if file.is_dir():
            file = file / TOKENIZER_FILE
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {file}; pass the path of a tokenizer.json (or of the directory "
                "that holds it)"
            )
        text = file.read_text(encoding="utf-8")
        try:
            tok = Tokenizer.from_str(text)
        except Exception as err:  # tokenizers raises a bare Exception for malformed files
            raise ValueError(
                f"{file} is not a valid tokenizer.json ({err}); save one with BPETokenizer.save or "
                "tokenizers.Tokenizer.save"
            ) from err
        return cls(tok, special_tokens)

    def with_special_tokens(self, special_tokens: SpecialTokens) -> BPETokenizer:
        """A copy whose roles are ``special_tokens``; strings the file lacks are added as special
        tokens, in ``strings`` order, after its largest id. The original is left unchanged."""
        if not isinstance(special_tokens, SpecialTokens):
            raise TypeError(
                f"special_tokens must be a SpecialTokens, got {type(special_tokens).__name__}; wrap plain "
                "strings with SpecialTokens.of([...])"
            )
        tok = Tokenizer.from_str(self._tok.to_str())
        missing = [s for s in special_tokens.strings if s not in self._special]
        vocab = tok.get_vocab(with_added_tokens=True)
        for text in missing:
            if text in vocab:
                raise ValueError(
                    f"{text!r} is already an ordinary token of this tokenizer; a special token must be "
                    "new text (choose another string for it)"
                )
        tok.add_special_tokens([_special(s) for s in missing])
        return type(self)(tok, special_tokens)

    @classmethod
    def examples(cls) -> list[BPETokenizer]:
        corpus = [
            "a red circle above a blue square",
            "two green triangles to the left of a yellow star",
            "The picture shows three purple crosses.",
            "Grass is green, so the circle is green.",
        ] * 3
        return [
            cls.train(corpus, 300),
            cls.train(corpus, 320, special_tokens=SpecialTokens.nextstep1(), min_frequency=1),
        ]

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` atomically to ``path`` (a file, or a directory to hold it);
        return the file written. The roles (``self.specials``) are not part of the file."""
        file = Path(as_path(path, "path")).expanduser()
        if file.is_dir():
            file = file / TOKENIZER_FILE
        atomic_write_text(file, self._tok.to_str(pretty=True))
        return file

    # --- the TextTokenizer contract ----------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (do not add tokens to it; use with_special_tokens)."""
        return self._tok

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return dict(self._special)

    def special_id(self, name: str) -> int:
        """The id of special token ``name`` (its text, e.g. ``"<boi>"``)."""
        if name not in self._special:
            raise ValueError(
                f"unknown special token {name!r}; this tokenizer's special tokens are "
                f"{sorted(self._special)}. Add it with with_special_tokens(...)"
            )
        return self._special[name]

    def _role_id(self, role: str) -> int | None:
        text = getattr(self.specials, role)
        return None if text is None else self._special[text]

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    def _ends(self, bos: bool, eos: bool) -> tuple[list[int], list[int]]:
        head, tail = [], []
        for flag, role, out in ((bos, "bos", head), (eos, "eos", tail)):
            if flag:
                token = self._role_id(role)
                if token is None:
                    raise ValueError(
                        f"{role}=True but this tokenizer has no {role.upper()} token; load or train it "
                        f"with special_tokens=SpecialTokens({role}=...) or pass {role}=False"
                    )
                out.append(token)
        return head, tail

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; BOS/EOS only when asked."""
        if not isinstance(text, str):
            raise TypeError(
                f"text must be a str, got {type(text).__name__}; use encode_batch for several texts"
            )
        head, tail = self._ends(bos, eos)
        return head + self._tok.encode(text, add_special_tokens=False).ids + tail

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        side: Literal["right", "left"] = "right",
        pad_id: int | None = None,
        bos: bool = False,
        eos: bool = False,
    ) -> TokenBatch:
        """Encode ``texts`` and pad them to the longest with ``pad_id`` (default: the pad role's
        id) on the ``side`` given; ``attention_mask`` is True on real tokens."""
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise TypeError(
                f"texts must be a non-empty sequence of str, got {texts!r:.60}; use encode for one text"
            )
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        if pad_id is None:
            pad_id = self.pad_id
            if pad_id is None:
                raise ValueError(
                    "this tokenizer has no pad token; pass pad_id=... or give it "
                    "special_tokens=SpecialTokens(pad=...)"
                )
        elif not _is_index(pad_id) or not 0 <= pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be an int in [0, {self.vocab_size}), got {pad_id!r}")
        head, tail = self._ends(bos, eos)
        rows = [head + e.ids + tail for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), longest), dtype=torch.bool)
        for b, row in enumerate(rows):
            where = slice(0, len(row)) if side == "right" else slice(longest - len(row), longest)
            ids[b, where] = torch.tensor(row, dtype=torch.int64)
            mask[b, where] = True
        return TokenBatch(ids, mask)

    def _check_ids(self, ids: Sequence[int] | Tensor) -> list[int]:
        if isinstance(ids, Tensor):
            if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
                raise TypeError(
                    f"ids must be a 1-D integer tensor or a sequence of int, got a {ids.dtype} tensor of "
                    f"shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
            raise TypeError(f"ids must be a sequence of int, got {type(ids).__name__}")
        out = list(ids)
        for i, value in enumerate(out):
            if not _is_index(value):
                raise TypeError(f"ids[{i}] = {value!r} is a {type(value).__name__}; ids must be int")
            if not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"ids[{i}] = {value} is outside [0, vocab_size={self.vocab_size}); this id does not "
                    "belong to this tokenizer (visual-code ids map back through Vocabulary.id_to_code)"
                )
        return out

    def decode(self, ids: Sequence[int] | Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Added tokens are written verbatim and the runs between them go through
        the file's decoder, so a special's text never passes through the byte map."""
        values = self._check_ids(ids)
        parts: list[str] = []
        run: list[int] = []
        for value in values:
            added = self._added.get(value)
            if added is None:
                run.append(value)
                continue
            if run:
                parts.append(self._tok.decode(run, skip_special_tokens=False))
                run = []
            if not (skip_special_tokens and added in self._special):
                parts.append(added)
        if run:
            parts.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(parts)

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, special_tokens={len(self._special)})"

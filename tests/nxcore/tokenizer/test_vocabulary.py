"""Vocabulary: the unified id layout (text, visual codes, tail specials, padding) and its JSON record."""

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nxcore.config import Config
from nxcore.tokenizer import BPETokenizer, SpecialTokens, Vocabulary

CORPUS = ["a red circle above a blue square", "two green stars", "The picture shows a cross."] * 2


@functools.cache
def nextflow_tokenizer() -> BPETokenizer:
    return BPETokenizer.train(CORPUS, 300, special_tokens=SpecialTokens.nextflow())


@st.composite
def vocabularies(draw) -> Vocabulary:
    text_size = draw(st.integers(1, 60))
    names = draw(st.lists(st.text(min_size=1, max_size=4), unique=True, max_size=6))
    split = draw(st.integers(0, min(len(names), text_size)))
    ids = draw(st.lists(st.integers(0, text_size - 1), unique=True, min_size=split, max_size=split))
    return Vocabulary(
        text_size=text_size,
        codebook_size=draw(st.integers(1, 70)),
        text_specials=tuple(zip(names[:split], ids, strict=True)),
        tail_specials=tuple(names[split:]),
        pad_to_multiple_of=draw(st.sampled_from([1, 2, 8, 64, 128])),
    )


@given(vocabularies())
def test_ranges_are_disjoint_and_cover_the_padded_vocabulary(vocab):
    ranges = [vocab.text_range, vocab.code_range, vocab.special_range, vocab.padding_range]
    assert ranges[0][0] == 0 and ranges[-1][1] == vocab.padded_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    assert vocab.code_range[1] - vocab.code_range[0] == vocab.codebook_size
    assert vocab.special_range[1] - vocab.special_range[0] == len(vocab.tail_specials)
    assert vocab.padded_size % vocab.pad_to_multiple_of == 0
    assert 0 <= vocab.padded_size - vocab.size < vocab.pad_to_multiple_of

    ids = torch.arange(-3, vocab.padded_size + 3)
    text, code, valid = vocab.is_text(ids), vocab.is_code(ids), vocab.is_valid(ids)
    tail = (ids >= vocab.special_range[0]) & (ids < vocab.special_range[1])
    assert not (text & code).any() and not (text & tail).any() and not (code & tail).any()
    assert torch.equal(text | code | tail, valid)  # every valid id is exactly one of the three
    assert torch.equal(valid, (ids >= 0) & (ids < vocab.size))  # padding and negatives are invalid
    assert torch.equal(vocab.valid_mask(), valid[3 : 3 + vocab.padded_size])


@given(vocabularies())
def test_every_special_has_one_id_of_its_own(vocab):
    table = vocab.special_tokens
    assert len(table) == len(vocab.text_specials) + len(vocab.tail_specials)
    assert len(set(table.values())) == len(table)
    ids = torch.tensor(sorted(table.values()), dtype=torch.long)
    if len(table):
        assert vocab.is_special(ids).all() and vocab.is_valid(ids).all()
        assert not vocab.is_code(ids).any()
    for name, index in vocab.text_specials:
        assert vocab.special_id(name) == index
    for i, name in enumerate(vocab.tail_specials):
        assert vocab.special_id(name) == vocab.special_range[0] + i
    others = torch.arange(vocab.padded_size)[~torch.isin(torch.arange(vocab.padded_size), ids)]
    assert not vocab.is_special(others).any()


@given(vocabularies(), st.integers(0, 2**16))
def test_code_to_id_and_id_to_code_are_inverse(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, vocab.codebook_size, (2, 3, 4), generator=gen, dtype=torch.int32)
    ids = vocab.code_to_id(codes)
    assert ids.dtype == torch.int64 and ids.shape == codes.shape
    assert vocab.is_code(ids).all()
    assert torch.equal(vocab.id_to_code(ids), codes.long())
    every = torch.arange(*vocab.code_range)
    assert torch.equal(vocab.code_to_id(vocab.id_to_code(every)), every)
    assert torch.equal(vocab.id_to_code(every), torch.arange(vocab.codebook_size))


@given(vocabularies())
def test_json_round_trip(vocab):
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert Config.from_dict(vocab.to_dict()) == vocab


def test_save_and_load(tmp_path):
    vocab = Vocabulary.from_tokenizer(nextflow_tokenizer(), 4096, SpecialTokens.nextflow(), pad_to_multiple_of=128)
    vocab.save(tmp_path / "vocabulary.json")
    assert Vocabulary.load(tmp_path / "vocabulary.json") == vocab


def test_specials_the_tokenizer_has_keep_their_text_ids():
    tok = nextflow_tokenizer()
    specials = SpecialTokens.nextflow().replace(extra=("<mask>", "<sep>"))
    vocab = Vocabulary.from_tokenizer(tok, 100, specials, pad_to_multiple_of=64)
    assert vocab.text_range == (0, tok.vocab_size) == (0, 300)
    assert vocab.code_range == (300, 400)
    for s in SpecialTokens.nextflow().strings:  # one id per string: the tokenizer's
        assert vocab.special_id(s) == tok.special_id(s) == tok.encode(s)[0]
    assert vocab.special_range == (400, 402)
    assert (vocab.special_id("<mask>"), vocab.special_id("<sep>")) == (400, 401)
    assert (vocab.size, vocab.padded_size, vocab.padding_range) == (402, 448, (402, 448))


def test_specials_the_tokenizer_lacks_go_to_the_tail_in_order():
    tok = nextflow_tokenizer()
    specials = SpecialTokens.nextstep1()
    vocab = Vocabulary.from_tokenizer(tok, 16, specials)
    assert vocab.tail_specials == specials.strings
    assert [vocab.special_id(s) for s in specials.strings] == list(range(316, 316 + len(specials.strings)))
    assert vocab.special_id("<boi>") == tok.special_id("<boi>")  # the tokenizer's own specials stay too


def test_a_mixed_sequence_splits_into_text_and_codes():
    tok = nextflow_tokenizer()
    vocab = Vocabulary.from_tokenizer(tok, 64, SpecialTokens.nextflow(), pad_to_multiple_of=64)
    codes = torch.tensor([[5, 0], [63, 7]])
    seq = torch.cat([
        torch.tensor(tok.encode("a red circle")),
        torch.tensor([vocab.special_id("<boi>")]),
        vocab.code_to_id(codes).flatten(),
        torch.tensor([vocab.special_id("<eoi>")]),
    ])
    assert torch.equal(vocab.id_to_code(seq[vocab.is_code(seq)]), codes.flatten())
    assert tok.decode(seq[vocab.is_text(seq)].tolist()) == "a red circle<boi><eoi>"
    logits = torch.randn(seq.numel(), vocab.padded_size)
    start, end = vocab.code_range
    assert logits[:, start:end].shape[1] == vocab.codebook_size  # the visual-code slice of the loss
    vocab.check_ids(seq, name="targets")


# --- errors ---------------------------------------------------------------------------------------------

VOCAB = Vocabulary(text_size=50, codebook_size=100, text_specials=(("<boi>", 1),), tail_specials=("<x>",),
                   pad_to_multiple_of=64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: VOCAB.code_to_id(torch.tensor([3, 100])), ValueError,
         r"codes contains 100, outside \[0, codebook_size=100\); pass codebook indices"),
        (lambda: VOCAB.code_to_id(torch.tensor([-1])), ValueError, "codes contains -1"),
        (lambda: VOCAB.code_to_id(torch.tensor([1.0])), TypeError, "codes must have an integer dtype"),
        (lambda: VOCAB.id_to_code(torch.tensor([60, 3])), ValueError,
         r"ids contains 3, a text id, in \[0, 50\); id_to_code takes only visual-code ids in \[50, 150\)"),
        (lambda: VOCAB.id_to_code(torch.tensor([150])), ValueError, r"ids contains 150, a tail special id, in \[150, 151\)"),
        (lambda: VOCAB.id_to_code(torch.tensor([160])), ValueError,
         r"ids contains 160, a padding id, in \[151, 192\), which pads the head to a multiple of 64"),
        (lambda: VOCAB.id_to_code(torch.tensor([True])), TypeError, "ids must have an integer dtype"),
        (lambda: VOCAB.is_code([1, 2]), TypeError, "ids must be a torch.Tensor, got list"),
        (lambda: VOCAB.check_ids(torch.tensor([0, 170]), name="targets"), ValueError,
         r"targets contains 170, a padding id.*never a valid id; valid ids are \[0, 151\)"),
        (lambda: VOCAB.check_ids(torch.tensor([-5])), ValueError, r"ids contains -5, outside the vocabulary \[0, 151\)"),
        (lambda: VOCAB.special_id("<eoi>"), ValueError, r"unknown special token '<eoi>'.*\['<boi>', '<x>'\]"),
        (lambda: Vocabulary(text_size=0, codebook_size=4), ValueError, r"Vocabulary\.text_size = 0 is not allowed"),
        (lambda: Vocabulary(text_size=4, codebook_size=4, pad_to_multiple_of=0), ValueError,
         r"Vocabulary\.pad_to_multiple_of = 0 is not allowed"),
        (lambda: Vocabulary(text_size=4, codebook_size=4, text_specials={"<boi>": 4}), ValueError,
         r"gives '<boi>' the id 4, outside the text range \[0, 4\); .* belongs in tail_specials"),
        (lambda: Vocabulary(text_size=4, codebook_size=4, text_specials={"<a>": 1, "<b>": 1}), ValueError,
         r"repeats '<b>' or its id 1"),
        (lambda: Vocabulary(text_size=4, codebook_size=4, text_specials={"<a>": 1}, tail_specials=("<a>",)),
         ValueError, r"tail_specials repeats '<a>', which already has an id"),
        (lambda: Vocabulary(text_size=4, codebook_size=4, tail_specials="<a>"), TypeError,
         "tail_specials must be a tuple of special strings"),
        (lambda: Vocabulary.from_tokenizer("tokenizer.json", 16), TypeError, "tokenizer must implement TextTokenizer"),
        (lambda: Vocabulary.from_tokenizer(nextflow_tokenizer(), 0), ValueError, r"Vocabulary\.codebook_size = 0"),
    ],
)
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_check_ids_lets_the_ignore_index_through():
    targets = torch.tensor([3, -100, 60])
    assert VOCAB.check_ids(targets, name="targets", ignore_index=-100) is targets
    with pytest.raises(ValueError, match="targets contains -100"):
        VOCAB.check_ids(targets, name="targets")

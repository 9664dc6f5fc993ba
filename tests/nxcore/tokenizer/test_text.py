"""BPETokenizer and SpecialTokens: round trips, atomic specials, save/load, Qwen-style files, batching."""

import functools
import json
import pickle

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from nxcore.config import Config
from nxcore.testing.check_tokenizer import check_text_tokenizer
from nxcore.tokenizer import BPETokenizer, SpecialTokens, TokenBatch

NEXTFLOW = SpecialTokens.nextflow()
SPECIAL_STRINGS = NEXTFLOW.strings


@functools.cache
def corpus() -> tuple[str, ...]:
    from nxrecipes.data.shapeworld.corpus import text_corpus

    return tuple(text_corpus(60))


@functools.cache
def shapeworld_tokenizer() -> BPETokenizer:
    return BPETokenizer.train(corpus(), vocab_size=600, special_tokens=NEXTFLOW)


# --- a Qwen2.5-style tokenizer.json, written by hand -------------------------------------------------

QWEN_SPECIALS = {"<|endoftext|>": 260, "<|im_start|>": 261, "<|im_end|>": 262}


def _added(i, content, special):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def qwen_style_json() -> dict:
    """Byte-level BPE behind a regex split and an NFC normalizer, with added tokens after the base
    vocabulary (special ones, and a non-special one like Qwen's ``<tool_call>``)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges = ["Ġ t", "h e", "Ġt he", "i n"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, s, True) for s, i in QWEN_SPECIALS.items()] + [_added(263, "<tool_call>", False)],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": r"\s?\p{L}+|\s?\p{N}|\s?[^\s\p{L}\p{N}]+|\s+"},
             "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


@pytest.fixture
def qwen_dir(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(qwen_style_json()))
    return tmp_path


# --- round trips and specials -------------------------------------------------------------------------

@given(st.text())
@example("")
@example("\x00\t\r\n \u00a0\u200b\ufeff")
@example("e\u0301 \u00e9 \ufb01 \u212b")  # combining mark, precomposed, ligature, Angstrom sign: kept as is
@example("\U0001f469\u200d\U0001f467 \u65e5\u672c\u8a9e \u0627\u0644\u0639\u0631\u0628\u064a\u0629")
@example("<bo i> <boi <|endoftext|> <BOI>")  # near-misses and another model's specials are plain text
def test_any_text_round_trips(text):
    tok = shapeworld_tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@given(st.lists(st.text(max_size=12), min_size=1, max_size=4), st.lists(st.sampled_from(SPECIAL_STRINGS), min_size=3,
                                                                          max_size=3))
def test_specials_are_single_ids_between_independently_encoded_text(pieces, specials):
    tok = shapeworld_tokenizer()
    text, expected = pieces[0], tok.encode(pieces[0])
    for special, piece in zip(specials, pieces[1:], strict=False):
        text += special + piece
        expected += [tok.special_id(special)] + tok.encode(piece)
    assert tok.encode(text) == expected
    assert tok.decode(expected) == text
    plain = "".join(pieces[: len(specials) + 1])
    assert tok.decode(expected, skip_special_tokens=True) == plain


def test_special_tokens_come_first_in_preset_order_and_never_split():
    tok = shapeworld_tokenizer()
    assert tok.special_tokens == {s: i for i, s in enumerate(SPECIAL_STRINGS)}
    assert SPECIAL_STRINGS == ("<pad>", "<boi>", "<eoi>", "<think>", "</think>")
    for s in SPECIAL_STRINGS:
        assert tok.encode(s) == [tok.special_id(s)]
    assert tok.encode("a red circle<boi><eoi>")[-2:] == [1, 2]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, None, None)


def test_non_ascii_specials_round_trip_verbatim():
    specials = SpecialTokens.of(["<é>", "<a b>", "<图>"])
    tok = BPETokenizer.train(["x y z"], 300, special_tokens=specials, min_frequency=1)
    text = "<é>naïve <a b>日本<图>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert [tok.special_id(s) for s in specials.strings] == [0, 1, 2]


def test_training_learns_merges_and_respects_vocab_size():
    tok = shapeworld_tokenizer()
    assert 256 + len(SPECIAL_STRINGS) < tok.vocab_size <= 600
    text = " ".join(corpus())
    assert len(tok.encode(text)) < 0.4 * len(text.encode("utf-8"))
    again = BPETokenizer.train(corpus(), vocab_size=600, special_tokens=NEXTFLOW)
    assert again.tokenizer.to_str() == tok.tokenizer.to_str()


def test_bos_and_eos_only_when_asked():
    specials = SpecialTokens(pad="<pad>", bos="<s>", eos="</s>", boi="<boi>", eoi="<eoi>")
    tok = BPETokenizer.train(corpus()[:50], 300, special_tokens=specials)
    plain = tok.encode("a red circle")
    assert tok.special_id("<s>") not in plain and tok.special_id("</s>") not in plain
    assert tok.encode("a red circle", bos=True, eos=True) == [tok.bos_id, *plain, tok.eos_id]


def test_pickles_for_data_loader_workers():
    tok = shapeworld_tokenizer()
    back = pickle.loads(pickle.dumps(tok))
    assert back.specials == tok.specials and back.pad_id == tok.pad_id
    assert [back.encode(t) for t in corpus()[:30]] == [tok.encode(t) for t in corpus()[:30]]


def test_conforms_to_the_text_tokenizer_contract():
    check_text_tokenizer(shapeworld_tokenizer(), corpus()[:20])


# --- save / load ----------------------------------------------------------------------------------------

def test_save_and_load_give_the_same_ids(tmp_path):
    tok = shapeworld_tokenizer()
    written = tok.save(tmp_path)
    assert written == tmp_path / "tokenizer.json"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # nothing left from the atomic write
    back = BPETokenizer.from_file(written, special_tokens=NEXTFLOW)
    assert back.vocab_size == tok.vocab_size
    assert back.special_tokens == tok.special_tokens
    assert back.pad_id == tok.pad_id
    assert [back.encode(t) for t in corpus()] == [tok.encode(t) for t in corpus()]
    tok.save(written)  # overwriting is fine
    assert BPETokenizer.from_file(tmp_path).encode("<boi>two stars") == tok.encode("<boi>two stars")


def test_special_tokens_config_round_trips_through_json():
    for specials in (SpecialTokens.nextflow(), SpecialTokens.nextstep1(), SpecialTokens.of(["<x>"])):
        assert Config.from_json(specials.to_json()) == specials


# --- a local Qwen2.5-style tokenizer.json -------------------------------------------------------------

def test_qwen_style_file_loads_with_its_specials(qwen_dir):
    tok = BPETokenizer.from_file(qwen_dir)
    assert tok.special_tokens == QWEN_SPECIALS
    assert tok.vocab_size == 264
    assert tok.encode(" the") == [258]  # through the file's merges
    assert tok.encode("<tool_call>") == [263]  # an added non-special token is atomic too ...
    assert "<tool_call>" not in tok.special_tokens  # ... but not a special
    chat = "<|im_start|>user\nthe cat<|im_end|>"
    ids = tok.encode(chat)
    assert ids[0] == 261 and ids[-1] == 262
    assert tok.decode(ids) == chat
    assert tok.decode(ids, skip_special_tokens=True) == "user\nthe cat"
    assert tok.encode("e\u0301") == tok.encode("\u00e9")  # the file's NFC normalizer applies
    check_text_tokenizer(tok)


def test_qwen_style_file_with_roles(qwen_dir):
    roles = SpecialTokens(pad="<|endoftext|>", eos="<|im_end|>")
    tok = BPETokenizer.from_file(qwen_dir / "tokenizer.json", special_tokens=roles)
    assert tok.pad_id == 260
    assert tok.encode("hi", eos=True)[-1] == 262
    assert tok.encode_batch(["the", "in the cat"]).ids[0, -1].item() == 260


def test_nextstep1_specials_append_after_the_qwen_vocabulary(qwen_dir):
    qwen = BPETokenizer.from_file(qwen_dir)
    specials = SpecialTokens.nextstep1()
    tok = qwen.with_special_tokens(specials)
    # like NextStep-1 on Qwen2.5 (151665 ids): [PAD] = 151665, <|image_area|> = 151666, ...
    assert [tok.special_id(s) for s in specials.strings] == list(range(264, 264 + len(specials.strings)))
    assert tok.pad_id == tok.special_id("[PAD]") == 264
    assert qwen.vocab_size == 264 and "[PAD]" not in qwen.special_tokens  # the original is unchanged
    image = specials.image_string(2, 3)
    assert image == "<|image_area|>2*3<|begin_of_image|>" + "<|image_placeholder|>" * 6 + "<|end_of_image|>"
    ids = tok.encode("the cat" + image)
    assert ids[-8:] == [tok.special_id(specials.boi)] + [268] * 6 + [267]
    assert tok.decode(ids) == "the cat" + image
    assert tok.with_special_tokens(specials).special_tokens == tok.special_tokens  # nothing added twice


# --- batching -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_encoding_pads_on_the_side_asked(side):
    tok = shapeworld_tokenizer()
    texts = list(corpus()[:5]) + [""]
    batch = tok.encode_batch(texts, side=side)
    assert isinstance(batch, TokenBatch)
    assert batch.ids.dtype == torch.int64 and batch.attention_mask.dtype == torch.bool
    rows = [tok.encode(t) for t in texts]
    assert batch.ids.shape == (len(texts), max(map(len, rows)))
    assert batch.lengths.tolist() == [len(r) for r in rows]
    for b, row in enumerate(rows):
        mask = batch.attention_mask[b]
        assert batch.ids[b][mask].tolist() == row
        assert (batch.ids[b][~mask] == tok.pad_id).all()
        real = mask.nonzero().flatten().tolist()
        width = batch.ids.shape[1]
        assert real == (list(range(len(row))) if side == "right" else list(range(width - len(row), width)))


def test_batch_encoding_with_explicit_pad_and_ends():
    specials = SpecialTokens(pad="<pad>", bos="<s>", eos="</s>")
    tok = BPETokenizer.train(corpus()[:50], 300, special_tokens=specials)
    batch = tok.encode_batch(["a", "a red circle"], pad_id=7, bos=True, eos=True, side="left")
    assert batch.ids[0, : -3].eq(7).all()
    assert batch.ids[0, -3:].tolist() == [tok.bos_id, *tok.encode("a"), tok.eos_id]
    assert batch.ids[1].tolist() == tok.encode("a red circle", bos=True, eos=True)


# --- errors ---------------------------------------------------------------------------------------------

def _nextstep_without_roles():
    return SpecialTokens(boi="<boi>", eoi="<eoi>").image_string(2, 2)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t: t.special_id("<boj>"), ValueError, r"unknown special token '<boj>'.*'<boi>'"),
        (lambda t: t.decode([t.vocab_size]), ValueError, r"ids\[0\] = 600 is outside \[0, vocab_size=600\)"),
        (lambda t: t.decode([3, -1]), ValueError, r"ids\[1\] = -1 is outside"),
        (lambda t: t.decode([1.0]), TypeError, r"ids\[0\] = 1\.0 is a float; ids must be int"),
        (lambda t: t.decode(torch.zeros(2, 2, dtype=torch.long)), TypeError, r"1-D integer tensor"),
        (lambda t: t.decode("abc"), TypeError, "ids must be a sequence of int, got str"),
        (lambda t: t.encode(["a"]), TypeError, "text must be a str, got list; use encode_batch"),
        (lambda t: t.encode("a", bos=True), ValueError, "bos=True but this tokenizer has no BOS token"),
        (lambda t: t.encode_batch("a red circle"), TypeError, "texts must be a non-empty sequence of str"),
        (lambda t: t.encode_batch([]), TypeError, "texts must be a non-empty sequence of str"),
        (lambda t: t.encode_batch(["a", 3]), TypeError, r"texts\[1\] must be a str, got int"),
        (lambda t: t.encode_batch(["a"], side="middle"), ValueError, "side must be 'right' or 'left', got 'middle'"),
        (lambda t: t.encode_batch(["a"], pad_id=600), ValueError, r"pad_id must be an int in \[0, 600\), got 600"),
        (lambda t: BPETokenizer(t.tokenizer, SpecialTokens(eos="</s>")), ValueError,
         r"special_tokens names \['</s>'\], which the tokenizer does not have.*with_special_tokens"),
        (lambda t: BPETokenizer(t.tokenizer, ["<boi>"]), TypeError, r"SpecialTokens\.of"),
        (lambda t: BPETokenizer("tokenizer.json"), TypeError, r"BPETokenizer\.from_file"),
        (lambda t: t.with_special_tokens(SpecialTokens.of(["Ġ"])), ValueError, "already an ordinary token"),
        (lambda t: t.with_special_tokens(["<x>"]), TypeError, "special_tokens must be a SpecialTokens"),
    ],
)
def test_tokenizer_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(shapeworld_tokenizer())


def test_batch_without_pad_token_says_how_to_get_one():
    tok = BPETokenizer.train(["a b"], 260, special_tokens=SpecialTokens.of(["<boi>"]))
    with pytest.raises(ValueError, match=r"no pad token; pass pad_id=\.\.\. or give it special_tokens=SpecialTokens\(pad"):
        tok.encode_batch(["a"])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"corpus": ["a"], "vocab_size": 100}, ValueError,
         r"vocab_size must be an int >= 261 \(256 byte tokens \+ 5 special tokens\), got 100"),
        ({"corpus": ["a"], "vocab_size": 300.0}, ValueError, "vocab_size must be an int >= 261"),
        ({"corpus": ["a"], "vocab_size": 300, "min_frequency": -1}, ValueError, "min_frequency must be an int >= 0"),
        ({"corpus": "a red circle", "vocab_size": 300}, TypeError, "got a single str"),
        ({"corpus": ["a", 3], "vocab_size": 300}, TypeError, "corpus item 1 is a int"),
        ({"corpus": ["a"], "vocab_size": 300, "special_tokens": "<boi>"}, TypeError, "got the single string '<boi>'"),
    ],
)
def test_training_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        BPETokenizer.train(**kwargs)


def test_file_errors(tmp_path, qwen_dir):
    with pytest.raises(FileNotFoundError, match=r"no tokenizer file at .*missing\.json; pass the path"):
        BPETokenizer.from_file(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer file at .*empty/tokenizer\.json"):
        (tmp_path / "empty").mkdir()
        BPETokenizer.from_file(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not a valid tokenizer\.json"):
        BPETokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"special_tokens names \['<boi>', '<eoi>'\]"):
        BPETokenizer.from_file(qwen_dir, special_tokens=SpecialTokens(boi="<boi>", eoi="<eoi>"))
    with pytest.raises(TypeError, match=r"path must be a path \(str or os\.PathLike\), got int"):
        BPETokenizer.from_file(3)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: SpecialTokens(boi=""), ValueError, r"SpecialTokens\.boi = '' is not allowed; expected a non-empty"),
        (lambda: SpecialTokens(pad=0), ValueError, r"SpecialTokens\.pad = 0 is not allowed"),
        (lambda: SpecialTokens(extra="<x>"), TypeError, r"got the single string '<x>'; wrap it"),
        (lambda: SpecialTokens(extra=("<x>", "")), ValueError, r"SpecialTokens\.extra .* tuple of non-empty strings"),
        (lambda: SpecialTokens.of("<x>"), TypeError, r"wrap it in a list"),
        (_nextstep_without_roles, ValueError, r"image_string needs the roles \['image_area', 'image_placeholder'\]"),
        (lambda: SpecialTokens.nextstep1().image_string(0, 2), ValueError, "h must be an int >= 1"),
    ],
)
def test_special_tokens_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_shared_strings_are_listed_once():
    specials = SpecialTokens(pad="<|endoftext|>", eos="<|endoftext|>", extra=("<x>",))
    assert specials.strings == ("<|endoftext|>", "<x>")

import pytest

from nxrecipes.data.shapeworld import FACTS
from nxrecipes.data.shapeworld.corpus import text_corpus


def test_corpus_is_deterministic_and_covers_every_kind_of_text():
    a, b = text_corpus(5, seed=3), text_corpus(5, seed=3)
    assert a == b
    assert a[: len(FACTS)] == list(FACTS)
    assert len(a) == len(FACTS) + 5 * 6
    assert all(isinstance(s, str) and s for s in a)
    assert text_corpus(5, seed=4) != a


def test_bad_num_names_the_argument():
    with pytest.raises(ValueError, match="num must be an int >= 0"):
        text_corpus(-1)

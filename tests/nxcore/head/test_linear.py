import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from nxcore.head import IGNORE_INDEX, LinearHead, SplitHead
from nxcore.testing import strategies as nxst


@given(nxst.named_tensors("tokens dim", sizes={"dim": 6}), st.integers(1, 9), st.integers(0, 2**16))
def test_linear_head_is_cross_entropy_of_a_projection(tensors, vocab, seed):
    (hidden,) = tensors
    torch.manual_seed(seed)
    head = LinearHead(6, vocab)
    targets = torch.randint(0, vocab, (hidden.shape[0],))
    expected = F.cross_entropy(hidden @ head.proj.weight.T, targets)
    torch.testing.assert_close(head.loss(hidden, targets), expected)


@given(nxst.named_tensors("tokens dim", sizes={"dim": 5}), st.integers(0, 2**16))
def test_split_head_scores_each_row_within_its_range(tensors, seed):
    (hidden,) = tensors
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = SplitHead(5, (3, 4))
    targets = torch.randint(0, 7, (hidden.shape[0],), generator=gen)
    logits = head.predict(hidden)
    expected = []
    for row, t in zip(logits, targets.tolist(), strict=True):
        part, local = (row[:3], t) if t < 3 else (row[3:], t - 3)
        expected.append(-torch.log_softmax(part, -1)[local])
    torch.testing.assert_close(head.loss(hidden, targets), torch.stack(expected).mean())


def test_split_head_equals_linear_head_on_one_range():
    torch.manual_seed(0)
    split = SplitHead(4, (6,))
    linear = LinearHead(4, 6)
    linear.proj.weight.data.copy_(split.heads[0].weight.data)
    hidden, targets = torch.randn(5, 4), torch.tensor([0, 5, IGNORE_INDEX, 2, 3])
    torch.testing.assert_close(split.loss(hidden, targets), linear.loss(hidden, targets))
    torch.testing.assert_close(split.predict(hidden), linear.predict(hidden))


@pytest.mark.parametrize(
    ("hidden", "targets", "weights", "error", "message"),
    [
        (torch.randn(3, 5), torch.zeros(3, dtype=torch.long), None, ValueError, "width 5 but the head expects dim=4"),
        (torch.randn(3, 4), torch.zeros(2, dtype=torch.long), None, ValueError, "targets has 2 rows but hidden has 3"),
        (torch.randn(3, 4), torch.tensor([0, 1, 9]), None, ValueError, r"targets contains 9, outside \[0, 6\)"),
        (torch.randn(3, 4), torch.zeros(3), None, TypeError, "targets must have an integer dtype"),
        (torch.randn(3, 4), torch.zeros(3, dtype=torch.long), -torch.ones(3), ValueError, "weights must be finite and >= 0"),
        (torch.randn(3, 4), torch.zeros(3, dtype=torch.long), torch.ones(2), ValueError, "weights has 2 rows"),
        (torch.randn(2, 3, 4), torch.zeros(3, dtype=torch.long), None, ValueError, "hidden must have 2 dimensions"),
    ],
)
def test_bad_inputs(hidden, targets, weights, error, message):
    with pytest.raises(error, match=message):
        LinearHead(4, 6).loss(hidden, targets, weights)


def test_split_head_rejects_empty_ranges():
    with pytest.raises(ValueError, match=r"range_sizes must be one or more sizes >= 1, got \(3, 0\)"):
        SplitHead(4, (3, 0))


@pytest.mark.parametrize("start,stop", [(0, 23), (23, 34), (20, 26), (5, 6), (0, 34)])
def test_split_head_predict_range_crosses_ranges(start, stop):
    head = SplitHead(16, (23, 11), bias=True)
    hidden = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(head.predict_range(hidden, start, stop), head.predict(hidden)[:, start:stop])


@pytest.mark.parametrize(
    "start,stop,error,message",
    [(3, 3, ValueError, r"\[3, 3\)"), (-1, 4, ValueError, "0 <= start"), (0, 38, ValueError, "vocab_size"),
     (0.5, 4, TypeError, "start must be an int")],
)
def test_predict_range_rejects_bad_ranges(start, stop, error, message):
    with pytest.raises(error, match=message):
        LinearHead(16, 37).predict_range(torch.zeros(2, 16), start, stop)

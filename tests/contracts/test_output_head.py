"""Every OutputHead in nx passes the conformance check; the check rejects broken heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nxcore.head import IGNORE_INDEX, DiscreteHead, LinearHead, OutputHead
from nxcore.testing.check_head import check_output_head
from nxcore.testing.discovery import conformance_cases


@pytest.mark.parametrize("head", conformance_cases(OutputHead))
def test_head_conforms(head):
    check_output_head(head)


class _MeanInsteadOfWeightedMean(nn.Module, DiscreteHead):
    """Ignores the weights: a plausible bug the check must catch."""

    def __init__(self):
        super().__init__()
        self.dim, self.vocab_size = 8, 5
        self.proj = nn.Linear(8, 5)

    def predict(self, hidden):
        return self.proj(hidden)

    def loss(self, hidden, targets, weights=None):
        return F.cross_entropy(self.proj(hidden), targets, ignore_index=IGNORE_INDEX)


class _SumReduction(_MeanInsteadOfWeightedMean):
    def loss(self, hidden, targets, weights=None):
        w = torch.ones(len(targets)) if weights is None else weights
        per = F.cross_entropy(self.proj(hidden), targets, ignore_index=IGNORE_INDEX, reduction="none")
        return (per * w).sum()


class _NaNWhenAllIgnored(_MeanInsteadOfWeightedMean):
    def loss(self, hidden, targets, weights=None):
        w = torch.ones(len(targets)) if weights is None else weights
        per = F.cross_entropy(self.proj(hidden), targets, ignore_index=IGNORE_INDEX, reduction="none")
        valid = (targets != IGNORE_INDEX).float() * w
        return (per * valid).sum() / valid.sum()


class _WrongLogitShape(_MeanInsteadOfWeightedMean):
    def predict(self, hidden):
        return self.proj(hidden)[:, :-1]


class _RangeOffByOne(_MeanInsteadOfWeightedMean):
    def predict_range(self, hidden, start, stop):
        return self.proj(hidden)[:, max(start - 1, 0) : max(stop - 1, 1)]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (_MeanInsteadOfWeightedMean(), "sum\\(w\\*l\\)/sum\\(w\\)"),
        (_SumReduction(), "sum\\(w\\*l\\)/sum\\(w\\)"),
        (_NaNWhenAllIgnored(), "every row ignored"),
        (_WrongLogitShape(), "predict must return logits"),
        (_RangeOffByOne(), "predict_range"),
        (object(), "does not implement OutputHead"),
    ],
)
def test_check_rejects_broken_heads(head, message):
    with pytest.raises(AssertionError, match=message):
        check_output_head(head)


def test_user_head_passes_with_one_call():
    class MyHead(nn.Module, DiscreteHead):
        def __init__(self):
            super().__init__()
            self.inner = LinearHead(8, 11)
            self.dim, self.vocab_size = 8, 11

        def predict(self, hidden):
            return self.inner.predict(hidden)

        def loss(self, hidden, targets, weights=None):
            return self.inner.loss(hidden, targets, weights)

    check_output_head(MyHead())

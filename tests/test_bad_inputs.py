"""One table of bad inputs across the foundation: each raises a clear ValueError/TypeError that names
the argument, the value and (where there is one) the fix."""

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nxcore.checkpoint import load_into, load_state
from nxcore.config import Config
from nxcore.head import LinearHead, LinearHeadConfig
from nxcore.layout import SequenceLayout, TextSpan
from nxcore.position import MultiscaleRoPE3D, RoPE1D
from nxcore.sampler import CategoricalSampler
from nxcore.schedule import Schedule, nextflow_schedule, nextflow_schedule_for_size
from nxkernels.rope import apply_rope


def _truncated_safetensors(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    return lambda: load_state(path)


def _mismatched_checkpoint(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3), "9.weight": torch.zeros(1)}
    return lambda: load_into(model, state)


def _unknown_config_field(tmp_path):
    text = json.dumps(LinearHeadConfig(dim=4, vocab_size=3).to_dict() | {"hidden": 8})
    return lambda: Config.from_json(text)


ROPE = RoPE1D(head_dim=8)
POS = ROPE.positions(SequenceLayout.of(TextSpan(5)))
LOGITS = torch.randn(2, 7)

CASES = [
    ("wrong rank", lambda _: lambda: LinearHead(4, 6).predict(torch.randn(4)), ValueError,
     r"hidden must have 2 dimensions, got shape \(4,\)"),
    ("wrong dtype", lambda _: lambda: CategoricalSampler().sample(torch.ones(2, 7, dtype=torch.long)),
     TypeError, r"cond must have a floating-point dtype.*got torch\.int64"),
    ("wrong device", lambda _: lambda: apply_rope(torch.randn(5, 8), POS.to("meta"), torch.ones(4)),
     ValueError, r"positions is on meta but x is on cpu; move it with \.to\(x\.device\)"),
    ("wrong width", lambda _: lambda: ROPE.apply(torch.randn(1, 5, 6), POS), ValueError,
     r"x must be \[\*batch, seq, head_dim\] with head_dim = 8 \(RoPE1D.head_dim\), got \(1, 5, 6\)"),
    ("unknown aspect ratio", lambda _: lambda: nextflow_schedule(ratio=1.8), ValueError,
     r"ratio=1\.8 is not a ratio of NextFlow Table 14.*nearest known: 1\.75"),
    ("non-positive aspect ratio", lambda _: lambda: nextflow_schedule(ratio=-1.0), ValueError,
     r"ratio must be a finite number > 0 \(height / width\), got -1\.0"),
    ("non-positive image size", lambda _: lambda: nextflow_schedule_for_size(0, 512), ValueError,
     r"height must be a finite number > 0, got 0"),
    ("shrinking schedule", lambda _: lambda: Schedule(((1, 1), (4, 4), (3, 3))), ValueError,
     r"steps\[2\] = \(3, 3\) is smaller than steps\[1\] = \(4, 4\); steps must never shrink"),
    ("top_p above 1", lambda _: lambda: CategoricalSampler(top_p=1.5), ValueError, r"top_p.*1\.5"),
    ("top_p of 0", lambda _: lambda: CategoricalSampler(top_p=0.0), ValueError, r"top_p.*0\.0"),
    ("temperature 0", lambda _: lambda: CategoricalSampler(temperature=0.0), ValueError, r"temperature.*0\.0"),
    ("negative temperature", lambda _: lambda: CategoricalSampler(temperature=-1.0), ValueError, r"temperature"),
    ("NaN logits", lambda _: lambda: CategoricalSampler().sample(LOGITS.clone().index_fill_(1, torch.tensor([3]), float("nan"))),
     ValueError, r"logits contains NaN"),
    ("checkpoint keys", _mismatched_checkpoint, ValueError,
     r"(?s)missing.*1\.weight.*unexpected.*9\.weight.*shape.*0\.weight"),
    ("truncated safetensors", _truncated_safetensors, ValueError, r"model\.safetensors.*(truncated|corrupt)"),
    ("unknown config field", _unknown_config_field, ValueError, r"no field\(s\) \['hidden'\]"),
]
@pytest.mark.parametrize(("make", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(tmp_path, make, error, message):
    with pytest.raises(error, match=message):
        make(tmp_path)()


def test_3d_rope_rejects_sections_that_do_not_fit():
    with pytest.raises(ValueError, match=r"sections"):
        MultiscaleRoPE3D(head_dim=16, sections=(4, 4, 4))

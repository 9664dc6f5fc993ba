"""The reference components give the CPU result on CUDA (run where a GPU is lent: `-m gpu`)."""

import pytest
import torch

from nxcore.head import LinearHead
from nxcore.layout import DiscreteImage, SequenceLayout, TextSpan
from nxcore.position import MultiscaleRoPE3D
from nxcore.sampler import CallableField, CategoricalSampler, FlowSampler
from nxcore.schedule import nextflow_schedule

pytestmark = pytest.mark.gpu


def test_rope3d_on_cuda_matches_cpu():
    layout = SequenceLayout.of(TextSpan(7), DiscreteImage(nextflow_schedule(level=256)))
    rope = MultiscaleRoPE3D(head_dim=128)
    pos = rope.positions(layout)
    x = torch.randn(2, 4, layout.length, 128)
    cpu = rope.apply(x, pos)
    gpu = rope.apply(x.cuda(), pos.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_linear_head_loss_on_cuda_matches_cpu():
    torch.manual_seed(0)
    head = LinearHead(32, 100)
    hidden, targets = torch.randn(50, 32), torch.randint(0, 100, (50,))
    cpu = head.loss(hidden, targets)
    gpu = head.cuda().loss(hidden.cuda(), targets.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_samplers_run_on_cuda_with_a_cuda_generator():
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = CategoricalSampler(top_k=5).sample(torch.randn(3, 50, device="cuda"), generator=gen)
    assert ids.device.type == "cuda" and ids.shape == (3,)
    x1 = torch.randn(4, 8, device="cuda")
    field = CallableField(lambda x, t: (x1 - x) / (1 - t)[:, None], shape=(4, 8), device="cuda")
    out = FlowSampler(num_steps=6, method="ode").sample(field, generator=gen)
    torch.testing.assert_close(out, x1, rtol=1e-4, atol=1e-4)

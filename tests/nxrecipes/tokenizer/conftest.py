"""Tiny tokenizers and data for the tokenizer-recipe tests (32 px ShapeWorld, a few images)."""

import pytest
import torch

from nxcore.tokenizer.autoencoder import autoencoder_tiny
from nxcore.tokenizer.multiscale import multiscale_vq_tiny
from nxrecipes.tokenizer.data import ShapeWorldImages
from nxrecipes.tokenizer.objective import AutoencoderObjective, DualCodebookObjective, MultiScaleVQObjective
from nxrecipes.tokenizer.train import TokenizerTrainConfig, _train_config

SIZE = 32
VQ_STEPS = ((1, 1), (2, 2), (4, 4), (8, 8))  # multiscale_vq_tiny(ch_mult=(1, 2, 2)): downsample 4


def tiny_ae_config():
    return autoencoder_tiny(ch_mult=(1, 2, 2), z_channels=4)


def tiny_vq_config():
    return multiscale_vq_tiny(ch_mult=(1, 2, 2), codebook_size=16)


def tiny_dual_config():
    from nxcore.tokenizer.dual import dual_tiny

    return dual_tiny(ch_mult=(1, 2, 2), codebook_size=16)


def tiny_run(run_dir, kind="ae", *, steps=4, stages=(), **changes):
    tokenizer, objective = {
        "ae": lambda: (tiny_ae_config(), AutoencoderObjective()),
        "vq": lambda: (tiny_vq_config(), MultiScaleVQObjective(steps=VQ_STEPS)),
        "dual": lambda: (tiny_dual_config(), DualCodebookObjective(steps=VQ_STEPS, stages=stages)),
    }[kind]()
    train = {"batch_size": 4, "lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 1.0, "checkpoint_every": 2,
             "log_every": 1}
    train.update(changes)
    return TokenizerTrainConfig(
        tokenizer=tokenizer,
        objective=objective,
        data=ShapeWorldImages(split="train", size=SIZE, length=16),
        eval_data=ShapeWorldImages(split="test", size=SIZE, length=4),
        train=_train_config(run_dir, None, steps, **train),
        eval_every=2,
        eval_batch_size=4,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def images():
    data = ShapeWorldImages(split="test", size=SIZE, length=6).build()
    return torch.stack([data[i] for i in range(len(data))])

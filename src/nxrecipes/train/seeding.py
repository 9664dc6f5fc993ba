"""Seeding every random source a training run draws from."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_all(seed: int, *, rank: int | None = None) -> None:
    """Seed ``random``, numpy and torch (every device). With ``rank``, a seed derived from
    ``(seed, rank)`` instead, so ranks draw different dropout and noise.

    Call ``seed_all(cfg.seed)`` before building the model, on every rank: FSDP2 shards the weights
    each rank initialised without broadcasting them, so all ranks must initialise the same."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed = {seed!r} must be an int >= 0")
    if rank is not None:
        seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

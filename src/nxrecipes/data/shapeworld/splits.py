"""Splits: train / validation / test as disjoint seed streams, and a held-out-combination split.

Sample ``index`` of ``split`` draws from ``SeedSequence((seed, split_id, index))``, so the streams
of different splits (and indices) never share a generator. Train, validation and test scenes and
prompts never hold a pair of ``HELDOUT_PAIRS`` nor a relation of ``HELDOUT_RELATIONS``; every
``heldout`` sample holds at least one of them (``split_constraints`` says which to each generator).
"""

from __future__ import annotations

import numpy as np

from nxrecipes.data.shapeworld.scenes import MAX_DISTRACTORS, Combos, Constraints

SPLITS: tuple[str, ...] = ("train", "validation", "test", "heldout")
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (("yellow", "circle"), ("blue", "triangle"), ("purple", "star"))
HELDOUT_RELATIONS: tuple[tuple[str, str, str], ...] = (
    ("square", "left of", "triangle"),
    ("star", "above", "cross"),
)
HELDOUT = Combos(pairs=HELDOUT_PAIRS, relations=HELDOUT_RELATIONS)


def check_split(split: object) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return split


def split_constraints(split: str, *, vary_background: bool = False,
                      max_distractors: int = MAX_DISTRACTORS) -> Constraints:
    """What the generators of ``split`` must avoid (train/validation/test) or include (heldout)."""
    options = {"vary_background": vary_background, "max_distractors": max_distractors}
    if check_split(split) == "heldout":
        return Constraints(require=HELDOUT, **options)
    return Constraints(forbid=HELDOUT, **options)


def split_rng(split: str, index: int, seed: int = 0) -> np.random.Generator:
    """The generator of sample ``index`` of ``split`` under ``seed``."""
    check_split(split)
    for name, value in (("index", index), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} = {value!r} must be an int >= 0")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence((int(seed), SPLITS.index(split),
                                                                       int(index)))))


__all__ = ["HELDOUT", "HELDOUT_PAIRS", "HELDOUT_RELATIONS", "SPLITS", "check_split", "split_constraints",
           "split_rng"]

"""Conformance checks for ``OutputHead`` implementations (discrete and continuous)."""

from __future__ import annotations

import torch
from torch import Tensor

from nxcore.head.protocol import IGNORE_INDEX, ContinuousHead, DiscreteHead, OutputHead, VelocityField


def _param(head: object) -> Tensor | None:
    params = getattr(head, "parameters", None)
    if params is None:
        return None
    return next(iter(params()), None)


def _hidden(head: OutputHead, rows: int, gen: torch.Generator) -> Tensor:
    p = _param(head)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(rows, head.dim, generator=gen).to(device=device, dtype=dtype)


def _targets(head: OutputHead, rows: int, gen: torch.Generator, like: Tensor) -> Tensor:
    if isinstance(head, DiscreteHead):
        return torch.randint(0, head.vocab_size, (rows,), generator=gen).to(like.device)
    return torch.randn(rows, head.latent_dim, generator=gen).to(like.device, like.dtype)


def _close(a: Tensor, b: Tensor, what: str, tol: float = 1e-4) -> None:
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}")
    if not torch.allclose(a.float(), b.float(), rtol=tol, atol=tol):
        if a.numel() == 1:
            raise AssertionError(f"{what}: {a.item():.6g} != {b.item():.6g}")
        raise AssertionError(f"{what}: max difference {(a.float() - b.float()).abs().max().item():.3g}")


def check_output_head(head: OutputHead, *, rows: int = 7, seed: int = 0) -> None:
    """Check the ``OutputHead`` contract on random rows; raises ``AssertionError`` on a violation."""
    if not isinstance(head, OutputHead):
        raise AssertionError(f"{type(head).__name__} does not implement OutputHead (dim, loss, predict)")
    discrete, continuous = isinstance(head, DiscreteHead), isinstance(head, ContinuousHead)
    if discrete == continuous:
        raise AssertionError(
            f"{type(head).__name__} must be exactly one of DiscreteHead (vocab_size, logits) or "
            "ContinuousHead (latent_dim, velocity field)"
        )
    gen = torch.Generator().manual_seed(seed)
    hidden = _hidden(head, rows, gen)
    targets = _targets(head, rows, gen, hidden)

    pred = head.predict(hidden)
    if discrete:
        if not isinstance(pred, Tensor) or tuple(pred.shape) != (rows, head.vocab_size):
            raise AssertionError(
                f"predict must return logits [{rows}, {head.vocab_size}], got {_shape(pred)}"
            )
        if not torch.isfinite(pred).all():
            raise AssertionError("predict returned non-finite logits for finite hidden states")
        v = head.vocab_size
        for start, stop in {(0, v), (0, 1), (v - 1, v), (v // 3, max(v // 3 + 1, 2 * v // 3))}:
            _close(head.predict_range(hidden, start, stop), pred[:, start:stop],
                   f"predict_range(hidden, {start}, {stop}) != predict(hidden)[:, {start}:{stop}]")
    else:
        if not isinstance(pred, VelocityField) or tuple(pred.shape) != (rows, head.latent_dim):
            raise AssertionError(
                f"predict must return a VelocityField of shape ({rows}, {head.latent_dim}), got {pred!r}"
            )
        x = torch.randn(rows, head.latent_dim, generator=gen).to(hidden.device)
        v = pred(x, torch.full((rows,), 0.5, device=hidden.device))
        if tuple(v.shape) != (rows, head.latent_dim) or not torch.isfinite(v).all():
            raise AssertionError(f"the velocity field returned {_shape(v)} or non-finite values")

    leaf = hidden.detach().requires_grad_(True)
    loss = head.loss(leaf, targets)
    if not isinstance(loss, Tensor) or loss.ndim != 0 or not torch.isfinite(loss):
        raise AssertionError(f"loss must be a finite scalar tensor, got {loss!r}")
    loss.backward()
    if leaf.grad is None or not torch.isfinite(leaf.grad).all() or leaf.grad.abs().sum() == 0:
        raise AssertionError("loss does not give a finite, non-zero gradient to hidden")

    if continuous:
        return  # stochastic losses (fresh noise per call): the weighting identities below need a fixed seed
    per_row = torch.stack([head.loss(hidden[i : i + 1], targets[i : i + 1]) for i in range(rows)])
    weights = torch.rand(rows, generator=gen).to(hidden.device)
    expected = (per_row * weights).sum() / weights.sum()
    _close(head.loss(hidden, targets, weights), expected, "loss with weights != sum(w*l)/sum(w)")
    _close(head.loss(hidden, targets, 3.0 * weights), expected, "loss changes when weights are scaled")
    _close(head.loss(hidden, targets), per_row.mean(), "unweighted loss != mean of per-row losses")
    perm = torch.randperm(rows, generator=gen)
    _close(head.loss(hidden[perm], targets[perm]), per_row.mean(), "loss depends on row order")

    ignored = targets.clone()
    ignored[0] = IGNORE_INDEX
    _close(head.loss(hidden, ignored), per_row[1:].mean(), "an ignore_index row still carries loss")
    leaf = hidden.detach().requires_grad_(True)
    none = head.loss(leaf, torch.full_like(targets, IGNORE_INDEX))
    none.backward()
    if none.item() != 0.0 or leaf.grad is None or not torch.isfinite(leaf.grad).all():
        raise AssertionError("with every row ignored the loss must be 0 with a finite gradient")
    zero = head.loss(hidden, targets, torch.zeros(rows, device=hidden.device))
    if zero.item() != 0.0:
        raise AssertionError(f"with all weights 0 the loss must be 0, got {zero.item()}")

    bad = targets.clone()
    bad[0] = head.vocab_size
    try:
        head.loss(hidden, bad)
    except (ValueError, IndexError):
        pass
    else:
        raise AssertionError(f"a target of vocab_size ({head.vocab_size}) must raise ValueError")


def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__

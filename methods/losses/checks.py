"""Input validation shared by the loss functions (cheap shape checks, clear messages)."""

from __future__ import annotations

import torch
from torch import Tensor


class LossInputError(ValueError):
    """A loss was called with tensors of the wrong shape, dtype or value range."""


def check_dim(name: str, t: Tensor, ndim: int, layout: str) -> None:
    if not isinstance(t, Tensor):
        raise LossInputError(f"{name} must be a torch.Tensor {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise LossInputError(f"{name} must be {layout}, got shape {tuple(t.shape)}")


def check_same_shape(names: tuple[str, str], a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise LossInputError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")


def compute_dtype(*ts: Tensor) -> torch.dtype:
    """At least float32: logits and -1e9 fills overflow in half precision."""
    dtype = torch.float32
    for t in ts:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype

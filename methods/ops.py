"""Explicit cross-rank gathers for contrastive negatives (safe on gloo and NCCL).

Without an initialised torch.distributed process group (or with one process) both are
identities, so the same method code runs on one CPU process and under DDP.
All ranks must pass tensors of the same shape (as torch.distributed.all_gather requires).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is unavailable or not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def gather_offset(local_batch: int) -> int:
    """Index of this rank's first row in a gathered tensor (rank * local_batch)."""
    return _world()[0] * local_batch


@torch.no_grad()
def concat_all_gather(t: Tensor) -> Tensor:
    """[B, ...] -> [world * B, ...], concatenated in rank order, without gradient.

    For targets and keys that are constants of the loss (DetCon-B, BYOL, MoCo). With one
    process the result is ``t.detach()`` (same values, no gradient, like the gathered case).
    """
    _, world = _world()
    if world == 1:
        return t.detach()
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient for the gathered tensor
    (all_reduce, supported by gloo unlike reduce_scatter) and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        rank, world = _world()
        ctx.rank, ctx.batch = rank, t.shape[0]
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(t: Tensor) -> Tensor:
    """[B, ...] -> [world * B, ...] with gradients flowing back to the producing rank.

    Use for negatives that must be trained (SimCLR, DetCon-S). Each rank's gradient for
    its own slice is the sum over all ranks' losses; together with DDP's gradient
    averaging this yields the gradient of the mean of the per-rank losses. With one
    process it returns ``t`` unchanged (gradient flows as usual).
    """
    _, world = _world()
    if world == 1:
        return t
    return _AllGatherWithGrad.apply(t)

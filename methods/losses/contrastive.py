"""Image-level InfoNCE losses: SimCLR's NT-Xent and MoCo v2's queue contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detlab.methods.losses.checks import (
    LossInputError,
    check_dim,
    check_same_shape,
    check_temperature,
    compute_dtype,
)


def nt_xent_loss(
    z_a: Tensor,
    z_b: Tensor,
    temperature: float,
    offset: int = 0,
    *,
    all_a: Tensor | None = None,
    all_b: Tensor | None = None,
) -> Tensor:
    """SimCLR's NT-Xent (normalised temperature-scaled cross entropy).

    Each local embedding is contrasted against the gathered embeddings of both views: the
    positive is the other view of the same image, the negatives are every other gathered
    embedding of either view (2 * B_all - 2 of them); its own entry is excluded.

    Args:
        z_a, z_b: [B, D] projections of view a / b for this rank's images.
        temperature: softmax temperature (SimCLR: 0.1 - 0.2).
        offset: index of this rank's first image in the gathered tensors.
        all_a, all_b: [B_all, D] gathered projections (keyword-only; default z_a, z_b, i.e.
            one process). Gather them with ``detlab.methods.ops.all_gather_with_grad`` so
            that negatives pass gradients back to the rank that produced them.

    Returns:
        scalar: mean over the 2*B local rows.
    """
    check_dim("z_a", z_a, 2, "[B, D]")
    check_same_shape(("z_a", "z_b"), z_a, z_b)
    check_temperature(temperature)
    all_a = z_a if all_a is None else all_a
    all_b = z_b if all_b is None else all_b
    check_dim("all_a", all_a, 2, "[B_all, D]")
    check_same_shape(("all_a", "all_b"), all_a, all_b)
    b, d = z_a.shape
    b_all = all_a.shape[0]
    if all_a.shape[1] != d:
        raise LossInputError(f"all_a must be [B_all, D={d}], got {tuple(all_a.shape)}")
    if not 0 <= offset <= b_all - b:
        raise LossInputError(f"offset={offset} out of range for B={b}, B_all={b_all}")

    dtype = compute_dtype(z_a, z_b, all_a, all_b)
    rows = F.normalize(torch.cat([z_a, z_b]).to(dtype), dim=-1)  # [2B, D]
    cols = F.normalize(torch.cat([all_a, all_b]).to(dtype), dim=-1)  # [2B_all, D]
    logits = rows @ cols.T / temperature  # [2B, 2B_all]

    g = offset + torch.arange(b, device=z_a.device)  # this rank's images in the gather
    self_col = torch.cat([g, g + b_all])  # [2B]: a-row i -> all_a[g_i], b-row -> all_b[g_i]
    pos_col = torch.cat([g + b_all, g])  # [2B]: the other view of the same image
    self_mask = F.one_hot(self_col, 2 * b_all).bool()  # [2B, 2B_all]
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, pos_col)


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """MoCo v2 InfoNCE: one positive key per query, the queue as negatives.

    Args:
        q: [B, D] queries (online encoder).
        k: [B, D] keys (momentum encoder; MoCo computes them under no_grad).
        queue: [K, D] past keys (a buffer, no gradient).
        temperature: softmax temperature (MoCo v2: 0.2).
    All three are L2-normalised here (a no-op when already normalised, as in MoCo).

    Returns:
        scalar: cross entropy with the positive at index 0 of [1 + K] logits, mean over B.
    """
    check_dim("q", q, 2, "[B, D]")
    check_same_shape(("q", "k"), q, k)
    check_dim("queue", queue, 2, "[K, D]")
    if queue.shape[1] != q.shape[1]:
        raise LossInputError(f"queue must be [K, D={q.shape[1]}], got {tuple(queue.shape)}")
    check_temperature(temperature)
    dtype = compute_dtype(q, k, queue)
    q = F.normalize(q.to(dtype), dim=-1)
    k = F.normalize(k.to(dtype), dim=-1)
    queue = F.normalize(queue.to(dtype), dim=-1)
    l_pos = (q * k).sum(-1, keepdim=True)  # [B, 1]
    l_neg = q @ queue.T  # [B, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # [B, 1 + K]
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels)

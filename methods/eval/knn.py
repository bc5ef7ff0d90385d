"""Weighted cosine k-nearest-neighbour classification (DINO-style voting)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def knn_classify(
    train_feats: Tensor,
    train_labels: Tensor,
    val_feats: Tensor,
    val_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 4096,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (fractions) of kNN voting with weights exp(cos / T).

    Args:
        train_feats: [N, C] memory bank features; train_labels: [N] ints >= 0.
        val_feats: [Q, C] queries; val_labels: [Q].
        k: neighbours (clipped to N); temperature: DINO's 0.07.
        chunk: queries per matmul (bounds memory at chunk x N).
    """
    if len(train_feats) == 0 or len(val_feats) == 0:
        raise ValueError("kNN needs a non-empty memory bank and query set")
    num_classes = int(num_classes or int(torch.cat([train_labels, val_labels]).max()) + 1)
    bank = F.normalize(train_feats.float(), dim=1)  # [N, C]
    queries = F.normalize(val_feats.float(), dim=1)  # [Q, C]
    k = min(k, len(bank))
    top1 = top5 = 0
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sims, idx = (q @ bank.T).topk(k, dim=1)  # [q, k]
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(q), num_classes).scatter_add_(1, train_labels[idx], weights)
        pred = votes.topk(min(5, num_classes), dim=1).indices  # [q, 5]
        truth = val_labels[start : start + chunk, None]
        top1 += int((pred[:, :1] == truth).sum())
        top5 += int((pred == truth).any(dim=1).sum())
    n = len(queries)
    return {"top1": top1 / n, "top5": top5 / n}

"""Linear probe on frozen features: standardised features, a linear layer, SGD with momentum
and a cosine schedule (features are extracted once and kept in memory for the run)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_probe(
    train_feats: Tensor,
    train_labels: Tensor,
    val_feats: Tensor,
    val_labels: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 1024,
    seed: int = 0,
) -> dict[str, float]:
    """Train ``nn.Linear`` on [N, C] features; top-1 / top-5 (fractions) on the val split."""
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr, xva = (train_feats - mean) / std, (val_feats - mean) / std  # [N, C], [Q, C]
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    for _ in range(epochs):
        order = torch.randperm(len(xtr), generator=gen)
        for start in range(0, len(xtr), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(head(xtr[idx]), train_labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        pred = head(xva).topk(min(5, num_classes), dim=1).indices
    truth = val_labels[:, None]
    n = len(xva)
    return {
        "top1": float((pred[:, :1] == truth).sum()) / n,
        "top5": float((pred == truth).any(dim=1).sum()) / n,
    }

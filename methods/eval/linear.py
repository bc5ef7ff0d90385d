"""Linear probe on frozen features: standardised features, multinomial logistic regression
fitted full-batch with L-BFGS (features are extracted once and kept in memory), so the
result does not hinge on a learning-rate schedule."""

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
    lr: float = 1.0,
    weight_decay: float = 1e-4,
) -> dict[str, float]:
    """Fit ``W x + b`` on [N, C] features (``epochs`` L-BFGS iterations, L2 ``weight_decay``);
    top-1 / top-5 (fractions) on the val split."""
    mean, std = train_feats.mean(0), train_feats.std(0).clamp_min(1e-6)
    xtr, xva = (train_feats - mean) / std, (val_feats - mean) / std  # [N, C], [Q, C]
    head = torch.nn.Linear(xtr.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=lr, max_iter=max(1, epochs),
                            line_search_fn="strong_wolfe")  # fmt: skip
    decay = max(weight_decay, 1e-6)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(xtr), train_labels) + decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = head(xva).topk(min(5, num_classes), dim=1).indices
    truth = val_labels[:, None]
    n = len(xva)
    return {
        "top1": float((pred[:, :1] == truth).sum()) / n,
        "top5": float((pred == truth).any(dim=1).sum()) / n,
    }

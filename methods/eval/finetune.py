"""Fine-tuning for classification: the whole pretrained backbone and a new linear head on
its pooled features, trained together (SGD, momentum 0.9, cosine schedule, horizontal
flips), top-1/top-5 on the val split. The transfer protocol of small datasets."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # x: [B, 3, R, R] -> logits [B, K]
        return self.head(self.backbone.pooled(x))


def finetune_classify(backbone: nn.Module, train_loader, val_loader, num_classes: int,
                      eval_cfg, device, progress: bool = False, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Train a copy of ``backbone`` with a head for ``eval_cfg.epochs`` epochs at peak
    ``eval_cfg.lr``; the backbone passed in is left untouched."""
    torch.manual_seed(seed)
    model = _Classifier(copy.deepcopy(backbone), num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=eval_cfg.lr, momentum=0.9,
                          weight_decay=eval_cfg.weight_decay)  # fmt: skip
    total = max(1, eval_cfg.epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    bar = tqdm(total=total, disable=not progress, desc="finetune", unit="step")
    model.train()
    loss = torch.zeros(())
    for _ in range(eval_cfg.epochs):
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            flip = torch.rand(x.shape[0], device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
        if not torch.isfinite(loss):  # once an epoch: a step never waits on the host
            raise FloatingPointError(f"finetune: loss is {loss.item()} at lr {eval_cfg.lr}")
    bar.close()
    model.eval()
    hits1 = hits5 = n = 0
    with torch.no_grad():
        for x, y in val_loader:
            logits = model(x.to(device))
            top = logits.topk(min(5, num_classes), dim=1).indices.cpu()
            hits1 += (top[:, 0] == y).sum().item()
            hits5 += (top == y[:, None]).any(dim=1).sum().item()
            n += len(y)
    return {"top1": hits1 / n, "top5": hits5 / n, "train_loss": float(loss.detach())}

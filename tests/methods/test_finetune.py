"""Fine-tuning classification: learns a separable task, leaves the given backbone as it was."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from detlab.methods.backbones import build_backbone
from detlab.methods.eval.finetune import finetune_classify
from detlab.platform.config import BackboneConfig


def loaders(n: int = 48):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2  # class 1: a bright top half, class 0: a bright bottom half
    x = torch.randn(n, 3, 16, 16, generator=g) * 0.3  # (flips are left-right: labels kept)
    x[y == 1, :, :8] += 2.0
    x[y == 0, :, 8:] += 2.0
    pairs = list(zip(x, y, strict=True))
    train = torch.utils.data.DataLoader(pairs[:32], batch_size=8, shuffle=True, generator=g)
    return train, torch.utils.data.DataLoader(pairs[32:], batch_size=8)


def test_finetuning_learns_and_keeps_the_pretrained_backbone():
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet18", width=0.125, small_stem=True))
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = OmegaConf.create({"epochs": 6, "lr": 0.05, "weight_decay": 0.0})
    train, val = loaders()
    res = finetune_classify(backbone, train, val, 2, cfg, torch.device("cpu"))
    assert res["top1"] == 1.0 and res["top5"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())

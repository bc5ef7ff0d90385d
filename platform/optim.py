"""Optimisers (SGD, AdamW, LARS) and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from detlab.platform.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Two groups: weights with decay, and biases + norm parameters without.

    With LARS, a group whose weight decay is 0 is also excluded from the trust-ratio
    adaptation (timm's Lars adapts only where weight_decay != 0), as in BYOL / DetCon.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if exclude_bias_and_norm and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def scaled_lr(cfg: OptimConfig, batch_size: int) -> float:
    """Linear scaling rule: ``lr`` is the base rate at batch 256."""
    return cfg.lr * batch_size / 256


def build_optimizer(cfg: OptimConfig, model: nn.Module, batch_size: int) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    lr = scaled_lr(cfg, batch_size)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    if cfg.name == "lars":
        from timm.optim import Lars  # timm's import costs ~3 s: only the LARS runs pay it

        return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=cfg.eta)
    raise ValueError(f"optim.name={cfg.name!r} is not one of: sgd, adamw, lars")


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )

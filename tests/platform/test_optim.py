import math

import pytest
import torch
from timm.optim import Lars
from torch import nn

from detlab.platform.config import OptimConfig
from detlab.platform.optim import build_optimizer, build_scheduler, lr_factor


def tiny_model():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_bias_and_norm_params_get_no_decay():
    opt = build_optimizer(OptimConfig(name="lars", weight_decay=1e-3), tiny_model(), 256)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"])
    assert all(p.ndim == 1 for p in no_decay["params"])  # biases + BN affine
    assert isinstance(opt, Lars)


def test_lars_adapts_weights_only():
    """With LARS, a no-decay (bias) group takes a plain momentum-SGD step, weights are scaled."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    opt = build_optimizer(
        OptimConfig(name="lars", lr=256.0, momentum=0.0, weight_decay=1e-2, eta=1e-3), model, 256
    )
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    opt.step()
    assert torch.allclose(b0 - model.bias, torch.full_like(b0, 256.0))  # unadapted
    g = torch.ones_like(w0) + 1e-2 * w0
    # timm's LARS (You et al.): eta * ||w|| / (||grad|| + wd * ||w||)
    trust = 1e-3 * w0.norm() / (torch.ones_like(w0).norm() + 1e-2 * w0.norm())
    assert torch.allclose(w0 - model.weight, 256.0 * trust * g, rtol=1e-4)


def test_lr_scaled_by_batch():
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.1), tiny_model(), 512)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="optim.name='adam'"):
        build_optimizer(OptimConfig(name="adam"), tiny_model(), 256)


def test_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    mid = 10 + 45 // 2
    assert lr_factor(mid, 100, 10, 0.0) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (mid - 10) / 90))
    )


def test_scheduler_follows_factor():
    model = tiny_model()
    cfg = OptimConfig(name="sgd", lr=0.256, warmup_steps=2)
    opt = build_optimizer(cfg, model, 256)
    sched = build_scheduler(cfg, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.128) and lrs[1] == pytest.approx(0.256)
    assert lrs[-1] < lrs[2]

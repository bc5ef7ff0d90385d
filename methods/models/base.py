"""What every method shares: the online backbone, EMA targets and their schedule.

A method is an ``nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar, ...}``
(other scalars are logged), with ``update_target(step, total_steps)`` called after each
optimiser step, ``backbone`` (the online network evaluated downstream) and ``input_kind``
("mask": two views + masks; "boxes": SoCo's three views + proposals).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from detlab.methods.backbones import build_backbone
from detlab.methods.config import AugConfig, BackboneConfig, MethodConfig


def ema_tau(base: float, step: int, total_steps: int) -> float:
    """BYOL / DetCon: tau_k = 1 - (1 - base) * (cos(pi k / K) + 1) / 2."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1) / 2


@torch.no_grad()
def embedding_std(z: Tensor, keep: Tensor | None = None) -> Tensor:
    """Collapse monitor (SimSiam): z [N, D] -> the per-dimension std over N of the
    L2-normalised embeddings, averaged over D. ~1/sqrt(D) when healthy, 0 when collapsed.

    ``keep`` [N] bool: only those rows (e.g. masks present in the view), computed with
    weights rather than by indexing, which would read the count on the host (a GPU sync);
    nan when fewer than two rows count."""
    z = torch.nn.functional.normalize(z.detach().float().flatten(0, -2), dim=-1)
    w = torch.ones_like(z[:, :1]) if keep is None else keep.reshape(-1, 1).to(z.dtype)  # [N, 1]
    n = w.sum()
    mean = (z * w).sum(0) / n.clamp_min(1)  # [D]
    var = ((z - mean).pow(2) * w).sum(0) / (n - 1).clamp_min(1)  # unbiased, as Tensor.std
    return torch.where(n >= 2, var.sqrt().mean(), float("nan"))  # a scalar: no host copy


def make_target(online: nn.Module) -> nn.Module:
    """A frozen copy of ``online`` updated only by EMA."""
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, parameters only (BN buffers are the
    target's own running statistics, as in BYOL)."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    torch._foreach_lerp_(t_params, o_params, 1 - tau)


class Method(nn.Module):
    """Base class; subclasses set ``input_kind`` and implement ``forward``. A method with
    fields of its own declares them in a ``MethodConfig`` subclass named by
    ``config_class``; ``num_boxes`` (SoCo) is how many box proposals its data needs."""

    input_kind = "mask"
    config_class: type[MethodConfig] = MethodConfig
    num_boxes = 0

    def __init__(self, m: MethodConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__()
        self.cfg, self.aug = m, aug
        self.encoder = build_backbone(b)  # the online backbone
        self.targets: list[tuple[nn.Module, nn.Module]] = []  # (target, online) pairs

    @property
    def backbone(self) -> nn.Module:
        return self.encoder

    def add_target(self, online: nn.Module) -> nn.Module:
        target = make_target(online)
        self.targets.append((target, online))
        return target

    def add_byol_networks(self) -> None:
        """BYOL / DetCon-B: online projector + predictor, EMA copies of encoder and projector."""
        from detlab.methods.heads import mlp

        m = self.cfg
        self.projector = mlp(self.encoder.out_channels, m.proj_hidden, m.proj_out)
        self.predictor = mlp(m.proj_out, m.pred_hidden, m.proj_out)
        self.target_encoder = self.add_target(self.encoder)
        self.target_projector = self.add_target(self.projector)

    def tau(self, step: int, total_steps: int) -> float:
        return ema_tau(self.cfg.ema_base, step, total_steps)

    def update_target(self, step: int, total_steps: int) -> dict[str, float]:
        """EMA of every registered target after optimiser step ``step`` (0-based)."""
        if not self.targets:
            return {}
        tau = self.tau(step, total_steps)
        for target, online in self.targets:
            ema_update(target, online, tau)
        return {"ema_tau": tau}

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError

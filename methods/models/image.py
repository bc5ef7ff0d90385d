"""Image-level baselines: SimCLR, BYOL, MoCo v2, VICReg (global average-pooled features)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detlab.methods.config import AugConfig, BackboneConfig, MethodConfig, MoCoConfig, VICRegConfig
from detlab.methods.heads import mlp
from detlab.methods.losses import byol_loss, moco_loss, nt_xent_loss, vicreg_loss
from detlab.methods.models.base import Method, embedding_std
from detlab.methods.ops import all_gather_with_grad, concat_all_gather, gather_offset

VIEWS = ("view1", "view2")


class SimCLR(Method):
    """NT-Xent over both views' projections, negatives gathered from every rank."""

    def __init__(self, m: MethodConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.projector = mlp(self.encoder.out_channels, m.proj_hidden, m.proj_out)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_a = self.projector(self.encoder.pooled(batch["view1"]))  # [B, D]
        z_b = self.projector(self.encoder.pooled(batch["view2"]))
        all_a, all_b = all_gather_with_grad(z_a), all_gather_with_grad(z_b)  # [B_all, D]
        loss = nt_xent_loss(
            z_a, z_b, self.cfg.temperature, gather_offset(z_a.shape[0]), all_a=all_a, all_b=all_b
        )
        return {"loss": loss, "rep_std": embedding_std(z_a)}


class BYOL(Method):
    """Online projector + predictor regress the EMA target's projection of the other view."""

    def __init__(self, m: MethodConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.add_byol_networks()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # each view is its own forward pass (own BN statistics), as in the official BYOL
        z_a, z_b = (self.projector(self.encoder.pooled(batch[v])) for v in VIEWS)
        p_a, p_b = self.predictor(z_a), self.predictor(z_b)
        with torch.no_grad():
            t_a, t_b = (self.target_projector(self.target_encoder.pooled(batch[v])) for v in VIEWS)
        loss = byol_loss(p_a, t_b) + byol_loss(p_b, t_a)
        return {"loss": loss, "rep_std": embedding_std(z_a)}


class MoCoV2(Method):
    """Query encoder vs momentum key encoder, a queue of past keys as negatives."""

    config_class = MoCoConfig

    def __init__(self, m: MoCoConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.projector = mlp(self.encoder.out_channels, m.proj_hidden, m.proj_out)
        self.key_encoder = self.add_target(self.encoder)
        self.key_projector = self.add_target(self.projector)
        gen = torch.Generator().manual_seed(0)
        queue = F.normalize(torch.randn(m.queue_size, m.proj_out, generator=gen), dim=1)
        self.register_buffer("queue", queue)  # [K, D]
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def tau(self, step: int, total_steps: int) -> float:
        return self.cfg.ema_base  # MoCo's constant momentum (0.999)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        q = F.normalize(self.projector(self.encoder.pooled(batch["view1"])), dim=1)  # [B, D]
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_encoder.pooled(batch["view2"])), dim=1)
        loss = moco_loss(q, k, self.queue.clone(), self.cfg.temperature)
        if self.training:
            self._pending = concat_all_gather(k)  # enqueued after the optimiser step
        return {"loss": loss, "rep_std": embedding_std(q)}

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> dict[str, float]:
        logs = super().update_target(step, total_steps)
        if self._pending is not None:
            keys, size = self._pending, self.queue.shape[0]
            idx = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
            self.queue[idx] = keys.to(self.queue.dtype)
            self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
            self._pending = None
        return logs


class VICReg(Method):
    """Invariance + variance + covariance on a 3-layer expander, statistics over all ranks."""

    config_class = VICRegConfig

    def __init__(self, m: VICRegConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.expander = mlp(self.encoder.out_channels, m.proj_hidden, m.proj_out, layers=3)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_a = all_gather_with_grad(self.expander(self.encoder.pooled(batch["view1"])))
        z_b = all_gather_with_grad(self.expander(self.encoder.pooled(batch["view2"])))
        c = self.cfg
        loss, t = vicreg_loss(z_a, z_b, c.vicreg_sim, c.vicreg_var, c.vicreg_cov)
        return {
            "loss": loss,
            "rep_std": embedding_std(z_a),
            **{k: v.detach() for k, v in t.items()},
        }

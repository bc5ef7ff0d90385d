"""DetCon-S and DetCon-B: mask-pooled features, the multi-mask contrastive loss.

Per view: backbone feature map [B, C, h, w] -> masks pooled to the h x w grid -> M ids
sampled per image (same ids for both views and both branches) -> mask-averaged features
[B, M, C] -> projector (-> predictor). Mask samples are drawn from a hash of each image's
dataset index, the step and the seed, so an image's samples do not depend on which rank
or batch position it lands on (a multi-rank run reproduces a single-process one).
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlab.methods.config import AugConfig, BackboneConfig, DetConConfig
from detlab.methods.heads import mlp
from detlab.methods.losses import detcon_loss
from detlab.methods.models.base import Method, embedding_std
from detlab.methods.ops import all_gather_with_grad, concat_all_gather, gather_offset
from detlab.methods.pooling import (
    hashed_uniform,
    mark_absent,
    mask_pool_features,
    pool_masks,
    sample_mask_ids,
)


def sample_masks(batch: dict[str, Tensor], grid: tuple[int, int], m: DetConConfig):
    """ids_a, ids_b [B, M] (-1 where absent from that view) and binary masks [B, M, h*w]."""
    pooled = [pool_masks(batch[k], grid, m.max_mask_id) for k in ("mask1", "mask2")]
    salt = int(batch.get("step", 0)) * 1_000_033 + int(batch.get("seed", 0))
    index = batch.get("index")
    if index is None:
        index = torch.arange(pooled[0].shape[0])
    uniform = hashed_uniform(torch.as_tensor(index).to(pooled[0].device), salt, m.num_masks)
    ids, masks_a, masks_b = sample_mask_ids(*pooled, m.num_masks, uniform=uniform)
    return mark_absent(ids, masks_a), mark_absent(ids, masks_b), masks_a, masks_b


class DetConS(Method):
    """SimCLR's symmetric encoder with the DetCon loss: targets are the projections
    themselves, gathered with gradients (no predictor, no EMA)."""

    config_class = DetConConfig

    def __init__(self, m: DetConConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.projector = mlp(self.encoder.out_channels, m.proj_hidden, m.proj_out)

    def embed(self, feats: Tensor, masks: Tensor) -> Tensor:
        """feature map [B, C, h, w], binary masks [B, M, h*w] -> projections [B, M, D]."""
        pooled = mask_pool_features(feats, masks)  # [B, M, C]
        return self.projector(pooled.flatten(0, 1)).view(*pooled.shape[:2], -1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        f_a, f_b = self.encoder(batch["view1"]), self.encoder(batch["view2"])  # [B, C, h, w]
        ids_a, ids_b, masks_a, masks_b = sample_masks(batch, tuple(f_a.shape[-2:]), self.cfg)
        z_a, z_b = self.embed(f_a, masks_a), self.embed(f_b, masks_b)  # [B, M, D]
        loss = detcon_loss(
            z_a,
            z_b,
            all_gather_with_grad(z_a),
            all_gather_with_grad(z_b),
            concat_all_gather(ids_a),
            concat_all_gather(ids_b),
            temperature=self.cfg.temperature,
            local_negatives=self.cfg.local_negatives,
            cross_image_negatives=self.cfg.cross_image_negatives,
            offset=gather_offset(z_a.shape[0]),
        )
        return {
            "loss": loss,
            "masks_present": (ids_b >= 0).float().mean(),
            "rep_std": embedding_std(z_a, keep=ids_a >= 0),
        }


class DetConB(Method):
    """BYOL's online / EMA-target networks with a predictor; targets gathered without grad."""

    config_class = DetConConfig

    def __init__(self, m: DetConConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        self.add_byol_networks()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        feats = [self.encoder(batch[v]) for v in ("view1", "view2")]  # [B, C, h, w] each
        ids_a, ids_b, masks_a, masks_b = sample_masks(batch, tuple(feats[0].shape[-2:]), self.cfg)
        preds, targets, projections = [], [], []
        for x, view, masks in zip(feats, ("view1", "view2"), (masks_a, masks_b), strict=True):
            pooled = mask_pool_features(x, masks)  # [B, M, C]
            z = self.projector(pooled.flatten(0, 1))  # [B*M, D]
            projections.append(z)
            preds.append(self.predictor(z).view(*pooled.shape[:2], -1))
            with torch.no_grad():
                t = mask_pool_features(self.target_encoder(batch[view]), masks)
                t = self.target_projector(t.flatten(0, 1)).view(*pooled.shape[:2], -1)
            targets.append(concat_all_gather(t))  # [B_all, M, D]
        loss = detcon_loss(
            preds[0],
            preds[1],
            targets[0],
            targets[1],
            concat_all_gather(ids_a),
            concat_all_gather(ids_b),
            temperature=self.cfg.temperature,
            local_negatives=self.cfg.local_negatives,
            cross_image_negatives=self.cfg.cross_image_negatives,
            offset=gather_offset(preds[0].shape[0]),
        )
        return {
            "loss": loss,
            "masks_present": (ids_b >= 0).float().mean(),
            "rep_std": embedding_std(projections[0], keep=ids_a >= 0),
        }

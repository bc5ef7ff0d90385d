"""SoCo: selective-search boxes, FPN + RoIAlign + R-CNN head, BYOL-style box regression.

Online and EMA-target networks both embed the K boxes of all three views (V1 whole image,
V2 random crop, V3 = V2 at half size). Loss (official, symmetric):
    soco(pred V1, target V2) + soco(pred V1, target V3)
  + soco(pred V2, target V1) + soco(pred V3, target V1)
where soco() is -2 x the mean cosine over each image's valid boxes.

``structure: c4`` is the official SoCo_C4 model instead: boxes RoIAligned on C4, the
backbone's own res5 (``layer4``) as the box head, views V1 and V2 only:
    soco(pred V1, target V2) + soco(pred V2, target V1)
It trains the C5 features a linear or segmentation probe reads; the FPN model trains the
pyramid a detector reads (SoCo's "align pretraining with the downstream architecture").
"""

from __future__ import annotations

import torch
from torch import Tensor

from detlab.methods.config import AugConfig, BackboneConfig, SoCoConfig
from detlab.methods.heads import BoxNeck, c4_box_features, mlp
from detlab.methods.losses import soco_loss
from detlab.methods.models.base import Method, embedding_std

VIEWS = (("v1", "boxes1"), ("v2", "boxes2"), ("v3", "boxes3"))
STRUCTURES = ("fpn", "c4")


class SoCo(Method):
    input_kind = "boxes"
    config_class = SoCoConfig

    def __init__(self, m: SoCoConfig, b: BackboneConfig, aug: AugConfig):
        super().__init__(m, b, aug)
        if m.structure not in STRUCTURES:
            raise ValueError(f"method.structure={m.structure!r} is not one of {STRUCTURES}")
        if m.structure == "c4" and not hasattr(self.encoder, "forward_c4"):
            raise ValueError(f"method.structure=c4 runs a ResNet's layer4 on RoIs: "
                             f"backbone.name={b.name} has none (use structure=fpn)")  # fmt: skip
        self.num_boxes, self.structure, self.roi_size = m.num_boxes, m.structure, m.roi_size
        if m.structure == "fpn":
            self.neck = BoxNeck(self.encoder.pyramid_channels, m.fpn_channels, m.roi_size,
                                m.head_hidden, aug.resolution)  # fmt: skip
            box_dim = m.head_hidden
        else:  # c4: the encoder's own layer4 is the head
            self.neck, box_dim = None, self.encoder.out_channels
        self.projector = mlp(box_dim, m.proj_hidden, m.proj_out)
        self.predictor = mlp(m.proj_out, m.pred_hidden, m.proj_out)
        self.target_encoder = self.add_target(self.encoder)
        self.target_neck = None if self.neck is None else self.add_target(self.neck)
        self.target_projector = self.add_target(self.projector)

    def embed(self, encoder, neck, projector, image: Tensor, boxes: Tensor) -> Tensor:
        """image [B, 3, S, S], boxes [B, K, 4] -> box projections [B, K, D]."""
        if neck is None:  # c4
            z = c4_box_features(encoder, image, boxes, self.roi_size)  # [B, K, C5]
        else:
            z = neck(encoder.forward_pyramid(image), boxes, image.shape[-1])  # [B, K, hidden]
        return projector(z.flatten(0, 1)).view(*boxes.shape[:2], -1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        valid = batch["box_valid"]  # [B, K]
        views = VIEWS if self.structure == "fpn" else VIEWS[:2]
        online = [
            self.embed(self.encoder, self.neck, self.projector, batch[v], batch[b])
            for v, b in views
        ]
        preds = [self.predictor(z.flatten(0, 1)).view_as(z) for z in online]  # V x [B, K, D]
        with torch.no_grad():
            targets = [
                self.embed(
                    self.target_encoder, self.target_neck, self.target_projector, batch[v], batch[b]
                )
                for v, b in views
            ]
        if self.structure == "fpn":
            loss = (
                soco_loss(preds[0], targets[1], valid)
                + soco_loss(preds[0], targets[2], valid)
                + soco_loss(preds[1], targets[0], valid)
                + soco_loss(preds[2], targets[0], valid)
            )
        else:
            loss = soco_loss(preds[0], targets[1], valid) + soco_loss(preds[1], targets[0], valid)
        return {
            "loss": loss,
            "boxes_valid": valid.float().sum(1).mean(),
            "rep_std": embedding_std(online[0], keep=valid),
        }

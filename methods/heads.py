"""Projector / predictor MLPs and SoCo's detection-style neck (FPN + RoIAlign + R-CNN head).

BatchNorm layers here are plain ``nn.BatchNorm1d/2d``; the training loop swaps them for
synchronised ones when it runs distributed (``detlab.platform.distributed``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork, roi_align


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    """Linear -> BN -> ReLU (x layers-1) -> Linear(no bias): BYOL/DetCon projector shape.

    ``layers=3`` gives VICReg's expander (hidden -> hidden -> out).
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=False))
    return nn.Sequential(*mods)


def box_rois(boxes: Tensor, dtype: torch.dtype) -> Tensor:
    """boxes [B, K, 4] xyxy px -> RoIAlign's [B*K, 5] rows (image index, x1, y1, x2, y2)."""
    b, k, _ = boxes.shape
    flat = boxes.reshape(-1, 4).to(dtype)  # [B*K, 4]
    batch_idx = torch.arange(b, device=boxes.device).repeat_interleave(k)
    return torch.cat([batch_idx[:, None].to(dtype), flat], dim=1)


def c4_box_features(encoder: nn.Module, image: Tensor, boxes: Tensor, roi_size: int) -> Tensor:
    """SoCo's C4 structure (the official SoCo_C4): RoIAlign on C4, the backbone's own res5
    (``layer4``) as the box head, averaged over its output.

    image [B, 3, S, S], boxes [B, K, 4] xyxy px -> [B, K, C5 channels]."""
    c4 = encoder.forward_c4(image)  # [B, C4, S/s, S/s]
    b, k, _ = boxes.shape
    pooled = roi_align(c4, box_rois(boxes, c4.dtype), roi_size,
                       spatial_scale=c4.shape[-1] / image.shape[-1], sampling_ratio=2,
                       aligned=True)  # [B*K, C4, r, r]  # fmt: skip
    return encoder.layer4(pooled).mean(dim=(2, 3)).view(b, k, -1)


class BoxNeck(nn.Module):
    """SoCo: FPN P2-P5 over C2-C5, RoIAlign on the level chosen by box size, R-CNN head.

    Levels follow SoCo's size buckets at 224 px ([0-48], [49-96], [97-192], [193-224] px
    -> P2..P5), scaled to the configured resolution.
    """

    SIZES = (48.0, 96.0, 192.0)

    def __init__(
        self,
        pyramid_channels: list[int],
        channels: int,
        roi_size: int,
        hidden: int,
        resolution: int,
        convs: int = 4,
    ):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(pyramid_channels, channels)
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(channels * roi_size * roi_size, hidden)
        self.roi_size, self.out_dim = roi_size, hidden
        self.register_buffer(
            "thresholds", torch.tensor(self.SIZES) * resolution / 224.0, persistent=False
        )

    def forward(self, pyramid: dict[str, Tensor], boxes: Tensor, image_size: int) -> Tensor:
        """pyramid c2..c5 of [B, 3, S, S] images, boxes [B, K, 4] xyxy px -> [B, K, hidden]."""
        feats = list(self.fpn(OrderedDict(pyramid)).values())  # P2..P5
        b, k, _ = boxes.shape
        rois = box_rois(boxes, feats[0].dtype)  # [B*K, 5]
        flat = rois[:, 1:]  # [B*K, 4]
        side = ((flat[:, 2] - flat[:, 0]) * (flat[:, 3] - flat[:, 1])).clamp_min(0).sqrt()
        level = torch.bucketize(side, self.thresholds.to(side.dtype))  # [B*K] in 0..3
        # every box pooled from every level, each kept from its own: picking the boxes of a
        # level by index would read their count on the host (a GPU sync per level and view);
        # RoIAlign of B*K boxes costs little beside the backbone
        out = feats[0].new_zeros(b * k, feats[0].shape[1], self.roi_size, self.roi_size)
        for lvl, fmap in enumerate(feats):
            pooled = roi_align(fmap, rois, self.roi_size, spatial_scale=fmap.shape[-1] / image_size,
                               sampling_ratio=2, aligned=True)  # fmt: skip
            out = torch.where((level == lvl)[:, None, None, None], pooled.to(out.dtype), out)
        x = self.convs(out).flatten(1)  # [B*K, C*r*r]
        return self.fc(x).relu().view(b, k, -1)

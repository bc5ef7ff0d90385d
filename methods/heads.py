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
        flat = boxes.reshape(-1, 4).to(feats[0].dtype)  # [B*K, 4]
        batch_idx = torch.arange(b, device=boxes.device).repeat_interleave(k)
        rois = torch.cat([batch_idx[:, None].to(flat.dtype), flat], dim=1)  # [B*K, 5]
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

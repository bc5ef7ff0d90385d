"""SoCo's box neck (methods/heads.py): RoIAlign on the FPN level each box's size picks."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops import roi_align

from detlab.methods.heads import BoxNeck


def reference_rois(neck: BoxNeck, pyramid, boxes, size: int) -> torch.Tensor:
    """Each box pooled alone, from the one level SoCo's size buckets give it: [B*K, C, r, r]."""
    feats = list(neck.fpn(OrderedDict(pyramid)).values())
    out = []
    for i, box in enumerate(boxes.reshape(-1, 4)):
        side = float(((box[2] - box[0]) * (box[3] - box[1])).clamp_min(0).sqrt())
        level = sum(side > t * size / 224.0 for t in BoxNeck.SIZES)  # 0..3 -> P2..P5
        fmap = feats[level]
        roi = torch.cat([torch.tensor([i // boxes.shape[1]], dtype=box.dtype), box])[None]
        out.append(roi_align(fmap, roi, neck.roi_size, spatial_scale=fmap.shape[-1] / size,
                             sampling_ratio=2, aligned=True))  # fmt: skip
    return torch.cat(out)


def test_box_neck_pools_each_box_from_its_own_level():
    torch.manual_seed(0)
    size, channels = 64, [8, 16, 32, 64]
    neck = BoxNeck(channels, 16, roi_size=3, hidden=12, resolution=size).eval()
    pyramid = {f"c{i + 2}": torch.randn(2, c, size // 2 ** (i + 2), size // 2 ** (i + 2))
               for i, c in enumerate(channels)}  # fmt: skip
    # sides 8, 20, 40, 60 px at 64 px: one box per level (thresholds 13.7, 27.4, 54.9 px)
    boxes = torch.tensor([[[0, 0, 8, 8], [4, 4, 24, 24], [10, 10, 50, 50], [2, 2, 62, 62]],
                          [[30, 30, 38, 38], [0, 0, 20, 20], [20, 0, 60, 40], [0, 0, 64, 56]]],
                         dtype=torch.float32)  # fmt: skip
    with torch.no_grad():
        rois = reference_rois(neck, pyramid, boxes, size)
        expected = neck.fc(neck.convs(rois).flatten(1)).relu().view(2, 4, -1)
        got = neck(pyramid, boxes, size)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # every level is used, and its choice matters: all boxes from P2 would be another answer
    sides = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).sqrt().flatten()
    assert {sum(float(s) > t * size / 224.0 for t in BoxNeck.SIZES) for s in sides} == {0, 1, 2, 3}
    p2 = neck.fpn(OrderedDict(pyramid))["c2"]
    idx = torch.arange(2).repeat_interleave(4)[:, None].float()
    all_p2 = roi_align(p2, torch.cat([idx, boxes.reshape(-1, 4)], 1), 3,
                       spatial_scale=p2.shape[-1] / size, sampling_ratio=2, aligned=True)  # fmt: skip
    assert not torch.allclose(all_p2, rois, atol=1e-3)

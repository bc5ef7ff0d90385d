"""SoCo's box heads (methods/heads.py): RoIAlign on the FPN level each box's size picks;
the C4 structure's RoIAlign on C4 with res5 as the head."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.ops import roi_align

from detlab.methods.backbones import Backbone
from detlab.methods.heads import BoxNeck, c4_box_features


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


def test_c4_box_features_run_res5_on_each_boxs_own_image_crop_of_c4():
    """SoCo_C4: box k of image b is RoIAligned from image b's C4 (not C5, not another image),
    then the backbone's layer4 runs on it and is averaged; checked box by box."""
    torch.manual_seed(0)
    size = 64
    encoder = Backbone("resnet18", width=0.125, small_stem=True).eval()
    images = torch.randn(2, 3, size, size)
    boxes = torch.tensor([[[0, 0, 32, 32], [10, 20, 60, 50]], [[5, 5, 45, 60], [0, 0, 64, 64]]],
                         dtype=torch.float32)  # fmt: skip
    with torch.no_grad():
        c4 = encoder.forward_pyramid(images)["c4"]  # [2, C4, 16, 16]
        expected = torch.stack([
            torch.stack([
                encoder.layer4(roi_align(c4[b : b + 1], [boxes[b, k : k + 1]], 8,
                                         spatial_scale=c4.shape[-1] / size, sampling_ratio=2,
                                         aligned=True)).mean(dim=(2, 3))[0]
                for k in range(2)
            ])
            for b in range(2)
        ])  # fmt: skip
        got = c4_box_features(encoder, images, boxes, roi_size=8)
        swapped = c4_box_features(encoder, images.flip(0), boxes, roi_size=8)
    assert got.shape == (2, 2, encoder.out_channels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(swapped, got, atol=1e-3)  # each box reads its own image

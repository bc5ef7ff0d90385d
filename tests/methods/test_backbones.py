"""Backbone geometry: the studies' `small` backbone keeps an 8x8 C5 at 64 px; bad strides fail."""

import pytest
import torch

from detlab.methods.backbones import Backbone, BackboneError, build_backbone
from detlab.platform.compose import compose


def test_small_backbone_keeps_c5_at_one_eighth():
    bb = build_backbone(compose(["backbone=small"]).backbone)
    pyramid = bb.forward_pyramid(torch.randn(2, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in pyramid.items()} == {
        "c2": (32, 32), "c3": (16, 16), "c4": (8, 8), "c5": (8, 8)
    }  # fmt: skip


def test_tiny_backbone_geometry_is_unchanged():
    bb = build_backbone(compose(["backbone=tiny"]).backbone)
    assert bb(torch.randn(1, 3, 64, 64)).shape[-2:] == (8, 8)


@pytest.mark.parametrize(
    "kwargs", [{"small_stem": True, "stem_stride": 3}, {"last_stride": 4}, {"stem_stride": 2}]
)
def test_impossible_strides_are_refused(kwargs):
    with pytest.raises(BackboneError, match="stride"):
        Backbone("resnet18", 0.125, **kwargs)

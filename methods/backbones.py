"""ResNet backbones: torchvision's ResNet-18..152 with a width multiplier and a small stem.

``build_backbone(cfg.backbone)`` returns a ``Backbone`` whose parameter names are exactly
torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so at width 1 with the
standard stem its weights load into ``torchvision.models.resnet50()``. Tiny CPU configs
shrink every stage's width (``width=0.125``) and use a 3x3 stem without max-pool
(``small_stem``, stride ``stem_stride``); ``last_stride=1`` keeps layer4 at layer3's
resolution. The studies' geometry (``backbone=small``: stem stride 2, last stride 1) gives an
8x8 C5 at 64 px while its first stages run at half the input resolution.
``timm:<name>`` builds a timm ResNet (e.g. ``timm:resnet200d``) behind the same interface.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv

from detlab.methods.config import BackboneConfig

ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv.Bottleneck, [3, 4, 23, 3]),
    "resnet152": (tv.Bottleneck, [3, 8, 36, 3]),
    "resnet200": (tv.Bottleneck, [3, 24, 36, 3]),  # not in torchvision; DetCon's largest
}
TORCHVISION_CLASSES = 1000  # torchvision's ResNet head; exported untrained (see below)


class BackboneError(ValueError):
    """Unknown architecture or impossible width."""


class Backbone(tv.ResNet):
    """A torchvision ResNet without its classifier; see the module docstring.

    ``forward(x [B, 3, H, W]) -> C5 [B, C, H/32, W/32]`` (H/8 with the small stem),
    ``forward_pyramid(x) -> {"c2".."c5"}``, ``pooled(x) -> [B, C]``.
    """

    def __init__(
        self,
        arch: str,
        width: float = 1.0,
        small_stem: bool = False,
        stem_stride: int = 1,
        last_stride: int = 2,
    ):
        if arch not in ARCHS:
            raise BackboneError(
                f"backbone.name={arch!r} is not one of {sorted(ARCHS)} or timm:<name>"
            )
        if not 0 < width <= 4:
            raise BackboneError(f"backbone.width={width} must be in (0, 4]")
        if stem_stride not in (1, 2) or last_stride not in (1, 2):
            raise BackboneError(
                f"backbone.stem_stride={stem_stride} and backbone.last_stride={last_stride} "
                "must each be 1 or 2"
            )
        if stem_stride != 1 and not small_stem:
            raise BackboneError("backbone.stem_stride applies to the small stem only")
        block, layers = ARCHS[arch]
        nn.Module.__init__(self)
        # the attributes torchvision's _make_layer reads
        self._norm_layer, self.groups, self.base_width, self.dilation = nn.BatchNorm2d, 1, 64, 1
        planes = [max(4, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = planes[0]
        # stem, registered in execution order (conv, BN, ReLU, pool)
        if small_stem:
            self.conv1 = nn.Conv2d(3, planes[0], 3, stride=stem_stride, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, planes[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=last_stride)
        self.pyramid_channels = [p * block.expansion for p in planes]
        self.out_channels = self.pyramid_channels[-1]
        self.arch, self.small_stem = arch, small_stem
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        c2 = self.layer1(self._stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c2": c2, "c3": c3, "c4": c4, "c5": c5}

    def forward_c4(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> C4, stopping before layer4 (SoCo's C4 structure runs layer4 on
        RoIs: its BatchNorm then sees box features only, as in the detector it pretrains)."""
        return self.layer3(self.layer2(self.layer1(self._stem(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pyramid(x)["c5"]

    def pooled(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C] global average of the final feature map."""
        return self.forward(x).mean(dim=(2, 3))

    def torchvision_state_dict(self) -> dict[str, Tensor]:
        """Weights for ``torchvision.models.<arch>()`` (strict load at width 1, standard stem).

        torchvision's model carries a 1000-way ``fc`` that pretraining never trains: it is
        filled with torchvision's own initialisation (seeded, so exports are reproducible).
        """
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        gen = torch.Generator().manual_seed(0)
        fc = nn.Linear(self.out_channels, TORCHVISION_CLASSES)
        bound = 1 / self.out_channels**0.5
        with torch.no_grad():
            fc.weight.uniform_(-bound, bound, generator=gen)
            fc.bias.uniform_(-bound, bound, generator=gen)
        state["fc.weight"], state["fc.bias"] = fc.weight.detach(), fc.bias.detach()
        return state


class TimmBackbone(nn.Module):
    """A timm ResNet (``features_only``) behind the Backbone interface (e.g. ResNet-200)."""

    def __init__(self, name: str):
        super().__init__()
        import timm

        try:
            self.body = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4)
            )
        except RuntimeError as exc:
            raise BackboneError(f"backbone.name=timm:{name}: {exc}") from exc
        self.pyramid_channels = list(self.body.feature_info.channels())
        self.out_channels = self.pyramid_channels[-1]

    def forward_pyramid(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(("c2", "c3", "c4", "c5"), self.body(x), strict=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_pyramid(x)["c5"]

    def pooled(self, x: Tensor) -> Tensor:
        return self.forward(x).mean(dim=(2, 3))

    def torchvision_state_dict(self) -> dict[str, Tensor]:
        raise BackboneError("timm backbones have no torchvision equivalent: use state_dict()")


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """BackboneConfig -> Backbone (torchvision names) or TimmBackbone (``timm:<name>``)."""
    if cfg.name.startswith("timm:"):
        return TimmBackbone(cfg.name.split(":", 1)[1])
    return Backbone(
        cfg.name,
        float(cfg.width),
        bool(cfg.small_stem),
        int(cfg.stem_stride),
        int(cfg.last_stride),
    )

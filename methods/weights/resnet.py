"""A torchvision ResNet shaped by its weights, and TF/Haiku SAME padding for exact imports.

``build_resnet(state)`` builds the model that ``state`` (torchvision names) loads into
strictly: block type, blocks per stage, every width, the stem (ImageNet 7x7 + max-pool or
the CIFAR 3x3 stem without max-pool), shortcut convolutions and the ``fc`` head if present
are all read from the tensors, so ResNet-200 or a 1/8-width test model need no table.
``tf_same(model)`` swaps its strided convolutions and the max-pool for SAME-padded ones
(pad ``total // 2`` before, the rest after, as TensorFlow and Haiku do): with weights
converted from Haiku the forward then matches the original exactly; torchvision's symmetric
padding shifts every stride-2 layer by half a pixel.
"""

from __future__ import annotations

import math
import re

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv

DEPTHS = {  # (block, blocks per stage) -> torchvision-style name
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
    ("bottleneck", (3, 24, 36, 3)): "resnet200",
}


class WeightsError(ValueError):
    """Weights that do not form a ResNet, or a file that cannot be read safely."""


def describe(state: dict[str, Tensor]) -> dict:
    """Architecture of torchvision-named ResNet weights: block, depth, widths, stem."""
    if "conv1.weight" not in state:
        raise WeightsError("no conv1.weight: not a ResNet backbone in torchvision names")
    layers = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        if not blocks or blocks != set(range(len(blocks))):
            raise WeightsError(f"layer{i}: blocks {sorted(blocks)} are not 0..n-1")
        layers.append(len(blocks))
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    last = "conv3" if block == "bottleneck" else "conv2"
    stem = state["conv1.weight"]
    return {
        "block": block,
        "layers": layers,
        "arch": DEPTHS.get((block, tuple(layers)), "custom"),
        "stem_width": int(stem.shape[0]),
        "widths": [int(state[f"layer{i}.0.{last}.weight"].shape[0]) for i in range(1, 5)],
        "stem": "imagenet" if stem.shape[-1] == 7 else "cifar",
        "fc": tuple(state["fc.weight"].shape) if "fc.weight" in state else None,
    }


def _conv_like(w: Tensor, stride: int) -> nn.Conv2d:
    out, cin, k, _ = w.shape
    return nn.Conv2d(cin, out, k, stride=stride, padding=k // 2, bias=False)


def build_resnet(state: dict[str, Tensor]) -> tv.ResNet:
    """The torchvision ResNet that ``state`` loads into strictly, loaded with it.

    Without ``fc.*`` in the weights the head is ``nn.Identity()``: the model returns the
    pooled features.
    """
    arch = describe(state)
    kind = tv.Bottleneck if arch["block"] == "bottleneck" else tv.BasicBlock
    model = tv.ResNet(kind, arch["layers"])
    if arch["stem"] == "cifar":
        model.conv1 = _conv_like(state["conv1.weight"], 1)
        model.maxpool = nn.Identity()
    # every convolution and BN takes the shape of its weights (strides stay torchvision's)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and f"{name}.weight" in state:
            _set(model, name, _conv_like(state[f"{name}.weight"], module.stride[0]))
        elif isinstance(module, nn.BatchNorm2d) and f"{name}.weight" in state:
            _set(model, name, nn.BatchNorm2d(state[f"{name}.weight"].shape[0]))
    for i in range(1, 5):  # shortcut convolutions where the weights have them
        first = getattr(model, f"layer{i}")[0]
        key = f"layer{i}.0.downsample.0.weight"
        if key in state and first.downsample is None:
            w = state[key]
            first.downsample = nn.Sequential(_conv_like(w, 1), nn.BatchNorm2d(w.shape[0]))
    if arch["fc"]:
        model.fc = nn.Linear(arch["fc"][1], arch["fc"][0])
    else:
        model.fc = nn.Identity()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weights do not fit a ResNet: missing {missing[:8]}, "
                           f"unexpected {unexpected[:8]}")  # fmt: skip
    return model


def _set(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


# ------------------------------------------------------------------ TF / Haiku SAME padding


def _same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow's SAME padding (asymmetric for even sizes at stride 2)."""

    def forward(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        top, bottom = _same_pads(x.shape[-2], kh, sh)
        left, right = _same_pads(x.shape[-1], kw, sw)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride)


class MaxPool2dSame(nn.MaxPool2d):
    """nn.MaxPool2d with SAME padding (padded cells never win: -inf)."""

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.kernel_size, self.stride
        top, bottom = _same_pads(x.shape[-2], k, s)
        left, right = _same_pads(x.shape[-1], k, s)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        return F.max_pool2d(x, k, s)


def tf_same(model: nn.Module) -> nn.Module:
    """Give ``model`` TF SAME padding in place (weights and state-dict names unchanged)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Conv2d) and not isinstance(module, Conv2dSame):
            same = Conv2dSame(module.in_channels, module.out_channels, module.kernel_size,
                              module.stride, 0, bias=module.bias is not None)  # fmt: skip
            same.weight, same.bias = module.weight, module.bias
            _set(model, name, same)
        elif isinstance(module, nn.MaxPool2d) and not isinstance(module, MaxPool2dSame):
            _set(model, name, MaxPool2dSame(module.kernel_size, module.stride))
    return model

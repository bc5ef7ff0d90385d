"""Segmentation probe: frozen dense features, a 1x1 conv head (on C5, or on an FPN over
C2-C5), upsampled to the label resolution; mIoU and per-class IoU from a confusion matrix."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from detlab.methods.augment import IMAGENET_MEAN, IMAGENET_STD, as_chw_uint8, to_float

IGNORE = 255


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore: int = IGNORE
) -> Tensor:
    """[K, K] counts, rows = ground truth, columns = prediction; ``ignore`` pixels skipped."""
    keep = target != ignore
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, -1)


def miou(conf: Tensor) -> tuple[float, list[float]]:
    """Mean IoU over classes present in ground truth or prediction, and per-class IoU (nan
    for classes absent from both)."""
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))
    valid = ~torch.isnan(iou)
    return float(iou[valid].mean()) if valid.any() else 0.0, iou.tolist()


def load_split(images, resolution: int) -> tuple[Tensor, Tensor]:
    """Images resized to R x R (normalised) and their semantic labels (nearest)."""
    xs, ys = [], []
    for i in range(len(images)):
        x = TF.resize(as_chw_uint8(images.load_image(i)), [resolution, resolution], antialias=True)
        xs.append(TF.normalize(to_float(x), IMAGENET_MEAN, IMAGENET_STD))
        y = torch.from_numpy(np.asarray(images.semantic(i)))[None]
        ys.append(TF.resize(y, [resolution, resolution], TF.InterpolationMode.NEAREST)[0])
    return torch.stack(xs), torch.stack(ys).long()


class SegHead(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, head: str, fpn_channels: int = 64):
        super().__init__()
        self.backbone, self.kind = backbone, head
        if head == "fpn":
            self.fpn = FeaturePyramidNetwork(list(backbone.pyramid_channels), fpn_channels)
            self.classifier = nn.Conv2d(fpn_channels, num_classes, 1)
        elif head == "linear":
            self.classifier = nn.Conv2d(backbone.out_channels, num_classes, 1)
        else:
            raise ValueError(f"eval.head={head!r} is not one of linear, fpn")

    def features(self, x: Tensor):
        return self.backbone.forward_pyramid(x) if self.kind == "fpn" else self.backbone(x)

    def classify(self, feats, size) -> Tensor:
        if self.kind == "fpn":
            feats = next(iter(self.fpn(OrderedDict(feats)).values()))  # P2, the finest level
        return F.interpolate(
            self.classifier(feats), size=size, mode="bilinear", align_corners=False
        )


def seg_probe(backbone, train_images, val_images, cfg, device, progress=True) -> dict:
    """Train the head (and the backbone when ``cfg.finetune``); mIoU on the val split."""
    num_classes = int(train_images.num_seg_classes)
    xtr, ytr = load_split(train_images, cfg.resolution)
    xva, yva = load_split(val_images, cfg.resolution)
    model = SegHead(backbone, num_classes, cfg.head).to(device)
    params = (
        model.parameters()
        if cfg.finetune
        else [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    )
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    model.backbone.train(cfg.finetune)
    cached = None
    if not cfg.finetune:  # frozen: dense features once
        with torch.no_grad():
            cached = [model.features(xtr[i : i + cfg.batch_size].to(device))
                      for i in range(0, len(xtr), cfg.batch_size)]  # fmt: skip
    bar = tqdm(range(cfg.epochs), desc="seg probe", disable=not progress, leave=False)
    for _ in bar:
        for b in torch.randperm(len(range(0, len(xtr), cfg.batch_size)), generator=gen).tolist():
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            feats = cached[b] if cached is not None else model.features(xtr[sl].to(device))
            logits = model.classify(feats, ytr.shape[-2:])
            loss = F.cross_entropy(logits, ytr[sl].to(device), ignore_index=IGNORE)
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    preds = []
    with torch.no_grad():
        for i in range(0, len(xva), cfg.batch_size):
            x = xva[i : i + cfg.batch_size].to(device)
            pred = model.classify(model.features(x), yva.shape[-2:]).argmax(1).cpu()
            conf += confusion_matrix(pred, yva[i : i + cfg.batch_size], num_classes)
            preds.append(pred)
    mean, per_class = miou(conf)
    names = ["background", *train_images.classes][:num_classes]
    out = {"miou": mean, **{f"iou_{n}": v for n, v in zip(names, per_class, strict=False)}}
    out["_vis"] = (
        xva[: cfg.num_visualise],
        yva[: cfg.num_visualise],
        torch.cat(preds)[: cfg.num_visualise],
    )
    return out

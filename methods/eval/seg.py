"""Segmentation probe: frozen dense features, a 1x1 conv head (on C5, or on an FPN over
C2-C5), upsampled to the label resolution; mIoU and per-class IoU from a confusion matrix.

The frozen linear probe (the studies' protocol) is fitted like the linear classification probe:
features standardised with the train split's per-channel statistics (so backbones whose
features differ only in scale, a random init and a trained net, are probed alike), then a
per-pixel multinomial logistic regression (1x1 conv, logits upsampled bilinearly to the label
resolution) fitted full-batch with L-BFGS, so the score does not hinge on a learning-rate
schedule. The FPN head and fine-tuning train with SGD. Reported: ``miou`` over every class, ``miou_objects`` over the object classes only (the
number to read: background dominates the pixels and is easy), ``iou_background`` and
``iou_<class>``."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from detlab.methods.augment import as_chw_uint8, to_float
from detlab.methods.photometric import IMAGENET_MEAN, IMAGENET_STD

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


def load_image(images, i: int, resolution: int) -> Tensor:
    """Image ``i`` resized to R x R, normalised: [3, R, R]."""
    x = TF.resize(as_chw_uint8(images.load_image(i)), [resolution, resolution], antialias=True)
    return TF.normalize(to_float(x), IMAGENET_MEAN, IMAGENET_STD)


def load_split(images, resolution: int) -> tuple[Tensor, Tensor]:
    """Images resized to R x R (normalised) and their semantic labels (nearest)."""
    xs, ys = [], []
    for i in range(len(images)):
        xs.append(load_image(images, i, resolution))
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


@torch.no_grad()
def dense_features(backbone: nn.Module, x: Tensor, batch_size: int, device) -> Tensor:
    """[N, C, h, w] frozen C5 features of [N, 3, H, W] images (eval mode, on the CPU)."""
    backbone.eval()
    return torch.cat(
        [
            backbone(x[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(x), batch_size)
        ]  # fmt: skip
    )


def fit_linear_seg(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    iters: int,
    weight_decay: float,
    balanced: bool = True,
    max_pixels: int | None = None,
) -> tuple[Tensor, Tensor, nn.Conv2d]:
    """Standardise ``feats`` [N, C, h, w], fit a 1x1 conv to ``labels`` [N, H, W] by L-BFGS;
    returns (mean, std, head) for ``predict_linear_seg``.

    ``balanced``: classes weighted by inverse pixel frequency (scikit-learn's "balanced":
    n_pixels / (n_classes x count)), so a background that covers most pixels cannot win every
    pixel of a weak feature map; the probe then measures what the features separate.

    A 1x1 conv commutes with bilinear upsampling, so the features are upsampled once to twice
    their size and the labels taken there (nearest): the fit then costs one small matmul per
    L-BFGS evaluation instead of an upsampling of every logit map to the label size.

    ``max_pixels``: fit on that many labelled pixels drawn uniformly without replacement
    (a fixed generator: the same pixels for every backbone probed on the same data); None
    or more than there are: all of them."""
    mean = feats.mean((0, 2, 3), keepdim=True)
    std = feats.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    h, w = feats.shape[-2:]
    size = (min(2 * h, labels.shape[-2]), min(2 * w, labels.shape[-1]))
    x = F.interpolate((feats - mean) / std, size=size, mode="bilinear", align_corners=False)
    y = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # [N*h'*w', C]
    y = y.reshape(-1)
    keep = y != IGNORE
    x, y = x[keep], y[keep]
    if max_pixels is not None and len(y) > max_pixels:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:max_pixels]
        x, y = x[pick], y[pick]
    head = nn.Conv2d(x.shape[1], num_classes, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max(1, iters),
                            line_search_fn="strong_wolfe")  # fmt: skip
    decay = max(weight_decay, 1e-6)
    weight = None
    if balanced:
        counts = torch.bincount(y, minlength=num_classes).float()
        weight = torch.where(counts > 0, len(y) / (num_classes * counts.clamp_min(1)), 0.0)

    def closure():
        opt.zero_grad()
        logits = F.linear(x, head.weight[:, :, 0, 0], head.bias)  # [P, K]
        loss = F.cross_entropy(logits, y, weight=weight) + decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return mean, std, head


@torch.no_grad()
def predict_linear_seg(feats: Tensor, mean: Tensor, std: Tensor, head: nn.Conv2d, size) -> Tensor:
    logits = head((feats - mean) / std)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


def seg_scores(conf: Tensor, names: list[str]) -> dict[str, float]:
    """mIoU over all classes, over the object classes (background = class 0 excluded), and
    per class, from a confusion matrix."""
    mean, per_class = miou(conf)
    objects = float(np.nanmean(per_class[1:])) if len(per_class) > 1 else mean
    out = {"miou": mean, "miou_objects": objects}
    out.update({f"iou_{n}": v for n, v in zip(names, per_class, strict=False)})
    return out


def level_standardiser(cached: list):
    """Per-channel standardisation of frozen features (a map [B, C, h, w] or a pyramid
    {level: map}) with the train split's statistics: frozen features of any scale feed the
    SGD head alike (unscaled pretrained pyramids made it diverge at eval.lr=0.05)."""

    def stats(maps: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat(maps)
        return x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True).clamp_min(1e-6)

    if isinstance(cached[0], dict):
        st = {k: stats([c[k] for c in cached]) for k in cached[0]}
        return lambda f: {k: (v - st[k][0]) / st[k][1] for k, v in f.items()}
    mean, std = stats(cached)
    return lambda f: (f - mean) / std


def seg_probe(backbone, train_images, val_images, cfg, device, progress=True) -> dict:
    """Train the head (and the backbone when ``cfg.finetune``); mIoU on the val split."""
    num_classes = int(train_images.num_seg_classes)
    names = ["background", *train_images.classes][:num_classes]
    xtr, ytr = load_split(train_images, cfg.resolution)
    xva, yva = load_split(val_images, cfg.resolution)
    if cfg.head == "linear" and not cfg.finetune:
        ftr = dense_features(backbone, xtr, cfg.batch_size, device)
        mean, std, head = fit_linear_seg(
            ftr, ytr, num_classes, cfg.epochs, cfg.weight_decay, cfg.balanced, cfg.max_pixels
        )
        fva = dense_features(backbone, xva, cfg.batch_size, device)
        pred = predict_linear_seg(fva, mean, std, head, yva.shape[-2:])
        out = seg_scores(confusion_matrix(pred, yva, num_classes), names)
        n = cfg.num_visualise
        out["_vis"] = (xva[:n], yva[:n], pred[:n])
        return out
    model = SegHead(backbone, num_classes, cfg.head).to(device)
    params = (
        model.parameters()
        if cfg.finetune
        else [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    )
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(0)
    model.backbone.train(cfg.finetune)
    cached, norm = None, lambda f: f
    if not cfg.finetune:  # frozen: dense features once, standardised per level and channel
        with torch.no_grad():
            cached = [model.features(xtr[i : i + cfg.batch_size].to(device))
                      for i in range(0, len(xtr), cfg.batch_size)]  # fmt: skip
        norm = level_standardiser(cached)
        cached = [norm(f) for f in cached]
    bar = tqdm(range(cfg.epochs), desc="seg probe", disable=not progress, leave=False)
    for epoch in bar:
        for b in torch.randperm(len(range(0, len(xtr), cfg.batch_size)), generator=gen).tolist():
            sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
            feats = cached[b] if cached is not None else model.features(xtr[sl].to(device))
            logits = model.classify(feats, ytr.shape[-2:])
            loss = F.cross_entropy(logits, ytr[sl].to(device), ignore_index=IGNORE)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"seg probe (head={cfg.head}) loss is {loss.item()} in epoch {epoch + 1}: "
                    f"lower eval.lr (now {cfg.lr})"
                )
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
            pred = model.classify(norm(model.features(x)), yva.shape[-2:]).argmax(1).cpu()
            conf += confusion_matrix(pred, yva[i : i + cfg.batch_size], num_classes)
            preds.append(pred)
    out = seg_scores(conf, names)
    out["_vis"] = (
        xva[: cfg.num_visualise],
        yva[: cfg.num_visualise],
        torch.cat(preds)[: cfg.num_visualise],
    )
    return out

"""The supervised reference of a study: the same backbone trained on the labels (segmentation
where the data has it, else image classes) with the same budget as a pretraining cell
(steps x batch, resolution, crop augmentation), then probed exactly like the pretrained cells. It bounds from above what label-free
pretraining can be expected to reach at this budget; a random init bounds it from below."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from tqdm import tqdm

from detlab.methods.augment import CropFlip
from detlab.methods.eval.seg import IGNORE, load_image, load_split


def train_supervised(
    backbone: nn.Module,
    train_images,
    *,
    resolution: int,
    steps: int,
    batch_size: int,
    crop_scale=(0.08, 1.0),
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device=torch.device("cpu"),
    progress: bool = False,
) -> nn.Module:
    """Train ``backbone`` + a head on its labels: per-pixel cross-entropy through a 1x1 conv
    on C5 where the split has segmentation labels, else image-level cross-entropy through a
    linear layer on the pooled C5 features (a classification dataset, e.g. Fashion-MNIST).
    AdamW, one-cycle schedule, paired random-resized-crop + flip of image and labels;
    returns the backbone (the head is dropped: the probes fit their own)."""
    semantic = bool(train_images.has_semantic)
    # images at 1.25x the training resolution: crops keep detail
    size = int(round(resolution * 1.25))
    if semantic:
        x, y = load_split(train_images, size)
        head = nn.Conv2d(backbone.out_channels, int(train_images.num_seg_classes), 1)
    else:
        labels = [r.label for r in train_images.records]
        if any(label is None for label in labels):
            raise ValueError(f"{train_images}: no segmentation and not every image has a class")
        y = torch.tensor(labels)  # [N] image classes
        head = nn.Linear(backbone.out_channels, len(train_images.classes))
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.1
    )
    crop = CropFlip(resolution, crop_scale, (3 / 4, 4 / 3))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the crop windows (torchvision draws from the global RNG)
    for _ in tqdm(range(steps), desc="supervised", disable=not progress, leave=False):
        idx = torch.randint(len(y), (batch_size,), generator=gen)
        xs, ys = [], []
        for i in idx.tolist():
            image = tv_tensors.Image(x[i] if semantic else load_image(train_images, i, size))
            p = crop.sample(image)
            xs.append(crop.apply(image, p).as_subclass(torch.Tensor))
            if semantic:
                ys.append(crop.apply(tv_tensors.Mask(y[i][None]), p).as_subclass(torch.Tensor)[0])
        xb = torch.stack(xs).to(device)
        if semantic:
            yb = torch.stack(ys).to(device)
            logits = F.interpolate(
                model["head"](model["backbone"](xb)), size=yb.shape[-2:], mode="bilinear",
                align_corners=False,
            )  # fmt: skip
        else:
            yb = y[idx].to(device)
            logits = model["head"](model["backbone"].pooled(xb))  # [B, classes]
        loss = F.cross_entropy(logits, yb.long(), ignore_index=IGNORE)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supervised reference: loss is {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return backbone.eval()

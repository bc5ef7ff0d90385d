"""Frozen features for the classification probes: one deterministic pass over a split."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from detlab.methods.config import DataConfig
from detlab.methods.data import EvalDataset


def build_eval_loader(
    data: DataConfig,
    split: str,
    resolution: int = 224,
    batch_size: int = 64,
    max_images: int | None = None,
) -> DataLoader:
    """(centre crop, label) batches of ``split`` in dataset order (no shuffling).
    ``max_images``: that many images spread evenly over the split (an ImageFolder lists its
    images class by class, so its first N may all be one class); ``data.max_images`` keeps
    its meaning, the split's first N (smoke runs)."""
    from detlab.methods.datasets import open_dataset

    images = open_dataset(data.root, split, format=data.format, max_images=data.max_images)
    dataset = EvalDataset(images, resolution)
    if max_images is not None and max_images < len(dataset):
        dataset = Subset(dataset, torch.linspace(0, len(dataset) - 1, max_images).long().tolist())
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=data.num_workers,
    )


@torch.no_grad()
def extract_features(
    backbone: torch.nn.Module, loader: DataLoader, device: torch.device, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """-> (features [N, C] float32 from ``backbone.pooled``, labels [N] int64) on the CPU."""
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    for x, y in tqdm(loader, desc="features", disable=not progress, leave=False):
        feats.append(backbone.pooled(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()

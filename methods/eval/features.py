"""Frozen features for the classification probes: one deterministic pass over a split."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader
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
    """(centre crop, label) batches of ``split`` in dataset order (no shuffling)."""
    from detlab.methods.datasets import open_dataset

    limit = max_images if data.max_images is None else min(max_images or 10**12, data.max_images)
    images = open_dataset(data.root, split, format=data.format, max_images=limit)
    return DataLoader(
        EvalDataset(images, resolution),
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

"""Prediction pictures for a few validation images (logged as MLflow artifacts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detlab.methods.photometric import IMAGENET_MEAN, IMAGENET_STD


def _rgb(x: torch.Tensor, normalised: bool) -> np.ndarray:
    if normalised:
        x = (
            x * torch.tensor(IMAGENET_STD)[:, None, None]
            + torch.tensor(IMAGENET_MEAN)[:, None, None]
        )
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def save_visualisation(protocol: str, vis, out_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{protocol}_predictions.png"
    if protocol == "seg":
        images, labels, preds = vis
        n = len(images)
        if n == 0:
            return None
        fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
        for i in range(n):
            for ax, (title, im) in zip(axes[i], (("image", _rgb(images[i], True)),
                                                 ("ground truth", labels[i].numpy()),
                                                 ("prediction", preds[i].numpy())), strict=True):  # fmt: skip
                ax.imshow(
                    im,
                    cmap=None if im.ndim == 3 else "tab10",
                    vmin=0,
                    vmax=9 if im.ndim == 2 else None,
                    interpolation="nearest",
                )
                ax.set_title(title, fontsize=8)
                ax.axis("off")
    elif protocol == "det":
        if not vis:
            return None
        fig, axes = plt.subplots(1, len(vis), figsize=(2.5 * len(vis), 2.5), squeeze=False)
        for ax, (image, boxes) in zip(axes[0], vis, strict=True):
            ax.imshow(_rgb(image, False))
            for x0, y0, x1, y1 in boxes.tolist():
                ax.add_patch(
                    plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1)
                )
            ax.axis("off")
    else:
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

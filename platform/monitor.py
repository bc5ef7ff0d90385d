"""What the training loop reports besides the loss: online kNN accuracy and data lineage."""

from __future__ import annotations

import torch

from detlab.platform.config import DataConfig, EvalConfig
from detlab.platform.distributed import DistInfo


def fingerprints(dataset) -> dict[str, str]:
    """DVC lineage tags: the dataset's fingerprint and the mask set's generator/fingerprint."""
    tags: dict[str, str] = {}
    images = getattr(dataset, "images", None) or getattr(dataset, "dataset", None)
    if images is not None and getattr(images, "fingerprint", None):
        tags["detlab.data_fingerprint"] = images.fingerprint
    store = getattr(dataset, "store", None)
    if store is not None:
        meta = store.meta
        tags["detlab.masks_generator"] = str(meta.get("generator"))
        tags["detlab.masks_fingerprint"] = str(meta.get("fingerprint", meta.get("params")))[:250]
    return tags


class KnnMonitor:
    """Weighted kNN top-1 of the frozen backbone: train split as memory, val split as queries.

    Runs on rank 0 only (other ranks simply wait at their next collective).
    """

    def __init__(self, data: DataConfig, eval_cfg: EvalConfig, resolution: int, batch_size: int,
                 max_images: int, info: DistInfo):  # fmt: skip
        from detlab.methods.eval.features import build_eval_loader

        self.info = info
        self.k, self.t = eval_cfg.k, eval_cfg.knn_temperature
        self.loaders = None
        if info.is_main:
            kw = dict(resolution=resolution, batch_size=batch_size, max_images=max_images)
            self.loaders = (
                build_eval_loader(data, data.train_split, **kw),
                build_eval_loader(data, data.val_split, **kw),
            )

    @torch.no_grad()
    def __call__(self, backbone: torch.nn.Module) -> dict[str, float]:
        if not self.info.is_main:
            return {}
        from detlab.methods.eval.features import extract_features
        from detlab.methods.eval.knn import knn_classify

        was_training = backbone.training
        backbone.eval()
        (ftr, ltr), (fva, lva) = (
            extract_features(backbone, loader, self.info.device, progress=False)
            for loader in self.loaders
        )
        backbone.train(was_training)
        num_classes = int(max(ltr.max(), lva.max())) + 1
        res = knn_classify(
            ftr, ltr, fva, lva, k=self.k, temperature=self.t, num_classes=num_classes
        )
        return {"knn_top1": float(res["top1"])}

"""Evaluation speed: feature extraction images/s (tiny backbone, 64 px), the linear probe's
wall time on 10k features, kNN on 10k x 10k features (target: under 2 s on CPU).

    python tests/benchmarks/bench_eval.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from detlab.methods.backbones import build_backbone
from detlab.methods.datasets.shapes import generate_shapes
from detlab.methods.eval.features import build_eval_loader, extract_features
from detlab.methods.eval.knn import knn_classify
from detlab.methods.eval.linear import linear_probe
from detlab.platform.compose import compose


def main() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(10_000, 512, generator=g)
    labels = torch.randint(0, 100, (10_000,), generator=g)
    t0 = time.perf_counter()
    knn_classify(feats, labels, feats, labels, k=20, num_classes=100)
    print(f"kNN 10k x 10k (512-d, k=20):        {time.perf_counter() - t0:6.2f} s")
    t0 = time.perf_counter()
    linear_probe(feats, labels, feats[:2000], labels[:2000], 100, epochs=100)
    print(f"linear probe 10k x 512, 100 L-BFGS:  {time.perf_counter() - t0:6.2f} s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    root = generate_shapes(tmp / "s", seed=0, num_train=512, num_val=1, image_size=64,
                           max_objects=3, progress=False)  # fmt: skip
    cfg = compose(["backbone=tiny", f"data.root={root}"])
    loader = build_eval_loader(cfg.data, "train", resolution=64, batch_size=128)
    backbone = build_backbone(cfg.backbone)
    t0 = time.perf_counter()
    extract_features(backbone, loader, torch.device("cpu"))
    print(f"feature extraction (tiny, 64 px):   {512 / (time.perf_counter() - t0):6.0f} images/s")


if __name__ == "__main__":
    main()

"""Paired augmentation throughput: two views + masks at 224 px, one CPU core.

    python tests/benchmarks/bench_augment.py [--images 200] [--size 375x500] [--resolution 224]

detlab's ``build_pair_transform`` (BYOL's asymmetric views, DetCon-B) side by side with
lightly's ``DetConSTransform`` configured as close as it allows (BYOL jitter strengths,
blur p = 1.0 / 0.1; lightly has no solarize in this transform). Both start from the same
decoded uint8 arrays (lightly from a PIL image, its documented input), so decoding is not
timed. Also times detlab's SoCo three-view transform. Prints images/s (pairs per second).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from detlab.methods.augment import build_pair_transform, build_soco_transform
from detlab.platform.config import AugConfig


def scenes(n: int, h: int, w: int, seed: int = 0):
    """Natural-ish images (smooth gradients + blocks) and FH-like masks (~30 regions)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        img = (
            rng.integers(0, 256, 3)[None, None, :] * (yy[..., None] / h)
            + rng.integers(0, 256, 3)[None, None, :] * (xx[..., None] / w)
        ) / 2
        img = img + rng.normal(0, 12, img.shape)
        ids = rng.integers(0, 30, (6, 8)).astype(np.uint8)
        mask = np.kron(ids, np.ones((h // 6 + 1, w // 8 + 1), np.uint8))[:h, :w]
        boxes = np.array([[20, 30, 200, 220], [150, 40, 400, 300], [50, 200, 250, 360]], np.float32)
        out.append((np.clip(img, 0, 255).astype(np.uint8), mask, boxes))
    return out


def rate(fn, data, repeat: int = 2) -> float:
    for item in data[:5]:
        fn(item)  # warm-up (allocator, oneDNN primitives)
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for item in data:
            fn(item)
        best = max(best, len(data) / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="375x500", help="input HxW (ImageNet's median is ~375x500)")
    ap.add_argument("--resolution", type=int, default=224)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = scenes(args.images, h, w)
    aug = AugConfig(resolution=args.resolution)

    pair = build_pair_transform(aug)
    soco = build_soco_transform(aug, num_boxes=4)
    results = {
        "detlab pair (DetCon-B views + masks)": rate(lambda it: pair(it[0], it[1]), data),
        "detlab SoCo (V1/V2/V3 + 4 boxes)": rate(lambda it: soco(it[0], it[2]), data),
    }
    try:
        from lightly.transforms.detcon_transform import DetConSTransform
        from PIL import Image
        from torchvision.tv_tensors import Mask

        lt = DetConSTransform(
            input_size=args.resolution,
            gaussian_blur_t1=1.0,
            gaussian_blur_t2=0.1,
            cj_bright=0.4,
            cj_contrast=0.4,
            cj_sat=0.2,
            cj_hue=0.1,
        )
        results["lightly DetConSTransform (PIL in)"] = rate(
            lambda it: lt(Image.fromarray(it[0]), Mask(torch.from_numpy(it[1])[None])), data
        )
    except ImportError as exc:
        results[f"lightly: not installed ({exc.name})"] = float("nan")

    print(f"paired augmentation, {args.images} images {h}x{w} -> {args.resolution} px, 1 thread")
    for name, r in results.items():
        print(f"  {name:42s} {r:8.1f} images/s  ({1e3 / r:6.2f} ms/image)")
    ours, theirs = (
        results["detlab pair (DetCon-B views + masks)"],
        next((v for k, v in results.items() if k.startswith("lightly DetCon")), float("nan")),
    )
    if theirs == theirs:
        print(f"  speed-up vs lightly: {ours / theirs:.2f}x (target >= 1.0)")


if __name__ == "__main__":
    main()

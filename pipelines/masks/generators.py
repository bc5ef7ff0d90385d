"""Mask generators: image [H, W, 3] uint8 -> ids [H, W] uint8, or proposals [K, 4] xyxy.

- ``grid``: the n x n spatial heuristic (row-major ids).
- ``fh``: Felzenszwalb-Huttenlocher via scikit-image with DetCon's official parameters
  (scale=1000, sigma=0.8, min_size=1000 at ~224 px and above). Below ``reference`` px the
  minimum segment size scales with the image area, (S / reference)^2: the official
  min_size would swallow whole objects of a 64-128 px image.
- ``slic``: SLIC superpixels (scikit-image).
- ``gt``: the dataset's instance masks (id = instance index + 1, 0 = background).
- ``ss``: selective-search boxes (see ``selective_search.py``).
- ``global``: one mask covering the image (DetCon reduces to SimCLR / BYOL); stored so
  the global baseline's mask quality is measured like the others'.
Ids beyond 255 (many FH segments) are folded into 255, so masks fit in uint8.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb, slic

DEFAULTS: dict[str, dict] = {
    "grid": {"n": 4},
    "fh": {"scale": 1000, "sigma": 0.8, "min_size": 1000, "reference": 224},
    "slic": {"n_segments": 16, "compactness": 10.0, "sigma": 1.0},
    "ss": {
        "scale": 300,
        "sigma": 0.9,
        "min_size": 100,
        "reference": 224,
        "min_box": 32,
        "max_boxes": 100,
    },  # fmt: skip
    "gt": {},
    "global": {},
}
KIND = {"grid": "mask", "fh": "mask", "slic": "mask", "gt": "mask", "ss": "boxes",
        "global": "mask"}  # fmt: skip


def fold_ids(ids: np.ndarray) -> np.ndarray:
    """int ids -> uint8, ids >= 255 merged into 255."""
    return np.minimum(ids, 255).astype(np.uint8)


def grid(image: np.ndarray, n: int = 4) -> np.ndarray:
    h, w = image.shape[:2]
    rows = np.arange(h) * n // h
    cols = np.arange(w) * n // w
    return fold_ids(rows[:, None] * n + cols[None, :])


def fh_min_size(min_size: int, size: int, reference: int) -> int:
    return max(1, round(min_size * min(1.0, (size / reference) ** 2)))


def fh(image: np.ndarray, scale=1000, sigma=0.8, min_size=1000, reference=224) -> np.ndarray:
    size = min(image.shape[:2])
    segments = felzenszwalb(
        image, scale=scale, sigma=sigma, min_size=fh_min_size(min_size, size, reference)
    )
    return fold_ids(segments)


def slic_masks(image: np.ndarray, n_segments=16, compactness=10.0, sigma=1.0) -> np.ndarray:
    segments = slic(
        image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0
    )
    return fold_ids(segments)


def gt_masks(instances: np.ndarray, height: int, width: int) -> np.ndarray:
    """instances [N, H, W] bool (later instances drawn on top) -> ids [H, W]."""
    ids = np.zeros((height, width), np.int64)
    for k, m in enumerate(instances):
        ids[m] = k + 1
    return fold_ids(ids)


def generate_one(method: str, params: dict, dataset, index: int) -> np.ndarray:
    """The mask (or boxes) of image ``index`` of ``dataset``."""
    if method == "gt":
        masks, _ = dataset.instances(index)
        r = dataset.records[index]
        return gt_masks(np.asarray(masks, bool), r.height, r.width)
    if method == "global":
        r = dataset.records[index]
        return np.zeros((r.height, r.width), np.uint8)
    image = dataset.load_image(index)
    if method == "grid":
        return grid(image, **params)
    if method == "fh":
        return fh(image, **params)
    if method == "slic":
        return slic_masks(image, **params)
    if method == "ss":
        from detlab.pipelines.masks.selective_search import soco_proposals

        return soco_proposals(image, **params)
    raise ValueError(f"unknown mask method {method!r}; choose one of {sorted(KIND)}")

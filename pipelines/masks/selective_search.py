"""Selective search (Uijlings et al.) on scikit-image's Felzenszwalb segments, as SoCo
computed its proposals, with SoCo's box filter and fall-backs.

Hierarchical grouping: start from FH regions (SoCo: scale=300, sigma=0.9, min_size=100),
repeatedly merge the most similar pair of adjacent regions, similarity = colour
(25-bin histograms per channel) + texture (8 gradient orientations x 10 bins per channel)
+ size + fill; every region ever formed yields a box.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb


def fh_min_size(min_size: int, size: int, reference: int) -> int:
    """Felzenszwalb's ``min_size`` (pixels) given for ``reference`` px images, scaled by
    area to an image whose short side is ``size`` (never above the given value)."""
    return max(1, round(min_size * min(1.0, (size / reference) ** 2)))


def _hist(values: np.ndarray, bins: int, lo: float, hi: float) -> np.ndarray:
    h = np.histogram(values, bins=bins, range=(lo, hi))[0].astype(np.float64)
    return h / max(h.sum(), 1.0)


def region_features(image: np.ndarray, labels: np.ndarray, n: int):
    """Per region: colour and texture histograms, size, bbox."""
    gy, gx = np.gradient(image.astype(np.float64), axis=(0, 1))
    angle = (np.arctan2(gy, gx) + np.pi) / (2 * np.pi)  # [H, W, 3] in [0, 1]
    mag = np.hypot(gx, gy)
    colour, texture, size, boxes = [], [], [], []
    for r in range(n):
        ys, xs = np.nonzero(labels == r)
        pix, ang, mg = image[ys, xs], angle[ys, xs], mag[ys, xs]
        colour.append(np.concatenate([_hist(pix[:, c], 25, 0, 255) for c in range(3)]) / 3)
        tex = []
        for c in range(3):  # orientation bin x magnitude bin
            o = np.minimum((ang[:, c] * 8).astype(int), 7)
            m = np.minimum((mg[:, c] / (mg[:, c].max() + 1e-9) * 10).astype(int), 9)
            tex.append(_hist(o * 10 + m, 80, 0, 80))
        texture.append(np.concatenate(tex) / 3)
        size.append(len(ys))
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(colour), np.array(texture), np.array(size, float), np.array(boxes, float)


def adjacency(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])):
        diff = a != b
        for x, y in zip(a[diff].tolist(), b[diff].tolist(), strict=True):
            pairs.add((min(x, y), max(x, y)))
    return pairs


def selective_search(image: np.ndarray, scale=300, sigma=0.9, min_size=100, reference=224):
    """All hierarchical-grouping boxes [K, 4] xyxy (float32), initial regions first."""
    size_px = min(image.shape[:2])
    labels = felzenszwalb(image, scale=scale, sigma=sigma,
                          min_size=fh_min_size(min_size, size_px, reference))  # fmt: skip
    n = int(labels.max()) + 1
    colour, texture, size, boxes = region_features(image, labels, n)
    colour, texture, size, boxes = list(colour), list(texture), list(size), list(boxes)
    image_size = float(labels.size)

    def sim(i: int, j: int) -> float:
        bb = [min(boxes[i][0], boxes[j][0]), min(boxes[i][1], boxes[j][1]),
              max(boxes[i][2], boxes[j][2]), max(boxes[i][3], boxes[j][3])]  # fmt: skip
        bb_size = (bb[2] - bb[0]) * (bb[3] - bb[1])
        return (
            np.minimum(colour[i], colour[j]).sum()
            + np.minimum(texture[i], texture[j]).sum()
            + 1 - (size[i] + size[j]) / image_size
            + 1 - (bb_size - size[i] - size[j]) / image_size
        )  # fmt: skip

    sims = {pair: sim(*pair) for pair in adjacency(labels)}
    while sims:
        i, j = max(sims, key=sims.get)
        t = len(size)
        s = size[i] + size[j]
        colour.append((colour[i] * size[i] + colour[j] * size[j]) / s)
        texture.append((texture[i] * size[i] + texture[j] * size[j]) / s)
        size.append(s)
        boxes.append(np.array([min(boxes[i][0], boxes[j][0]), min(boxes[i][1], boxes[j][1]),
                               max(boxes[i][2], boxes[j][2]), max(boxes[i][3], boxes[j][3])]))  # fmt: skip
        neighbours = {a if b in (i, j) else b for a, b in sims if i in (a, b) or j in (a, b)}
        sims = {p: v for p, v in sims.items() if i not in p and j not in p}
        for k in neighbours - {i, j}:
            sims[(k, t)] = sim(k, t)
    return np.array(boxes, np.float32).reshape(-1, 4)


def soco_filter(boxes: np.ndarray, height: int, width: int, min_box: float) -> np.ndarray:
    """SoCo: w, h >= min_box; 1/3 <= w/h <= 3; 0.3 <= sqrt(wh / WH) <= 0.8; if nothing is
    left: the ratio filter alone, then no filter, then the whole image."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ratio_ok = (w >= 1) & (h >= 1) & (w / np.maximum(h, 1) >= 1 / 3) & (w / np.maximum(h, 1) <= 3)
    rel = np.sqrt(w * h / (height * width))
    full = ratio_ok & (w >= min_box) & (h >= min_box) & (rel >= 0.3) & (rel <= 0.8)
    for keep in (full, ratio_ok, np.ones(len(boxes), bool)):
        if keep.any():
            return boxes[keep]
    return np.array([[0, 0, width, height]], np.float32)


def soco_proposals(image, scale=300, sigma=0.9, min_size=100, reference=224, min_box=32,
                   max_boxes=100) -> np.ndarray:  # fmt: skip
    """Filtered, de-duplicated proposals [K, 4] float32 xyxy; ``min_box`` scales with the
    image below ``reference`` px as the FH minimum size does."""
    h, w = image.shape[:2]
    boxes = selective_search(image, scale, sigma, min_size, reference)
    boxes = np.unique(boxes, axis=0)  # sorted: deterministic
    min_side = min_box * min(1.0, min(h, w) / reference)
    return soco_filter(boxes, h, w, min_side)[:max_boxes].astype(np.float32)

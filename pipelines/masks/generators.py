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

Controlled mask sets, for studies that vary one factor at a time (``mask_count``):
- ``gt_warp``: the ground truth with its boundaries moved by a smooth random displacement
  field of ``amplitude`` px (a quality ladder: the regions stay, their overlap with the
  objects falls as the amplitude grows).
- ``gt_split``: each ground-truth region (background included) cut into ``parts`` pieces
  of about equal area (a count ladder: every piece lies inside one object, purity 1).
- ``gt_boxes`` / ``random_boxes``: SoCo proposals from the ground truth, or random boxes
  passing SoCo's size filter (the proposal-quality ablation).
- ``object_box``: one box, tight around the pixels brighter than ``threshold``: the
  ground-truth box of a dataset of single objects on a dark plain background
  (Fashion-MNIST, which has no annotations to read it from).

A mask set in ``params.yaml`` (``masks.methods.<name>``) runs the generator of its own name,
or the one its ``generator`` key names (``gt_warp8: {generator: gt_warp, amplitude: 8}``).
Randomised generators draw from (``seed``, image index): deterministic, any shard order.
Ids beyond 255 (many FH segments) are folded into 255, so masks fit in uint8.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb, slic

from detlab.pipelines.masks.selective_search import fh_min_size, soco_proposals

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
    "gt_warp": {"amplitude": 8.0, "cells": 4, "seed": 0},
    "gt_split": {"parts": 2},
    "gt_boxes": {},
    "random_boxes": {"n": 8, "min_scale": 0.3, "max_scale": 0.8, "max_ratio": 3.0, "seed": 0},
    "object_box": {"threshold": 16},
}
KIND = {"grid": "mask", "fh": "mask", "slic": "mask", "gt": "mask", "ss": "boxes",
        "global": "mask", "gt_warp": "mask", "gt_split": "mask", "gt_boxes": "boxes",
        "random_boxes": "boxes", "object_box": "boxes"}  # fmt: skip
NEEDS_INSTANCES = ("gt", "gt_warp", "gt_split", "gt_boxes")


def split_params(name: str, params: dict | None) -> tuple[str, dict]:
    """A mask set's (generator, its params): ``generator`` names it, else the set's name."""
    params = dict(params or {})
    return str(params.pop("generator", name)), params


def fold_ids(ids: np.ndarray) -> np.ndarray:
    """int ids -> uint8, ids >= 255 merged into 255."""
    return np.minimum(ids, 255).astype(np.uint8)


def grid(image: np.ndarray, n: int = 4) -> np.ndarray:
    h, w = image.shape[:2]
    rows = np.arange(h) * n // h
    cols = np.arange(w) * n // w
    return fold_ids(rows[:, None] * n + cols[None, :])


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


def image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def gt_warp(ids: np.ndarray, rng: np.random.Generator, amplitude=8.0, cells=4) -> np.ndarray:
    """ids [H, W] -> ids read at (y + dy, x + dx): a displacement field drawn uniformly in
    [-amplitude, amplitude] px on a (cells+1)^2 lattice and interpolated bilinearly, so
    boundaries move smoothly; amplitude 0 returns ``ids``."""
    from skimage.transform import resize

    h, w = ids.shape
    if amplitude <= 0:
        return ids.copy()
    lattice = rng.uniform(-amplitude, amplitude, size=(2, cells + 1, cells + 1))
    dy, dx = (resize(f, (h, w), order=1, mode="edge", anti_aliasing=False) for f in lattice)
    yy = np.clip(np.rint(np.arange(h)[:, None] + dy), 0, h - 1).astype(np.int64)
    xx = np.clip(np.rint(np.arange(w)[None, :] + dx), 0, w - 1).astype(np.int64)
    return ids[yy, xx]


def gt_split(ids: np.ndarray, parts=2) -> np.ndarray:
    """Cut every region of ``ids`` into ``parts`` (a power of two) pieces of about equal
    area: each cut halves a piece at the median along its longer extent. Pieces are
    numbered region by region (parts ids each), so every piece lies inside one region."""
    levels = int(np.log2(parts))
    if parts < 1 or 2**levels != parts:
        raise ValueError(f"gt_split: parts must be a power of two, got {parts}")
    out = np.zeros(ids.shape, np.int64)
    for k, value in enumerate(np.unique(ids)):
        ys, xs = np.nonzero(ids == value)
        piece = np.zeros(len(ys), np.int64)
        for _ in range(levels):
            new = piece * 2
            for p in np.unique(piece):
                sel = piece == p
                y, x = ys[sel], xs[sel]
                coord = y if np.ptp(y) >= np.ptp(x) else x
                upper = coord > np.median(coord)
                if not upper.any():  # a piece one pixel wide: split by index instead
                    upper = np.arange(len(coord)) >= len(coord) // 2
                new[sel] += upper
            piece = new
        out[ys, xs] = k * parts + piece
    return fold_ids(out)


def random_boxes(height: int, width: int, rng: np.random.Generator, n=8, min_scale=0.3,
                 max_scale=0.8, max_ratio=3.0) -> np.ndarray:  # fmt: skip
    """``n`` boxes [n, 4] float32 xyxy placed uniformly, with SoCo's filter's size
    (sqrt(wh) / sqrt(WH) in [min_scale, max_scale]) and aspect ratio (<= max_ratio)."""
    scale = rng.uniform(min_scale, max_scale, n) * np.sqrt(height * width)
    ratio = np.exp(rng.uniform(-np.log(max_ratio), np.log(max_ratio), n))  # w / h
    bw = np.minimum(scale * np.sqrt(ratio), width)
    bh = np.minimum(scale / np.sqrt(ratio), height)
    x0, y0 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], 1).astype(np.float32)


def object_box(image: np.ndarray, threshold: int = 16) -> np.ndarray:
    """image [H, W, C] uint8 -> [1, 4] float32 xyxy: the box of the pixels above
    ``threshold`` in any channel (pixel edges, so one pixel is a 1x1 box); an image with no
    such pixel is its own box."""
    h, w = image.shape[:2]
    ys, xs = np.nonzero(image.reshape(h, w, -1).max(-1) > threshold)
    if not len(xs):
        return np.array([[0, 0, w, h]], np.float32)
    return np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)


def generate_one(method: str, params: dict, dataset, index: int) -> np.ndarray:
    """The mask (or boxes) of image ``index`` of ``dataset``; ``method``: the generator."""
    r = dataset.records[index]
    if method in ("gt", "gt_warp", "gt_split"):
        masks, _ = dataset.instances(index)
        ids = gt_masks(np.asarray(masks, bool), r.height, r.width)
        if method == "gt_warp":
            p = dict(params)
            return gt_warp(ids, image_rng(p.pop("seed"), index), **p)
        return gt_split(ids, **params) if method == "gt_split" else ids
    if method == "gt_boxes":
        return np.asarray(dataset.boxes(index)[0], np.float32).reshape(-1, 4)
    if method == "random_boxes":
        p = dict(params)
        return random_boxes(r.height, r.width, image_rng(p.pop("seed"), index), **p)
    if method == "global":
        return np.zeros((r.height, r.width), np.uint8)
    image = dataset.load_image(index)
    if method == "grid":
        return grid(image, **params)
    if method == "fh":
        return fh(image, **params)
    if method == "slic":
        return slic_masks(image, **params)
    if method == "ss":
        return soco_proposals(image, **params)
    if method == "object_box":
        return object_box(image, **params)
    raise ValueError(f"unknown mask method {method!r}; choose one of {sorted(KIND)}")

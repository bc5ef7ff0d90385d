"""COCO instances: ``<root>/annotations/instances_<split>.json`` + images under
``<root>/images/<split>/`` (the shapes layout) or ``<root>/<split>/`` (COCO's own layout).

Extras understood when present (written by shapes): ``images[i]["label"]`` (image-level
class index), a top-level ``"classes"`` list, semantic PNGs at
``<root>/semantic/<split>/<stem>.png``. Crowd annotations (``iscrowd=1``) are not instances;
in a semantic map derived from instances they are marked 255 (ignore).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from detlab.methods.datasets.records import (
    DatasetError,
    Entry,
    ImageRecord,
    Source,
    boxes_from_masks,
    read_meta,
)


def annotation_path(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def available_splits(root: Path) -> list[str]:
    files = (root / "annotations").glob("instances_*.json")
    return sorted(p.name[len("instances_") : -len(".json")] for p in files)


def _rle(segmentation, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> one RLE."""
    if isinstance(segmentation, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    counts = segmentation["counts"]
    return {
        "size": segmentation["size"],
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


class CocoAnnotations:
    """Annotations of each image id: (category_id, segmentation, bbox, iscrowd, area)."""

    def __init__(self, by_image: dict[int, list[tuple]]):
        self.by_image = by_image

    def _objects(self, record: ImageRecord, crowd: bool = False) -> list[tuple]:
        return [a for a in self.by_image.get(record.image_id, []) if bool(a[3]) == crowd]

    def _decode(self, objects, record: ImageRecord) -> np.ndarray:
        if not objects:
            return np.zeros((0, record.height, record.width), bool)
        rles = [_rle(a[1], record.height, record.width) for a in objects]
        with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy kwarg
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = mask_utils.decode(rles)  # [H, W, N] uint8
        return np.ascontiguousarray(decoded.transpose(2, 0, 1).astype(bool))

    def instances(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        objects = self._objects(record)
        cats = np.array([a[0] for a in objects], np.int64)
        return self._decode(objects, record), cats

    def boxes(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        objects = self._objects(record)
        cats = np.array([a[0] for a in objects], np.int64)
        if all(a[2] is not None for a in objects):
            xywh = np.array([a[2] for a in objects], np.float32).reshape(-1, 4)
            return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), cats
        return boxes_from_masks(self._decode(objects, record)), cats

    def semantic(self, index: int, record: ImageRecord) -> np.ndarray:
        """Category ids painted largest first (small objects stay visible); crowd = 255."""
        out = np.zeros((record.height, record.width), np.uint8)
        objects = sorted(self._objects(record), key=lambda a: -a[4])
        for obj, mask in zip(objects, self._decode(objects, record), strict=True):
            out[mask] = obj[0]
        crowd = self._objects(record, crowd=True)
        if crowd:
            out[self._decode(crowd, record).any(0)] = 255
        return out


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid COCO JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO instances file (no 'images' list)")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key, []), list):
            raise DatasetError(f"{path}: '{key}' must be a list")
    return data


def scan(root: Path, split: str) -> Source:
    ann_path = annotation_path(root, split)
    if not ann_path.is_file():
        raise DatasetError(
            f"{ann_path}: no COCO annotations for split {split!r} "
            f"(available splits: {available_splits(root)})"
        )
    data = _load(ann_path)
    image_dir = root / "images" / split
    if not image_dir.is_dir():
        image_dir = root / split
    if not image_dir.is_dir():
        raise DatasetError(
            f"{root}: no image folder for split {split!r} "
            f"(looked for {root / 'images' / split} and {root / split})"
        )
    problems: list[str] = []
    meta = read_meta(root)
    categories = {}
    for c in data.get("categories", []):
        try:
            categories[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{ann_path}: category entry {c!r} needs an int 'id' and a 'name'")
    classes = [str(c) for c in (data.get("classes") or meta.get("classes") or [])]
    semantic_dir = root / "semantic" / split

    entries: list[Entry] = []
    sizes: dict[int, tuple[int, int] | None] = {}
    for im in sorted(data["images"], key=lambda im: im.get("id", -1)):
        try:
            image_id, file_name = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{ann_path}: image entry {im!r} needs an int 'id' and a 'file_name'")
            continue
        if image_id in sizes:
            problems.append(f"{ann_path}: image id {image_id} appears twice")
            continue
        size = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
        sizes[image_id] = size
        label = im.get("label")
        if label is not None:
            label = int(label)
            if classes and not 0 <= label < len(classes):
                problems.append(
                    f"{ann_path}: image {image_id} ({file_name}) has label {label}, "
                    f"outside the {len(classes)} classes"
                )
        semantic = semantic_dir / f"{Path(file_name).stem}.png" if semantic_dir.is_dir() else None
        entries.append(
            Entry(image_id, image_dir / file_name, size, label, semantic, listed_in=ann_path)
        )
    if not classes and any(e.label is not None for e in entries):
        classes = [str(i) for i in range(max(e.label for e in entries if e.label is not None) + 1)]

    by_image: dict[int, list[tuple]] = {}
    for a in data.get("annotations", []):
        ann_id, image_id, cat = a.get("id"), a.get("image_id"), a.get("category_id")
        if image_id not in sizes:
            problems.append(
                f"{ann_path}: annotation {ann_id} points at image_id {image_id}, "
                f"which is not in 'images'"
            )
            continue
        if cat not in categories:
            problems.append(f"{ann_path}: annotation {ann_id} has unknown category_id {cat}")
            continue
        seg = a.get("segmentation")
        if not isinstance(seg, list | dict):
            problems.append(f"{ann_path}: annotation {ann_id} has no segmentation")
            continue
        size = sizes[image_id]
        if isinstance(seg, dict) and size is not None and list(seg.get("size", [])) != list(size):
            problems.append(
                f"{ann_path}: annotation {ann_id} mask size {seg.get('size')} differs from "
                f"its image's size {list(size)} (image_id {image_id})"
            )
            continue
        bbox = a.get("bbox")
        area = float(a.get("area", 0.0))
        by_image.setdefault(image_id, []).append(
            (int(cat), seg, bbox, int(a.get("iscrowd", 0)), area)
        )

    if semantic_dir.is_dir():
        num_seg = int(meta.get("num_seg_classes", max(categories, default=0) + 1))
    else:
        num_seg = max(categories, default=0) + 1 if categories else 0
    return Source(
        format="coco",
        root=root,
        split=split,
        entries=entries,
        location=ann_path,
        classes=classes,
        categories=categories,
        num_seg_classes=num_seg,
        annotation_files=[ann_path],
        annotations=CocoAnnotations(by_image) if categories else None,
        problems=problems,
    )

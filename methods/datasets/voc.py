"""Pascal VOC segmentation: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette
PNG of class ids, 255 = ignore/boundary), ``SegmentationObject/<id>.png`` (palette PNG of
object ids, optional), ``ImageSets/Segmentation/<split>.txt``. ``root`` may be the
``VOC20xx`` folder or a ``VOCdevkit`` folder holding exactly one of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from detlab.methods.datasets.records import (
    DatasetError,
    Entry,
    ImageRecord,
    Source,
    boxes_from_masks,
)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE = 255


def voc_root(root: Path) -> Path | None:
    """The folder holding ``ImageSets/Segmentation`` (root itself or its one VOC child)."""
    if (root / "ImageSets" / "Segmentation").is_dir():
        return root
    children = [d for d in sorted(root.iterdir()) if (d / "ImageSets" / "Segmentation").is_dir()]
    if len(children) > 1:
        raise DatasetError(
            f"{root}: holds several VOC folders {[d.name for d in children]}; "
            f"set the dataset root to one of them"
        )
    return children[0] if children else None


def read_label_png(path: Path) -> np.ndarray:
    """[H, W] uint8 of a palette / greyscale PNG (the indices, not the colours)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DatasetError(
                    f"{path}: expected a palette or greyscale PNG, got mode {im.mode}"
                )
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot decode mask ({e})") from e


class VocAnnotations:
    """Instances from SegmentationObject (object ids) + SegmentationClass (their class)."""

    def __init__(self, object_paths: dict[int, Path]):
        self.object_paths = object_paths  # image_id -> SegmentationObject PNG

    def instances(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        objects = read_label_png(self.object_paths[record.image_id])  # [H, W]
        classes = read_label_png(record.semantic_path)  # [H, W]
        ids = np.unique(objects)
        ids = ids[(ids != 0) & (ids != IGNORE)]  # [N]
        masks = objects[None] == ids[:, None, None]  # [N, H, W]
        # class of each object: majority of its pixels' class ids (ignoring 0 and 255)
        inside = masks.any(0)  # [H, W]
        pairs = np.searchsorted(ids, objects[inside]) * 256 + classes[inside]
        counts = np.bincount(pairs, minlength=len(ids) * 256).reshape(len(ids), 256)
        counts[:, [0, IGNORE]] = 0
        return masks, counts.argmax(1).astype(np.int64)

    def boxes(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        masks, cats = self.instances(index, record)
        return boxes_from_masks(masks), cats


def available_splits(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "ImageSets" / "Segmentation").glob("*.txt"))


def scan(root: Path, split: str) -> Source:
    base = voc_root(root)
    if base is None:
        raise DatasetError(f"{root}: not a VOC folder (no ImageSets/Segmentation)")
    list_path = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_path.is_file():
        raise DatasetError(
            f"{list_path}: no VOC split {split!r} (available: {available_splits(base)})"
        )
    names = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
    has_objects = (base / "SegmentationObject").is_dir()
    entries, object_paths = [], {}
    for image_id, name in enumerate(names):
        image = base / "JPEGImages" / f"{name}.jpg"
        if not image.exists() and (base / "JPEGImages" / f"{name}.png").exists():
            image = base / "JPEGImages" / f"{name}.png"
        extra: tuple[Path, ...] = ()
        if has_objects:
            object_paths[image_id] = base / "SegmentationObject" / f"{name}.png"
            extra = (object_paths[image_id],)
        entries.append(
            Entry(
                image_id,
                image,
                None,
                None,
                base / "SegmentationClass" / f"{name}.png",
                extra,
                listed_in=list_path,
            )
        )
    return Source(
        format="voc",
        root=base,
        split=split,
        entries=entries,
        location=list_path,
        categories={i: n for i, n in enumerate(VOC_CLASSES) if i > 0},
        num_seg_classes=len(VOC_CLASSES),
        annotation_files=[list_path],
        annotations=VocAnnotations(object_paths) if has_objects else None,
    )

"""Dataset readers: one format-independent view (ImageDataset) of COCO instances, ImageFolder
and Pascal VOC segmentation splits, checked up front and loaded lazily per image.

    ds = open_dataset("data/shapes", "train")          # format auto-detected
    img = ds.load_image(0)                             # [H, W, 3] uint8 RGB
    masks, cats = ds.instances(0)                      # [N, H, W] bool, [N] category ids
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from detlab.methods.datasets import coco, imagefolder, voc
from detlab.methods.datasets.checks import build_records
from detlab.methods.datasets.records import DatasetError, ImageRecord, Source

__all__ = [
    "FORMATS",
    "DatasetError",
    "ImageDataset",
    "ImageRecord",
    "detect_format",
    "open_dataset",
]

SCANNERS = {"coco": coco.scan, "imagefolder": imagefolder.scan, "voc": voc.scan}
FORMATS = ("auto", *SCANNERS)


def detect_format(root, split: str) -> str:
    """coco if ``annotations/instances_*.json`` exist, voc if ``ImageSets/Segmentation``
    exists (in root or one child), imagefolder if a split folder exists."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    if coco.annotation_path(root, split).is_file() or coco.available_splits(root):
        return "coco"
    if voc.voc_root(root) is not None:
        return "voc"
    if imagefolder.split_dir(root, split) is not None or imagefolder.looks_like(root):
        return "imagefolder"
    raise DatasetError(
        f"{root}: cannot tell the dataset format: expected annotations/instances_{split}.json "
        f"(coco), ImageSets/Segmentation/ (voc) or {split}/<class>/<image> (imagefolder)"
    )


class ImageDataset:
    """One split of a dataset, whatever its format. Picklable; nothing is held open."""

    def __init__(self, source: Source, records: list[ImageRecord]):
        self.root: Path = source.root
        self.split: str = source.split
        self.format: str = source.format
        self.records: list[ImageRecord] = records
        self.classes: list[str] = list(source.classes)
        self.categories: dict[int, str] = dict(source.categories)
        self.num_seg_classes: int = int(source.num_seg_classes)
        self._annotations = source.annotations
        # the fingerprint describes the whole split, also when max_images cut the records
        self._hashed = [self._rel(p) for p in source.annotation_files]
        self._sized = [self._rel(e.path) for e in source.entries]
        for e in source.entries:
            for mask in (e.semantic_path, *e.extra_masks):
                if mask is not None:
                    self._hashed.append(self._rel(mask))

    def _rel(self, path: Path) -> str:
        text, prefix = str(path), str(self.root) + os.sep
        if text.startswith(prefix):  # the usual case, and cheap for millions of files
            return text[len(prefix) :].replace(os.sep, "/")
        return Path(os.path.relpath(path, self.root)).as_posix()

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.format}, root={self.root}, split={self.split!r}, "
            f"images={len(self)}, classes={len(self.classes)})"
        )

    def __len__(self) -> int:
        return len(self.records)

    @property
    def has_labels(self) -> bool:
        return bool(self.records) and all(r.label is not None for r in self.records)

    @property
    def has_instances(self) -> bool:
        return self._annotations is not None

    @property
    def has_semantic(self) -> bool:
        if self.records and all(r.semantic_path is not None for r in self.records):
            return True
        return hasattr(self._annotations, "semantic")

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of: format, annotation files' contents (JSON / split lists / mask PNGs), and
        the (relative path, size) of every image of the split. Paths are relative to root,
        so copies of a dataset on different machines share a fingerprint."""
        h = hashlib.sha256(f"detlab-dataset-v1\0{self.format}\0{self.split}\0".encode())
        for rel in self._hashed:
            path = self.root / rel
            try:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                raise DatasetError(f"{path}: cannot read annotation file ({e})") from e
            h.update(f"a\0{rel}\0{content}\n".encode())
        for rel in self._sized:
            path = self.root / rel
            try:
                size = path.stat().st_size
            except OSError as e:
                raise DatasetError(f"{path}: cannot stat image ({e})") from e
            h.update(f"i\0{rel}\0{size}\n".encode())
        return h.hexdigest()

    def load_image(self, i: int) -> np.ndarray:
        """[H, W, 3] uint8 RGB."""
        record = self.records[i]
        try:
            with Image.open(record.path) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise DatasetError(f"{record.path}: cannot load image ({type(e).__name__}: {e})") from e
        if image.shape[:2] != (record.height, record.width):
            raise DatasetError(
                f"{record.path}: image is {image.shape[1]}x{image.shape[0]} (WxH), expected "
                f"{record.width}x{record.height}"
            )
        return image

    def load_image_chw(self, i: int):
        """[3, H, W] uint8 tensor, decoded by torchvision (libjpeg-turbo / libpng: the same
        pixels as ``load_image``, ~1.4x faster on JPEG, no HWC -> CHW copy): the
        pretraining loader's decode. Other formats go through ``load_image``."""
        import torch
        from torchvision.io import ImageReadMode, decode_image

        record = self.records[i]
        if Path(record.path).suffix.lower() not in (".jpg", ".jpeg", ".png"):
            return torch.from_numpy(self.load_image(i)).permute(2, 0, 1)
        try:
            image = decode_image(str(record.path), mode=ImageReadMode.RGB)
        except Exception as e:
            raise DatasetError(f"{record.path}: cannot load image ({type(e).__name__}: {e})") from e
        if tuple(image.shape[1:]) != (record.height, record.width):
            raise DatasetError(
                f"{record.path}: image is {image.shape[2]}x{image.shape[1]} (WxH), expected "
                f"{record.width}x{record.height}"
            )
        return image

    def _need_instances(self) -> None:
        if self._annotations is None:
            raise DatasetError(
                f"{self.root} ({self.format}, {self.split}): no instance annotations"
            )

    def instances(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """masks [N, H, W] bool, category ids [N] int64 (crowd regions excluded)."""
        self._need_instances()
        return self._annotations.instances(i, self.records[i])

    def boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """xyxy float32 [N, 4] in pixels, category ids [N] int64."""
        self._need_instances()
        return self._annotations.boxes(i, self.records[i])

    def semantic(self, i: int) -> np.ndarray:
        """[H, W] uint8 class ids, 0 background, 255 ignore."""
        record = self.records[i]
        if record.semantic_path is not None:
            out = voc.read_label_png(record.semantic_path)
            if out.shape != (record.height, record.width):
                raise DatasetError(
                    f"{record.semantic_path}: mask is {out.shape[1]}x{out.shape[0]} (WxH), "
                    f"its image {record.path} is {record.width}x{record.height}"
                )
            return out
        if hasattr(self._annotations, "semantic"):
            return self._annotations.semantic(i, record)
        raise DatasetError(f"{self.root} ({self.format}, {self.split}): no semantic annotations")


def open_dataset(
    root,
    split: str,
    format: str = "auto",
    max_images: int | None = None,
    validate: bool = True,
    *,
    full_decode: bool = False,
) -> ImageDataset:
    """Open ``split`` of the dataset at ``root``.

    format: auto | coco | imagefolder | voc. ``validate`` checks, before returning, that
    every image (of the first ``max_images``) exists and its header decodes, that sizes
    agree with the annotations and that semantic / object PNGs exist with the image's size;
    ``full_decode`` also decodes every image fully (catches truncated files; slower).
    Raises DatasetError naming the offending path(s).
    """
    root = Path(root)
    if format not in FORMATS:
        raise DatasetError(f"{root}: unknown dataset format {format!r}; use one of {FORMATS}")
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist or is not a folder")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise DatasetError(f"{root}: max_images must be a positive int or None, got {max_images!r}")
    fmt = detect_format(root, split) if format == "auto" else format
    source = SCANNERS[fmt](root, split)
    if not source.entries:
        raise DatasetError(f"{source.location}: split {split!r} of {root} has no images")
    entries = source.entries if max_images is None else source.entries[:max_images]
    records = build_records(source, entries, check=validate, full_decode=full_decode)
    return ImageDataset(source, records)

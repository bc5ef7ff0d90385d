"""Shared types of the dataset readers: errors, records, and what a format scanner returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
)


class DatasetError(ValueError):
    """A dataset is unusable; the message names the offending path and what is wrong."""


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    height: int
    width: int
    label: int | None
    semantic_path: Path | None


@dataclass
class Entry:
    """One image as listed by a format, before its files are checked."""

    image_id: int
    path: Path
    size: tuple[int, int] | None  # (height, width) stated by annotations; None: read header
    label: int | None
    semantic_path: Path | None = None
    extra_masks: tuple[Path, ...] = ()  # more per-pixel annotations of the image's size
    listed_in: Path | None = None  # annotation file naming the image (for messages)


class Annotations(Protocol):
    """Per-image instance annotations of a format (picklable, loaded lazily per image)."""

    def instances(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]: ...

    def boxes(self, index: int, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Source:
    """What a format scanner found for one split."""

    format: str
    root: Path
    split: str
    entries: list[Entry]
    location: Path  # the split's folder or annotation file (for messages)
    classes: list[str] = field(default_factory=list)
    categories: dict[int, str] = field(default_factory=dict)
    num_seg_classes: int = 0
    annotation_files: list[Path] = field(default_factory=list)  # content-hashed
    annotations: Annotations | None = None
    problems: list[str] = field(default_factory=list)


def read_meta(root: Path) -> dict:
    """``<root>/meta.json`` (written by generators such as shapes), or {}."""
    path = root / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return meta


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """masks: [N, H, W] bool -> [N, 4] float32 xyxy (exclusive right/bottom, pixels)."""
    n = masks.shape[0]
    out = np.zeros((n, 4), np.float32)
    if n == 0:
        return out
    rows, cols = masks.any(2), masks.any(1)  # [N, H], [N, W]
    has = rows.any(1)
    h, w = masks.shape[1:]
    y0 = rows.argmax(1)
    y1 = h - rows[:, ::-1].argmax(1)
    x0 = cols.argmax(1)
    x1 = w - cols[:, ::-1].argmax(1)
    out[:] = np.stack([x0, y0, x1, y1], 1)
    out[~has] = 0
    return out

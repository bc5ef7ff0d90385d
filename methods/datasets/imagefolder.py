"""ImageFolder (ImageNet layout): ``<root>/<split>/<class>/<image>``; the shapes layout
``<root>/images/<split>/<class>/<image>`` is accepted too.

Classes are the sorted class-folder names, unless ``<root>/meta.json`` lists ``classes``
(shapes does), in which case that list fixes the indices. Semantic PNGs at
``<root>/semantic/<split>/<stem>.png`` are attached when that folder exists.
"""

from __future__ import annotations

import os
from pathlib import Path

from detlab.methods.datasets.records import (
    IMAGE_EXTENSIONS,
    DatasetError,
    Entry,
    Source,
    read_meta,
)


def split_dir(root: Path, split: str) -> Path | None:
    for candidate in (root / "images" / split, root / split):
        if candidate.is_dir():
            return candidate
    return None


def available_splits(root: Path) -> list[str]:
    base = root / "images" if (root / "images").is_dir() else root
    return sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))


def looks_like(root: Path) -> bool:
    """Some ``<split>/<class>/`` folder exists (under root or root/images)."""
    base = root / "images" if (root / "images").is_dir() else root
    return any(d.is_dir() and any(c.is_dir() for c in d.iterdir()) for d in base.iterdir())


def _images_in(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        ]
    return sorted(names)


def scan(root: Path, split: str) -> Source:
    folder = split_dir(root, split)
    if folder is None:
        raise DatasetError(
            f"{root}: no folder for split {split!r} (looked for {root / 'images' / split} and "
            f"{root / split}; available: {available_splits(root)})"
        )
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        stray = _images_in(folder)
        hint = f" ({len(stray)} images lie directly in it)" if stray else ""
        raise DatasetError(
            f"{folder}: expected one sub-folder per class (<split>/<class>/<image>){hint}"
        )
    meta = read_meta(root)
    classes = [str(c) for c in meta.get("classes", [])] or [d.name for d in class_dirs]
    index = {name: i for i, name in enumerate(classes)}
    unknown = [d.name for d in class_dirs if d.name not in index]
    if unknown:
        raise DatasetError(
            f"{folder}: class folders {unknown} are not in the classes of {root / 'meta.json'}"
        )
    semantic_dir = root / "semantic" / split
    has_semantic = semantic_dir.is_dir()
    entries: list[Entry] = []
    for d in class_dirs:
        for name in _images_in(d):
            semantic = semantic_dir / f"{Path(name).stem}.png" if has_semantic else None
            entries.append(Entry(len(entries), d / name, None, index[d.name], semantic))
    num_seg = int(meta.get("num_seg_classes", 0)) if has_semantic else 0
    return Source(
        format="imagefolder",
        root=root,
        split=split,
        entries=entries,
        location=folder,
        classes=classes,
        num_seg_classes=num_seg,
    )

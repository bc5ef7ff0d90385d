"""Fashion-MNIST, offline: Debian's ``dataset-fashion-mnist`` IDX files -> an ImageFolder.

    python -m detlab.methods.datasets.fashion_mnist --out data/fashion_mnist [--size 32]

Reads ``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``
(60k train, 10k test; MIT licence; ``apt-get install dataset-fashion-mnist``) and writes
``<out>/{train,val}/<class>/<index>.png`` (grayscale, read as 3 identical channels; the 10k
test set is the ``val`` split) and ``meta.json`` with the ten class names, so every detlab
reader, check and evaluation takes it as ``data=fashion_mnist``. ``--size`` resizes
(bilinear) for backbones that want more than 28 px. Written to a temporary folder and
renamed into place: an interrupted export leaves nothing half-written at ``out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from detlab.methods.datasets.records import DatasetError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
           "sneaker", "bag", "ankle_boot"]  # fmt: skip
FILES = {"train": "train", "val": "t10k"}  # detlab split -> IDX file prefix
IDX_TYPES = {0x08: np.uint8}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x0000 <type> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            zero, kind, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or kind not in IDX_TYPES:
                raise DatasetError(f"{path}: not an IDX file of unsigned bytes")
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = np.frombuffer(f.read(), dtype=IDX_TYPES[kind])
    except (OSError, EOFError, struct.error) as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({exc})") from exc
    if data.size != int(np.prod(dims)):
        raise DatasetError(f"{path}: holds {data.size} values, its header says {dims}")
    return data.reshape(dims)


def idx_paths(src: Path, split: str) -> tuple[Path, Path]:
    prefix = FILES[split]
    images, labels = src / f"{prefix}-images-idx3-ubyte.gz", src / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise DatasetError(
                f"{path} not found: Fashion-MNIST comes from Debian's dataset-fashion-mnist "
                "package (apt-get install dataset-fashion-mnist) or --src <folder of the IDX "
                "files>"
            )
    return images, labels


def export(src: Path, out: Path, size: int = 28, max_per_split: int | None = None,
           progress: bool = True) -> Path:  # fmt: skip
    """Write the ImageFolder at ``out`` (replacing it); returns ``out``."""
    src, out = Path(src), Path(out)
    arrays = {}
    for split in FILES:  # everything checked before anything is written
        images, labels = (read_idx(p) for p in idx_paths(src, split))
        if images.ndim != 3 or labels.shape != images.shape[:1] or labels.max() >= len(CLASSES):
            raise DatasetError(f"{src}: {split} images {images.shape} and labels "
                               f"{labels.shape} do not pair up")  # fmt: skip
        arrays[split] = (images[:max_per_split], labels[:max_per_split])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        for split, (images, labels) in arrays.items():
            for name in CLASSES:
                (tmp / split / name).mkdir(parents=True)
            rows = zip(images, labels, strict=True)
            for i, (image, label) in enumerate(tqdm(rows, total=len(labels), disable=not progress,
                                                    desc=f"fashion_mnist {split}")):  # fmt: skip
                im = Image.fromarray(image, mode="L")
                if size != image.shape[0]:
                    im = im.resize((size, size), Image.BILINEAR)
                im.save(tmp / split / CLASSES[label] / f"{i:05d}.png")
        meta = {"generator": "detlab.fashion_mnist", "source": str(src), "size": size,
                "max_per_split": max_per_split, "classes": CLASSES}  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m detlab.methods.datasets.fashion_mnist",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--out", default="data/fashion_mnist")
    p.add_argument("--src", default=str(DEBIAN_DIR), help="folder of the four IDX .gz files")
    p.add_argument("--size", type=int, default=28, help="image side in pixels (bilinear)")
    p.add_argument("--max-per-split", type=int, default=None, help="first N of each split")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        out = export(Path(args.src), Path(args.out), args.size, args.max_per_split,
                     progress=not args.no_progress)  # fmt: skip
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"fashion_mnist -> {out} ({args.size} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mask stores: compact, sharded, atomically written, checked against their dataset.

Layout of a store folder:
    meta.json       kind, generator, params, dataset fingerprint, content fingerprint
    index.json      number of images, shard size, shard names
    shards/shard-00000.bin      PNG-encoded uint8 masks (kind mask) or float32 boxes
    shards/shard-00000.off.npy  byte offsets [n + 1]; written last: a shard exists iff it does
``meta.json`` is written after every shard: a store without it is incomplete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT = "detlab-masks-v1"


class MaskStoreError(ValueError):
    """A store that is incomplete, corrupt, or made for another dataset (names the path)."""


def encode(kind: str, value: np.ndarray) -> bytes:
    if kind == "boxes":
        return np.ascontiguousarray(value, dtype="<f4").reshape(-1, 4).tobytes()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(value, dtype=np.uint8), mode="L").save(
        buf, format="PNG", optimize=True
    )
    return buf.getvalue()


def decode(kind: str, blob: bytes) -> np.ndarray:
    if kind == "boxes":
        return np.frombuffer(blob, dtype="<f4").reshape(-1, 4).astype(np.float32)
    import torch  # here, not at the top: mask stages and their SLURM tasks never load it
    from torchvision.io import decode_png  # libpng: the same ids as PIL's, ~1.4x faster

    try:
        return decode_png(torch.frombuffer(bytearray(blob), dtype=torch.uint8))[0].numpy()
    except RuntimeError:  # not a PNG torchvision reads: PIL's error names what it is
        with Image.open(io.BytesIO(blob)) as im:
            return np.array(im, dtype=np.uint8)  # a writable copy: torch may write into it


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(folder: Path, shard: int, kind: str, values: list[np.ndarray]) -> None:
    """Data first, offsets last (both atomic): a visible offsets file means a whole shard."""
    blobs = [encode(kind, v) for v in values]
    offsets = np.cumsum([0, *map(len, blobs)]).astype("<i8")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"shard-{shard:05d}.bin", b"".join(blobs))
    buf = io.BytesIO()
    np.save(buf, offsets)
    atomic_write(folder / f"shard-{shard:05d}.off.npy", buf.getvalue())


def shard_done(folder: Path, shard: int) -> bool:
    return (folder / f"shard-{shard:05d}.off.npy").exists()


def content_fingerprint(folder: Path, num_shards: int) -> str:
    h = hashlib.sha256(FORMAT.encode())
    for k in range(num_shards):
        for suffix in (".bin", ".off.npy"):
            h.update(hashlib.sha256((folder / f"shard-{k:05d}{suffix}").read_bytes()).digest())
    return h.hexdigest()


def finalise(out: Path, meta: dict, num_images: int, shard_size: int) -> dict:
    num_shards = -(-num_images // shard_size)
    index = {"format": FORMAT, "num_images": num_images, "shard_size": shard_size,
             "shards": [f"shard-{k:05d}" for k in range(num_shards)]}  # fmt: skip
    atomic_write(out / "index.json", json.dumps(index, indent=1).encode())
    meta = {**meta, "format": FORMAT, "num_images": num_images,
            "fingerprint": content_fingerprint(out / "shards", num_shards)}  # fmt: skip
    atomic_write(out / "meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    return meta


def write_store(path, dataset, kind: str, make: Callable[[int], np.ndarray],
                generator: str = "custom", params: dict | None = None, shard_size: int = 64) -> Path:  # fmt: skip
    """A valid store from a per-index function (tests, custom mask sources)."""
    out = Path(path)
    n = len(dataset)
    for k in range(-(-n // shard_size)):
        idx = range(k * shard_size, min(n, (k + 1) * shard_size))
        write_shard(out / "shards", k, kind, [make(i) for i in idx])
    meta = {"kind": kind, "generator": generator, "params": params or {},
            "dataset_fingerprint": dataset.fingerprint, "split": dataset.split}  # fmt: skip
    finalise(out, meta, n, shard_size)
    return out


class MaskStore:
    """Read access to a store; fork-safe (files are opened per shard on first use, per
    process) and checked against ``dataset`` when given."""

    def __init__(self, path: Path, meta: dict, index: dict):
        self.path, self.meta, self.index = path, meta, index
        self.kind: str = meta["kind"]
        self.shard_size: int = index["shard_size"]
        self._cache: dict[int, tuple[int, bytes, np.ndarray]] = {}

    @classmethod
    def open(cls, path, dataset=None) -> MaskStore:
        path = Path(path)
        meta_file, index_file = path / "meta.json", path / "index.json"
        if not meta_file.exists() or not index_file.exists():
            raise MaskStoreError(
                f"{path}: not a complete mask store (no meta.json/index.json): run "
                f"`dvc repro masks@<method>` or `python -m detlab.pipelines.masks.run` again"
            )
        meta, index = json.loads(meta_file.read_text()), json.loads(index_file.read_text())
        if meta.get("format") != FORMAT:
            raise MaskStoreError(f"{path}: unknown store format {meta.get('format')!r}")
        if dataset is not None and dataset.fingerprint != meta["dataset_fingerprint"]:
            raise MaskStoreError(
                f"{path}: made for dataset {meta['dataset_fingerprint'][:12]} "
                f"({meta.get('split')}), but {dataset.root} ({dataset.split}) is "
                f"{dataset.fingerprint[:12]}: regenerate the masks for this dataset version"
            )
        return cls(path, meta, index)

    def __len__(self) -> int:
        return int(self.index["num_images"])

    def _blob(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: index {i} outside [0, {len(self)})")
        shard, j = divmod(i, self.shard_size)
        entry = self._cache.get(shard)
        if entry is None or entry[0] != os.getpid():
            name = self.path / "shards" / self.index["shards"][shard]
            try:
                data = Path(f"{name}.bin").read_bytes()
                offsets = np.load(f"{name}.off.npy")
            except OSError as exc:
                raise MaskStoreError(f"{name}: missing or unreadable shard ({exc})") from exc
            entry = (os.getpid(), data, offsets)
            self._cache = {shard: entry}  # one shard per process at a time: bounded memory
        _, data, offsets = entry
        return data[offsets[j] : offsets[j + 1]]

    def mask(self, i: int) -> np.ndarray:
        """[H, W] uint8 ids of image ``i``."""
        if self.kind != "mask":
            raise MaskStoreError(f"{self.path} holds {self.kind}, not masks")
        return decode("mask", self._blob(i))

    def boxes(self, i: int) -> np.ndarray:
        """[K, 4] float32 xyxy pixel boxes of image ``i``."""
        if self.kind != "boxes":
            raise MaskStoreError(f"{self.path} holds {self.kind}, not boxes")
        return decode("boxes", self._blob(i))

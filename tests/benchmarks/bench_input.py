"""Input pipeline throughput per CPU core: JPEG files on disk + the mask store -> the batch
on the training device, against the JPEG-decode floor measured in the same run.

    python tests/benchmarks/bench_input.py [--images 96] [--size 375x500] [--resolution 224]
                                           [--batch 32] [--gpu-rate 1190]

Writes ``--images`` JPEGs (quality 90, natural-ish content) as an ImageFolder, makes their
FH masks and SoCo proposals with the masks stage's code, then times on ONE thread:
- the decode floor: ``torchvision.io.decode_jpeg`` of each file's bytes;
- per input path (``aug.views``), the loader-worker side: the real ``PretrainDataset``
  (decoded-image cache off: every image decoded from disk) and its collate, for DetCon-B's
  views (two 224 px views + masks) and SoCo's (three views + boxes). ``cpu``: the workers
  make the views; ``device``: they decode and draw, the device makes the views;
- the device side's own cost when the device is this CPU core (``DeviceViews``).
Prints the cores one GPU needs at ``--gpu-rate`` img/s (bench_gpu.py's DetCon-B step rate
on one H200: 1,190 img/s). The last line reads
``input pipeline <X> img/s/core = <R> of the decode floor (<F> img/s/core)`` for the
device path (the default on CUDA), DetCon-B's views.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detlab.methods import data as data_module
from detlab.methods.config import AugConfig, DataConfig, MasksConfig
from detlab.methods.data import build_pretrain_dataset


def write_jpegs(root: Path, n: int, h: int, w: int, seed: int = 0) -> Path:
    """``n`` JPEGs of smooth gradients, blocks and noise in ``root/train/scene/``."""
    rng = np.random.default_rng(seed)
    folder = root / "train" / "scene"
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = (rng.integers(0, 256, 3) * (yy[..., None] / h)
               + rng.integers(0, 256, 3) * (xx[..., None] / w)) / 2  # fmt: skip
        for _ in range(6):  # objects
            y0, x0 = rng.integers(0, h - 60), rng.integers(0, w - 60)
            img[y0 : y0 + rng.integers(30, 120), x0 : x0 + rng.integers(30, 120)] = rng.integers(
                0, 256, 3
            )
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def decode_floor(paths: list[Path], repeat: int = 3) -> float:
    from torchvision.io import decode_jpeg, read_file

    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for p in paths:
            decode_jpeg(read_file(str(p)))
        best = max(best, len(paths) / (time.perf_counter() - t0))
    return best


def worker_rate(ds, batch: int, repeat: int = 2) -> tuple[float, list[dict]]:
    """Images/s of __getitem__ + collate on this thread (every image from disk)."""
    n = len(ds) // batch * batch
    best, batches = 0.0, []
    for _ in range(repeat):
        batches = []
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            batches.append(ds.collate([ds[i] for i in range(start, start + batch)]))
        best = max(best, n / (time.perf_counter() - t0))
    return best, batches


def device_rate(ds, batches: list[dict]) -> float:
    ds.views(dict(batches[0]))  # warm-up
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        out = ds.views(dict(b))
        n += next(v for k, v in out.items() if k in ("view1", "v1")).shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--size", default="375x500", help="HxW of the JPEGs")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--gpu-rate", type=float, default=1190.0, help="img/s one GPU consumes")
    args = p.parse_args()
    torch.set_num_threads(1)
    h, w = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench-input-"))
    root = write_jpegs(tmp / "data", args.images, h, w)
    from detlab.pipelines.masks import generate

    stores = {name: generate(name, root, tmp / name, workers=2, progress=False)
              for name in ("fh", "random_boxes")}  # fmt: skip
    data_module.DECODED_CACHE_BYTES = 0  # every image from disk, as on a large dataset
    paths = sorted((root / "train" / "scene").glob("*.jpg"))
    floor = decode_floor(paths)
    print(f"{args.images} JPEGs {w}x{h}, views at {args.resolution} px, batch {args.batch}, "
          f"one thread")  # fmt: skip
    print(f"decode floor (torchvision decode_jpeg): {floor:7.1f} img/s/core")
    aug = AugConfig(resolution=args.resolution)
    data = DataConfig(name="bench", root=str(root), format="imagefolder")
    rows = {}
    for kind, masks, input_kind in (
        ("DetCon-B", MasksConfig(name="fh", path=str(stores["fh"])), "mask"),
        ("SoCo", MasksConfig(name="ss", path=str(stores["random_boxes"]), kind="boxes"), "boxes"),
    ):
        for views in ("cpu", "device"):
            ds = build_pretrain_dataset(data, masks, aug, input_kind, seed=0,
                                        device_side=views == "device")  # fmt: skip
            rate, batches = worker_rate(ds, args.batch)
            line = (f"{kind:<9} views={views:<7} workers {rate:7.1f} img/s/core = "
                    f"{rate / floor:.2f} of the floor; one GPU at {args.gpu_rate:.0f} img/s "
                    f"needs {args.gpu_rate / rate:5.1f} worker cores")  # fmt: skip
            if views == "device":
                line += f"; device side on this CPU core: {device_rate(ds, batches):.1f} img/s"
            print(line, flush=True)
            rows[kind, views] = rate
    x = rows["DetCon-B", "device"]
    print(f"input pipeline {x:.1f} img/s/core = {x / floor:.2f} of the decode floor "
          f"({floor:.1f} img/s/core)")  # fmt: skip


if __name__ == "__main__":
    main()

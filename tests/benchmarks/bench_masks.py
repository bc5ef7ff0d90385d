"""FH mask throughput at 224 px with 1 and 2 worker processes (target: 2 workers >= 1.8x
one) and bytes per image on disk (target <= 4 KB).

    python tests/benchmarks/bench_masks.py [--images 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from detlab.methods.datasets.shapes import generate_shapes
from detlab.pipelines.masks import generate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=128)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-masks-"))
    root = generate_shapes(tmp / "shapes", seed=0, num_train=a.images, num_val=1,
                           image_size=224, max_objects=4, progress=False)  # fmt: skip
    rates = {}
    for workers in (1, 2):
        out = tmp / f"fh-{workers}"
        t0 = time.perf_counter()
        generate("fh", root, out, workers=workers, shard_size=16, progress=False)
        rates[workers] = a.images / (time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in (out / "shards").iterdir())
        print(f"FH 224 px, {workers} worker(s): {rates[workers]:6.1f} images/s, "
              f"{size / a.images:6.0f} bytes/image on disk")  # fmt: skip
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()

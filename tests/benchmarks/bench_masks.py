"""FH mask throughput at 224 px with 1 and 2 worker processes (target: 2 workers >= 1.8x
one) and bytes per image on disk (target <= 4 KB). Each figure is the median of
``--repeats`` runs into fresh folders; the CPU seconds per image (the stage's process and
its workers together) show whether workers cost more than the serial path does (thread
oversubscription, start-up imports). Another busy process on a 2-core machine halves what
2 workers can gain, and a shared host takes its share too: the load average and what 2
processes of pure CPU work gain at the time are printed with the figures.

    python tests/benchmarks/bench_masks.py [--images 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from detlab.methods.datasets.shapes import generate_shapes
from detlab.pipelines.masks import generate


def cpu_seconds() -> float:
    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def spin(n: int = 20_000_000) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t0


def ceiling() -> float:
    """What this machine gives 2 processes of pure CPU work now (2.0 on 2 idle cores)."""
    one = spin()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        t0 = time.perf_counter()
        pool.map(spin, [20_000_000] * 2)
        return 2 * one / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-masks-"))
    root = generate_shapes(tmp / "shapes", seed=0, num_train=a.images, num_val=1,
                           image_size=224, max_objects=4, progress=False)  # fmt: skip
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
          f"2 processes of pure CPU work scale {ceiling():.2f}x here now")  # fmt: skip
    runs: dict[int, list] = {1: [], 2: []}
    for k in range(a.repeats):  # interleaved: both see the same machine
        for workers in (1, 2):
            out = tmp / f"fh-{workers}-{k}"
            c0, t0 = cpu_seconds(), time.perf_counter()
            generate("fh", root, out, workers=workers, shard_size=16, progress=False)
            runs[workers].append((a.images / (time.perf_counter() - t0), cpu_seconds() - c0))
    rates = {}
    for workers, done in runs.items():
        rates[workers] = statistics.median(r for r, _ in done)
        cpu_ms = 1000 * statistics.median(c for _, c in done) / a.images
        size = sum(f.stat().st_size for f in (tmp / f"fh-{workers}-0/shards").iterdir())
        print(f"FH 224 px, {workers} worker(s): {rates[workers]:6.1f} images/s "
              f"({', '.join(f'{r:.1f}' for r, _ in done)}), {cpu_ms:5.1f} CPU ms/image, "
              f"{size / a.images:6.0f} bytes/image on disk")  # fmt: skip
    print(f"speed-up with 2 workers: {rates[2] / rates[1]:.2f}x (target >= 1.8x); pure CPU "
          f"work {ceiling():.2f}x, load average {os.getloadavg()[0]:.2f} after")  # fmt: skip


if __name__ == "__main__":
    main()

"""Computing a mask store's shards: which are missing, and a pool of processes (or this
process) that computes them. Used by the stage on this machine and by each SLURM array task
(``masks.cluster: slurm``) alike, so both write the same bytes through ``write_shard``.

A shard is a fixed index range ``[start, stop)``; a job is ``(shard, start, stop, folder)``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from detlab.methods.datasets.mask_store import shard_done, write_shard
from detlab.pipelines.masks.generators import KIND, generate_one

Job = tuple[int, int, int, str]
_STATE: dict = {}


def missing(n: int, shard_size: int, folder: Path) -> list[Job]:
    """The jobs of the shards not yet complete in ``folder`` (a store of ``n`` images)."""
    return [(k, s, min(n, s + shard_size), str(folder))
            for k, s in enumerate(range(0, n, shard_size)) if not shard_done(folder, k)]  # fmt: skip


def written(job: Job) -> bool:
    return shard_done(Path(job[3]), job[0])


def images(jobs: list[Job]) -> int:
    return sum(stop - start for _, start, stop, _ in jobs)


def span(jobs: list[Job]) -> str:
    """``"4-7"`` (or ``"4"``): the shards of a task, for messages."""
    first, last = jobs[0][0], jobs[-1][0]
    return f"{first}-{last}" if last != first else str(first)


def _init(method: str, params: dict, root: str, split: str, fmt: str,
          owner: int | None = None) -> None:  # fmt: skip
    """A worker's state; ``owner``: the pid of the pool's process (see exit_with_parent)."""
    from detlab.methods.datasets import open_dataset
    from detlab.platform.lifecycle import exit_with_parent

    exit_with_parent(what="masks worker", expected=owner)  # no orphans after `kill -9`

    _STATE.update(method=method, params=params,
                  dataset=open_dataset(root, split, format=fmt, validate=False))  # fmt: skip


def _work(job: Job) -> int:
    shard, start, stop, folder = job
    values = [generate_one(_STATE["method"], _STATE["params"], _STATE["dataset"], i)
              for i in range(start, stop)]  # fmt: skip
    write_shard(Path(folder), shard, KIND[_STATE["method"]], values)
    return stop - start


def pool_context():
    """fork, as torch's DataLoader does on Linux: a forked worker starts in ~10 ms with the
    generators (and torch: the mask store imports it) already loaded, where a spawned one
    first imports them again (~0.6 s for scikit-image, ~2 s more for torch) and held 2
    workers at 1.2-1.64x one on a 6 s run. spawn once CUDA is initialised in this process
    (a CUDA context does not survive a fork), or where fork does not exist."""
    torch = sys.modules.get("torch")
    cuda = torch is not None and torch.cuda.is_initialized()
    fork = "fork" in mp.get_all_start_methods() and not cuda
    return mp.get_context("fork" if fork else "spawn")


def compute(jobs: list[Job], init_args: tuple, workers: int = 1,
            stop: Callable[[], bool] | None = None) -> Iterator[int]:  # fmt: skip
    """Compute ``jobs`` (in this process, or a pool of ``workers``), yielding each finished
    shard's image count; ``stop()`` true ends it after the shards in progress."""
    if workers <= 1 or len(jobs) <= 1:
        _init(*init_args)
        for job in jobs:
            if stop is not None and stop():
                return
            yield _work(job)
        return
    args = (*init_args, os.getpid())  # the workers know whose they are
    with pool_context().Pool(workers, initializer=_init, initargs=args) as pool:
        for count in pool.imap_unordered(_work, jobs):
            yield count
            if stop is not None and stop():
                return  # the with's exit ends the workers; finished shards are kept
        pool.close()  # workers exit on their own: terminate() (the with's exit) leaks
        pool.join()  # the pool's semaphores, and the resource tracker warns at shutdown

"""The `masks@<method>` stage: generate a mask store for a dataset split.

    python -m detlab.pipelines.masks.run --method fh --data data/shapes --out data/masks/fh \
        [--split train] [--workers 2] [--param min_size=500 ...]

Sharded over worker processes with a progress bar; deterministic (shards are fixed index
ranges, PNG encoding is deterministic, no timestamps: serial and parallel runs are
bit-identical); resumable (finished shards of a run with the same parameters are kept, a
killed run continues; a shard is visible only once complete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import shutil
import sys
from pathlib import Path

from tqdm import tqdm

from detlab.methods.datasets.mask_store import (
    FORMAT,
    atomic_write,
    finalise,
    shard_done,
    write_shard,
)
from detlab.pipelines.masks.generators import (
    DEFAULTS,
    KIND,
    NEEDS_INSTANCES,
    generate_one,
    split_params,
)

_STATE: dict = {}


def _init(method: str, params: dict, root: str, split: str, fmt: str) -> None:
    from detlab.methods.datasets import open_dataset
    from detlab.platform.lifecycle import exit_with_parent

    exit_with_parent(what="masks worker")  # no orphans after `kill -9` of the stage

    _STATE.update(method=method, params=params,
                  dataset=open_dataset(root, split, format=fmt, validate=False))  # fmt: skip


def _work(job: tuple[int, int, int, str]) -> int:
    shard, start, stop, folder = job
    values = [generate_one(_STATE["method"], _STATE["params"], _STATE["dataset"], i)
              for i in range(start, stop)]  # fmt: skip
    write_shard(Path(folder), shard, KIND[_STATE["method"]], values)
    return stop - start


def generate(method: str, data_root, out, split: str = "train", workers: int = 1,
             params: dict | None = None, shard_size: int = 64, progress: bool = True,
             format: str = "auto", stop_after_shards: int | None = None) -> Path:  # fmt: skip
    """Generate (or finish, or confirm) the store at ``out``; returns ``out``.

    ``stop_after_shards`` stops early (simulates a killed run in tests).
    """
    from detlab.methods.datasets import open_dataset

    method, params = split_params(method, params)  # a named set: {generator: ..., ...}
    if method not in DEFAULTS:
        raise ValueError(f"unknown mask method {method!r}; choose one of {sorted(DEFAULTS)}")
    unknown = set(params or {}) - set(DEFAULTS[method])
    if unknown:
        raise ValueError(f"masks {method}: unknown params {sorted(unknown)}; "
                         f"valid: {sorted(DEFAULTS[method])}")  # fmt: skip
    params = {**DEFAULTS[method], **(params or {})}
    dataset = open_dataset(data_root, split, format=format)  # validates every image up front
    if method in NEEDS_INSTANCES and not dataset.has_instances:
        raise ValueError(f"masks {method}: {data_root} ({split}) has no instance annotations")
    out = Path(out)
    run_key = hashlib.sha256(json.dumps(
        [FORMAT, method, params, dataset.fingerprint, shard_size], sort_keys=True).encode()
    ).hexdigest()  # fmt: skip
    state_file = out / "run.json"
    if state_file.exists() and json.loads(state_file.read_text()).get("key") == run_key:
        if (out / "meta.json").exists():
            return out  # already complete
    elif out.exists():  # another run's leftovers: never mix shards of different params
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(state_file, json.dumps({"key": run_key}).encode())
    folder = out / "shards"
    n = len(dataset)
    jobs = [(k, s, min(n, s + shard_size), str(folder))
            for k, s in enumerate(range(0, n, shard_size)) if not shard_done(folder, k)]  # fmt: skip
    if stop_after_shards is not None:
        jobs = jobs[:stop_after_shards]
    done_before = n - sum(stop - start for _, start, stop, _ in jobs)
    bar = tqdm(total=n, initial=done_before, desc=f"masks {method}", unit="img",
               disable=not progress)  # fmt: skip
    init_args = (method, params, str(data_root), split, format)
    if workers <= 1 or len(jobs) <= 1:
        _init(*init_args)
        for job in jobs:
            bar.update(_work(job))
    else:
        ctx = mp.get_context("spawn")  # no inherited torch / thread state
        with ctx.Pool(workers, initializer=_init, initargs=init_args) as pool:
            for count in pool.imap_unordered(_work, jobs):
                bar.update(count)
            pool.close()  # workers exit on their own: terminate() (the with's exit) leaks
            pool.join()  # the pool's semaphores, and the resource tracker warns at shutdown
    bar.close()
    if stop_after_shards is not None and any(
        not shard_done(folder, k) for k in range(-(-n // shard_size))
    ):
        return out
    meta = {"kind": KIND[method], "generator": method, "params": params, "split": split,
            "dataset_fingerprint": dataset.fingerprint, "dataset_root": str(data_root)}  # fmt: skip
    finalise(out, meta, n, shard_size)
    return out


def parse_params(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1] in "-0123456789[{tf" else value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate a mask store (DVC stage masks@<method>).")
    p.add_argument("--method", required=True,
                   help=f"a generator ({', '.join(sorted(DEFAULTS))}) or a mask set of "
                   "--params-file naming its generator")  # fmt: skip
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--format", default="auto")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--param", action="append", default=[], help="key=value (JSON values)")
    p.add_argument("--params-file", default=None,
                   help="params.yaml: use its masks.methods.<method> section")  # fmt: skip
    a = p.parse_args(argv)
    params = {}
    if a.params_file:
        import yaml

        section = yaml.safe_load(Path(a.params_file).read_text()).get("masks", {})
        params = dict((section.get("methods") or {}).get(a.method) or {})
    params.update(parse_params(a.param))
    from detlab.platform.lifecycle import end_with_dvc

    end_with_dvc(f"masks {a.method}")  # `kill -9 dvc repro` ends this stage (and its workers)
    try:
        out = generate(a.method, a.data, a.out, a.split, a.workers, params, a.shard_size,
                       format=a.format)  # fmt: skip
    except ValueError as exc:  # unknown params, dataset errors (DatasetError is one)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((out / "meta.json").read_text())
    print(f"{out}: {meta['num_images']} images, {meta['generator']} {meta['params']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

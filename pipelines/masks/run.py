"""The `masks@<method>` stage: generate a mask store for a dataset split.

    python -m detlab.pipelines.masks.run --method fh --data data/shapes --out data/masks/fh \
        [--split train] [--workers 2] [--param min_size=500 ...] [--cluster slurm]

Sharded over worker processes with a progress bar, or (``--cluster slurm``) over the tasks
of one SLURM job array (``detlab.pipelines.masks.slurm``); deterministic (shards are fixed
index ranges, PNG encoding is deterministic, no timestamps: serial, parallel and SLURM runs
are bit-identical); resumable (finished shards of a run with the same parameters are kept,
a killed run continues; a shard is visible only once complete).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from detlab.methods.datasets.mask_store import FORMAT, atomic_write, finalise
from detlab.pipelines.masks.generators import DEFAULTS, KIND, NEEDS_INSTANCES, split_params
from detlab.pipelines.masks.shards import compute, images, missing
from detlab.platform.progress import Progress


def generate(method: str, data_root, out, split: str = "train", workers: int = 1,
             params: dict | None = None, shard_size: int = 64, progress: bool = True,
             format: str = "auto", stop_after_shards: int | None = None,
             cluster: str = "local", slurm: dict | None = None) -> Path:  # fmt: skip
    """Generate (or finish, or confirm) the store at ``out``; returns ``out``.

    ``cluster="slurm"``: the missing shards run as one SLURM job array with the settings
    ``slurm`` (``masks.slurm``: see ``detlab.pipelines.masks.slurm``); the store is the
    same, byte for byte. ``stop_after_shards`` stops early (simulates a killed run in tests).
    """
    from detlab.methods.datasets import open_dataset

    name = method
    method, params = split_params(method, params)  # a named set: {generator: ..., ...}
    if method not in DEFAULTS:
        raise ValueError(f"unknown mask method {method!r}; choose one of {sorted(DEFAULTS)}")
    unknown = set(params or {}) - set(DEFAULTS[method])
    if unknown:
        raise ValueError(f"masks {method}: unknown params {sorted(unknown)}; "
                         f"valid: {sorted(DEFAULTS[method])}")  # fmt: skip
    if cluster not in ("local", "slurm"):
        raise ValueError(f"masks.cluster={cluster}: choose local or slurm")
    params = {**DEFAULTS[method], **(params or {})}
    dataset = open_dataset(data_root, split, format=format)  # validates every image up front
    if method in NEEDS_INSTANCES and not dataset.has_instances:
        raise ValueError(f"masks {method}: {data_root} ({split}) has no instance annotations")
    out = Path(out)
    run_key = hashlib.sha256(json.dumps(
        [FORMAT, method, params, dataset.fingerprint, shard_size], sort_keys=True).encode()
    ).hexdigest()  # fmt: skip
    state_file = out / "run.json"
    same = state_file.exists() and json.loads(state_file.read_text()).get("key") == run_key
    if same and (out / "meta.json").exists():
        return out  # already complete
    array = None
    if cluster == "slurm":  # settings and cluster checked before anything is written
        from detlab.pipelines.masks.slurm import MaskArray

        array = MaskArray(slurm, f"masks-{name}")
    if out.exists() and not same:  # another run's leftovers: never mix shards of other params
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(state_file, json.dumps({"key": run_key}).encode())
    folder = out / "shards"
    n = len(dataset)
    jobs = missing(n, shard_size, folder)
    if stop_after_shards is not None:
        jobs = jobs[:stop_after_shards]
    bar = Progress(n, f"masks {name}", initial=n - images(jobs), unit="img", enabled=progress)
    init_args = (method, params, str(data_root), split, format)
    try:
        if array is not None:
            array.run(jobs, init_args, bar)
        else:
            for count in compute(jobs, init_args, workers):
                bar.update(count)
    finally:
        bar.close()
    if stop_after_shards is not None and missing(n, shard_size, folder):
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
                   help="params.yaml: use its masks.methods.<method> (and masks.slurm) section")  # fmt: skip
    p.add_argument("--cluster", choices=("local", "slurm"), default="local",
                   help="local: --workers processes here; slurm: a job array (masks.slurm)")  # fmt: skip
    a = p.parse_args(argv)
    params, slurm = {}, {}
    if a.params_file:
        import yaml

        section = yaml.safe_load(Path(a.params_file).read_text()).get("masks", {})
        params = dict((section.get("methods") or {}).get(a.method) or {})
        slurm = dict(section.get("slurm") or {})
    params.update(parse_params(a.param))
    from detlab.platform.lifecycle import end_with_dvc

    end_with_dvc(f"masks {a.method}")  # `kill -9 dvc repro` ends this stage (and its workers)
    from detlab.pipelines.masks.slurm import ArrayTaskError

    try:
        out = generate(a.method, a.data, a.out, a.split, a.workers, params, a.shard_size,
                       format=a.format, cluster=a.cluster, slurm=slurm)  # fmt: skip
    except ValueError as exc:  # unknown params, dataset errors (DatasetError is one), bad
        print(f"error: {exc}", file=sys.stderr)  # SLURM settings (before submission)
        return 2
    except ArrayTaskError as exc:  # array tasks that did not finish: their shards are missing
        print(f"error: {exc}", file=sys.stderr)
        return 1
    meta = json.loads((out / "meta.json").read_text())
    print(f"{out}: {meta['num_images']} images, {meta['generator']} {meta['params']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

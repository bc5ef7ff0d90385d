"""Stress the sweep's trial claiming: run a tiny grid sweep with 2 and with 4 local workers
again and again (real SQLite storage, real MLflow, real worker processes) and count the runs
that did not end with exactly one COMPLETE trial per grid point and no FAIL.

    python tests/benchmarks/stress_sweep_grid.py [--runs 20] [--workers 2 4] [--hogs 2]

``--hogs N`` keeps N busy-looping processes running alongside, to stretch every window
between a claim and a worker's first heartbeat the way a loaded machine does. Prints one line
per run and, at the end, the failure count per worker count (it must print 0).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from detlab.methods.datasets.shapes import generate_shapes
from detlab.platform.cli import main as cli
from detlab.sweeps.storage import open_storage

TINY = [
    "backbone=tiny", "aug.resolution=32", "train.batch_size=8", "train.steps=4",
    "train.progress=false", "optim=sgd", "optim.lr=0.05", "method.proj_hidden=64",
    "method.proj_out=32", "method.pred_hidden=64", "method.num_masks=4",
    "train.knn_max_images=24", "masks.path=null", "sweep.heartbeat_s=2",
    "sweep.objective=knn_top1", "sweep.params.masks.choices=[grid,global]",
]  # fmt: skip


def hog() -> None:
    while True:
        pass


def one_run(data: Path, workers: int, seeds: int, i: int) -> tuple[bool, str]:
    tmp = Path(tempfile.mkdtemp(prefix=f"stress-grid-{workers}w-{i}-"))
    name = "g"
    args = [
        "sweep", "sweep=mask_quality_grid", *TINY, f"data.root={data}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"sweep.name={name}",
        f"sweep.out_dir={tmp}/sweep", f"sweep.n_workers={workers}",
        f"sweep.params.seed.choices=[{','.join(str(s) for s in range(seeds))}]", "--wait",
    ]  # fmt: skip
    rc = cli(args)
    study = optuna.load_study(
        study_name=name, storage=open_storage(f"sqlite:///{tmp}/sweep/optuna.db")
    )
    trials = study.get_trials()
    states = Counter(t.state.name for t in trials)
    points = Counter(
        (t.params["masks"], t.params["seed"]) for t in trials if t.state == TrialState.COMPLETE
    )
    ok = (
        rc == 0
        and states == {"COMPLETE": 2 * seeds}
        and len(points) == 2 * seeds
        and set(points.values()) == {1}
    )
    return ok, f"rc={rc} states={dict(states)} ({tmp})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    p.add_argument("--hogs", type=int, default=0, help="busy processes alongside")
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = Path(tempfile.mkdtemp(prefix="stress-grid-data-")) / "shapes"
    generate_shapes(data, seed=0, num_train=24, num_val=8, image_size=48, max_objects=3)
    hogs = [mp.Process(target=hog, daemon=True) for _ in range(a.hogs)]
    for h in hogs:
        h.start()
    failures = {}
    try:
        for workers in a.workers:
            failures[workers] = 0
            for i in range(a.runs):
                t0 = time.perf_counter()
                ok, detail = one_run(data, workers, seeds=workers, i=i)
                failures[workers] += not ok
                verdict = "ok  " if ok else "FAIL"
                print(f"{workers} workers run {i + 1:2d}/{a.runs}: {verdict} "
                      f"{time.perf_counter() - t0:5.1f} s {detail}", flush=True)  # fmt: skip
    finally:
        for h in hogs:
            h.terminate()
    for workers, n in failures.items():
        print(f"grid sweep with {workers} workers: {n} failures in {a.runs} runs")


if __name__ == "__main__":
    main()

"""Compute a hyperband-pruned sweep spends to reach its best value, compared with running
every trial to the end (same trials: the sweep with pruner=none), on tiny `shapes`.

    python tests/benchmarks/bench_hyperband.py [--trials 8 --steps 24]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from detlab.methods.datasets.shapes import generate_shapes
from detlab.platform.compose import compose
from detlab.sweeps.driver import create_or_resume, prepare
from detlab.sweeps.worker import work


def run(pruner: str, root: Path, tmp: Path, trials: int, steps: int) -> optuna.Study:
    overrides = [
        "sweep=temperature", f"sweep.name={pruner}", f"sweep.out_dir={tmp}/{pruner}",
        f"sweep.n_trials={trials}", f"sweep.pruner={pruner}", f"sweep.monitor_every={steps // 6}",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"data.root={root}", "masks=grid",
        "masks.path=null", "backbone=tiny", "aug.resolution=32", "train.batch_size=16",
        f"train.steps={steps}", "optim=sgd", "optim.lr=0.05", "method.proj_hidden=64",
        "method.proj_out=32", "method.pred_hidden=64", "method.num_masks=4",
        "train.knn_max_images=64",
    ]  # fmt: skip
    cfg = compose(overrides)
    sweep, base, url = prepare(cfg, overrides)
    study = create_or_resume(sweep, base, url, overrides)
    work(url, study.study_name, pruner)
    return study


def spent(study: optuna.Study, steps: int) -> int:
    total = 0
    for t in study.get_trials():
        if t.state == TrialState.COMPLETE:
            total += steps
        elif t.state == TrialState.PRUNED:
            total += max(t.intermediate_values, default=0)
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=24)
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="bench-hyperband-"))
    root = generate_shapes(tmp / "shapes", seed=0, num_train=128, num_val=64, image_size=48,
                           max_objects=3, progress=False)  # fmt: skip
    full = run("none", root, tmp, a.trials, a.steps)
    hb = run("hyperband", root, tmp, a.trials, a.steps)
    for name, study in (("every trial to the end", full), ("hyperband", hb)):
        pruned = sum(t.state == TrialState.PRUNED for t in study.get_trials())
        print(f"{name:<24} steps spent {spent(study, a.steps):5d}  best knn_top1 "
              f"{study.best_value:.4f}  pruned {pruned}/{a.trials}")  # fmt: skip
    print(f"compute ratio hyperband / full: {spent(hb, a.steps) / spent(full, a.steps):.2f}")


if __name__ == "__main__":
    main()

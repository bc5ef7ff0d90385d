"""Sweep orchestration overhead per trial (claim, compose, MLflow child run open/close,
tell) on SQLite and on JournalStorage, with training replaced by a no-op (target <= 0.5 s).

    python tests/benchmarks/bench_sweep.py [--trials 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from unittest import mock

import optuna

from detlab.platform.compose import compose
from detlab.platform.train import TrainResult
from detlab.sweeps.driver import create_or_resume, prepare
from detlab.sweeps.worker import work


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=10)
    a = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for kind in ("sqlite", "journal"):
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-sweep-{kind}-"))
        storage = f"journal:{tmp}/optuna.journal" if kind == "journal" else None
        overrides = ["sweep=temperature", f"sweep.n_trials={a.trials}", "sweep.name=b",
                     f"sweep.out_dir={tmp}", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
                     "backbone=tiny", "sweep.pruner=none"]  # fmt: skip
        if storage:
            overrides.append(f"sweep.storage={storage}")
        cfg = compose(overrides)
        sweep, base, url = prepare(cfg, overrides)
        create_or_resume(sweep, base, url, overrides)

        def fake_train(cfg, on_metrics=None, **kw):  # the orchestration only
            return TrainResult("completed", cfg.train.steps, cfg.tracking.run_id, {"knn_top1": 0.5})

        with mock.patch("detlab.platform.run.train", fake_train):
            t0 = time.perf_counter()
            work(url, "b", "bench")
            per_trial = (time.perf_counter() - t0) / a.trials
        print(f"{kind:<8} {per_trial:6.3f} s per trial (ask/claim, compose, MLflow, tell)")


if __name__ == "__main__":
    main()

"""Sampler and pruner of a sweep definition (workers rebuild them: Optuna stores neither)."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig

from detlab.sweeps.space import SweepError


def build_sampler(sweep: DictConfig, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded per trial: workers in separate processes must not replay one random stream
    (same seed in every worker = the same 'random' points), and a trial's draw stays
    reproducible from (sampler_seed, trial number, the trials finished before it)."""
    seed = int(sweep.sampler_seed) * 100_003 + int(trial_number)
    if sweep.sampler == "tpe":  # constant liar: parallel workers do not sample the same spot
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=4)
    if sweep.sampler in ("random", "grid"):  # grid points are enqueued by the driver
        return optuna.samplers.RandomSampler(seed=seed)
    if sweep.sampler == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SweepError("sweep.sampler=cmaes needs the `cmaes` package") from None
        return optuna.samplers.CmaEsSampler(seed=seed)
    raise SweepError(f"sweep.sampler={sweep.sampler!r} is not one of tpe, random, grid, cmaes")


def build_pruner(sweep: DictConfig, steps: int) -> optuna.pruners.BasePruner:
    every = int(sweep.monitor_every or max(1, steps // 4))
    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=every)
    if sweep.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=every, max_resource=steps)
    if sweep.pruner == "none":
        return optuna.pruners.NopPruner()
    raise SweepError(f"sweep.pruner={sweep.pruner!r} is not one of median, hyperband, none")

"""Schema of a sweep definition (config group ``sweep/``); the platform stores it for
Hydra through the ``detlab.config_groups`` entry point (pyproject.toml), and finds the
group's YAML in ``CONFIG_DIR`` through the ``detlab.config_dirs`` one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "conf"  # sweep/<name>.yaml


@dataclass
class ParamSpec:
    """One searched parameter: ``path`` is a dotted config key, e.g. ``method.temperature``."""

    path: str = "???"
    type: str = "float"  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class SweepConfig:
    name: str = "???"
    description: str = ""
    base_overrides: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # name -> ParamSpec fields
    objective: str = "knn_top1"
    direction: str = "maximize"
    sampler: str = "tpe"  # tpe | random | grid | cmaes
    sampler_seed: int = 0
    pruner: str = "median"  # median | hyperband | none
    n_trials: int = 20
    n_workers: int = 2
    storage: str | None = None  # None: sqlite in out_dir; journal:<path>; postgresql://...
    out_dir: str = "outputs/sweeps/${sweep.name}"
    heartbeat_s: float = 60.0  # workers beat this often; a trial silent for 3 beats is failed
    max_retries: int = 2  # a failed trial (crash, dead worker) is retried this many times
    monitor_every: int = 0  # kNN monitor (pruning signal) every N steps; 0 = steps // 4
    grid: bool = False  # every point of the categorical space exactly once (ablations)

"""The search space of a sweep: validation against the composed config, sampling, grids.

A parameter's ``path`` is either a dotted config key (``method.temperature``) or a config
group (``masks``: its choices are group options). Trials turn into Hydra overrides.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from detlab.platform.compose import ConfigError, compose, group_options, is_group
from detlab.sweeps.schema import ParamSpec


class SweepError(ValueError):
    """A sweep definition that cannot run (names the key)."""


def merge_overrides(*lists: Sequence[str]) -> list[str]:
    """Later lists win per key (Hydra rejects a group chosen twice)."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for ov in overrides:
            merged[ov.split("=", 1)[0].lstrip("+~")] = ov
    return list(merged.values())


def normalise_params(sweep: DictConfig) -> DictConfig:
    """Each ``sweep.params.<name>`` checked against ParamSpec (unknown fields are errors)."""
    specs = {}
    for name, raw in (sweep.params or {}).items():
        try:
            specs[name] = OmegaConf.merge(OmegaConf.structured(ParamSpec), raw)
        except Exception as exc:  # OmegaConf's validation errors
            msg = str(exc).splitlines()[0]
            raise SweepError(
                f"sweep.params.{name}: {msg} (fields: {list(ParamSpec.__dataclass_fields__)})"
            ) from None
    # resolved: a detached copy cannot see the root its interpolations point into
    # (``out_dir: outputs/sweeps/${sweep.name}``)
    out = OmegaConf.create(OmegaConf.to_container(sweep, resolve=True))
    out.params = specs
    return out


def validate_space(sweep: DictConfig, base: DictConfig) -> None:
    """Every parameter path exists in ``base`` and every range is non-empty."""
    if not sweep.params:
        raise SweepError(f"sweep={sweep.name}: `params` is empty; nothing to search")
    for name, p in sweep.params.items():
        where = f"sweep.params.{name}"
        if is_group(p.path):
            bad = [c for c in p.choices or [] if c not in group_options(p.path)]
            if p.type != "categorical" or not p.choices or bad:
                raise SweepError(
                    f"{where}: group '{p.path}' needs categorical choices among "
                    f"{group_options(p.path)}" + (f"; unknown: {bad}" if bad else "")
                )
            continue
        if OmegaConf.select(base, p.path, default="__missing__") == "__missing__":
            parent = p.path.rsplit(".", 1)[0] if "." in p.path else ""
            node = OmegaConf.select(base, parent) if parent else base
            keys = sorted(node.keys()) if isinstance(node, DictConfig) else []
            raise SweepError(
                f"{where}.path={p.path} is not a config key; valid keys of "
                f"{parent or '<root>'}: {', '.join(map(str, keys))}"
            )
        if p.type == "categorical":
            if not p.choices:
                raise SweepError(f"{where}: categorical parameter needs non-empty `choices`")
        elif p.type in ("float", "int"):
            if p.low is None or p.high is None or not p.low < p.high:
                raise SweepError(f"{where}: needs low < high, got low={p.low}, high={p.high}")
            if p.log and p.low <= 0:
                raise SweepError(f"{where}: log scale needs low > 0, got {p.low}")
        else:
            raise SweepError(f"{where}.type={p.type!r} is not one of float, int, categorical")
    if sweep.grid and any(p.type != "categorical" for p in sweep.params.values()):
        raise SweepError(f"sweep={sweep.name}: grid sweeps need categorical parameters only")
    if sweep.direction not in ("maximize", "minimize"):
        raise SweepError(f"sweep.direction={sweep.direction!r} is not maximize or minimize")


def suggest(trial: optuna.Trial, sweep: DictConfig) -> dict[str, Any]:
    """Sample (or read back, for enqueued and retried trials) every parameter."""
    values = {}
    for name, p in sweep.params.items():
        if p.type == "categorical":
            values[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.type == "int":
            step = int(p.step or 1)
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=step, log=p.log)
        else:
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return values


def to_overrides(values: dict[str, Any], sweep: DictConfig) -> list[str]:
    out = []
    for name, value in values.items():
        path = sweep.params[name].path
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        out.append(f"{path}={text}")
    return out


def grid_points(sweep: DictConfig) -> list[dict[str, Any]]:
    names = list(sweep.params)
    choices = [list(sweep.params[n].choices) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


def compose_trial(overrides: Sequence[str]) -> DictConfig:
    try:
        return compose(list(overrides))
    except ConfigError as exc:
        raise SweepError(f"trial config: {exc}") from None

"""Compose the Hydra config tree in ``platform/conf`` with overrides, with clear errors.

Used by the CLI, DVC stages, sweep workers and tests alike, so that every entry point
validates overrides the same way: an unknown key or group option is a ``ConfigError`` that
names the key and lists the valid choices, raised before any compute is spent.

A layer above adds its own config groups as a folder named by a ``detlab.config_dirs``
entry point (pyproject.toml: the sweeps' ``sweep/`` group), put on Hydra's search path:
the platform never looks for that layer's files itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detlab.methods.config import METHOD_CONFIGS
from detlab.platform.config import Config, register_configs


class ConfigError(ValueError):
    """A config key, value or group option that does not exist or does not fit."""


CONF_DIR = Path(__file__).resolve().parent / "conf"


def conf_dir() -> Path:
    """The platform's config tree: ``config.yaml`` and every group but those added above."""
    return CONF_DIR


def config_dirs() -> list[Path]:
    """The platform's tree, then each folder of groups a ``detlab.config_dirs`` entry point
    names (a layer above's, e.g. ``sweeps/conf`` with ``sweep/``)."""
    return [CONF_DIR, *(Path(ep.load()) for ep in entry_points(group="detlab.config_dirs"))]


def is_group(name: str) -> bool:
    """Whether ``name`` is a config group (a folder of options) in any config folder."""
    return "." not in name and any((d / name).is_dir() for d in config_dirs())


def group_options(group: str) -> list[str]:
    """The YAML options of a config group, e.g. ``group_options("method")``."""
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")})


def default_choice(group: str) -> str | None:
    """The option ``config.yaml``'s defaults list picks for ``group``."""
    for entry in yaml.safe_load((conf_dir() / "config.yaml").read_text())["defaults"]:
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    return None


def _schema(parsed: list) -> tuple[DictConfig, str | None]:
    """The full schema with the chosen method's own dataclass in ``method`` (and its name)
    and the groups typed through entry points (``sweep``)."""
    schema = OmegaConf.structured(Config)
    chosen = [ov.value() for ov in parsed if ov.key_or_group == "method"]
    name = chosen[-1] if chosen else default_choice("method")
    if name in METHOD_CONFIGS:  # the registry checks its classes name these
        schema.method = OmegaConf.structured(METHOD_CONFIGS[name])
    for ep in entry_points(group="detlab.config_groups"):  # groups typed by layers above
        schema[ep.name] = OmegaConf.structured(ep.load())
    return schema, name


def _explain(overrides: Sequence[str], exc: Exception) -> str:
    """Turn a Hydra/OmegaConf failure into a message naming the key and the choices."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception as parse_error:  # not even valid override syntax
        return str(parse_error).strip()
    schema, method = _schema(parsed)
    for ov in parsed:
        key = ov.key_or_group
        if ov.is_add() or ov.is_delete():
            continue
        parts = key.split(".")
        if len(parts) == 1 and is_group(key):
            value = ov.value()
            if isinstance(value, str) and value not in group_options(key):
                return (
                    f"{key}={value} is not an option: choose one of {', '.join(group_options(key))}"
                )
            continue
        node = schema
        for i, part in enumerate(parts):
            if not isinstance(node, DictConfig) or part not in node:
                where = ".".join(parts[:i]) or "<root>"
                if where == "method":
                    where = f"method ({method})"
                valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
                return (
                    f"unknown config key '{key}': '{part}' is not a key of {where}. "
                    f"Valid keys of {where}: {', '.join(map(str, valid))}"
                )
            node = node[part] if OmegaConf.is_dict(node) else None
    cause = exc.__cause__ or exc.__context__
    reason = str(cause).splitlines()[0].strip() if cause is not None else ""
    message = str(exc).strip()
    return f"{message}: {reason}" if reason and reason not in message else message


# (key, lowest allowed value, whether the bound itself is allowed): checked after composing
RANGES = (
    ("train.steps", 1, True),
    ("train.batch_size", 1, True),
    ("train.checkpoint_every", 1, True),
    ("train.log_every", 1, True),
    ("train.knn_every", 0, True),
    ("train.threads", 0, True),
    ("optim.lr", 0, False),
    ("optim.weight_decay", 0, True),
    ("optim.warmup_steps", 0, True),
    ("method.temperature", 0, False),
    ("method.num_masks", 1, True),
    ("aug.resolution", 8, True),
    ("eval.epochs", 1, True),
    ("eval.batch_size", 1, True),
    ("eval.max_pixels", 1, True),
)


def check_ranges(cfg: DictConfig) -> None:
    """Values of the right type but an impossible size, named with their key."""
    for key, low, inclusive in RANGES:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if value < low or (not inclusive and value == low):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key}={value} must be {bound}")


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose ``platform/conf/<config_name>.yaml`` with ``overrides`` (Hydra syntax); the
    groups of ``config_dirs()`` beyond the platform's are found on Hydra's search path."""
    register_configs()
    GlobalHydra.instance().clear()
    extra = [d.as_uri() for d in config_dirs()[1:]]
    search = [f"hydra.searchpath=[{','.join(extra)}]"] if extra else []
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=[*search, *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain(overrides, exc)) from None
    finally:
        GlobalHydra.instance().clear()
    check_ranges(cfg)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def flatten(cfg: DictConfig, prefix: str = "") -> dict[str, object]:
    """``{"method.temperature": 0.1, ...}`` for MLflow params and sweep validation."""
    out: dict[str, object] = {}
    container = OmegaConf.to_container(cfg, resolve=True)

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:
            out[path] = node

    walk(container, prefix)
    return out

"""The method registry: one class per name, matching the config group ``method/``.

``build_method(cfg.method, cfg.backbone, cfg.aug)`` is the only way the platform builds a
method; tests iterate over ``METHODS``. Each class names its config dataclass
(``config_class``), which lives in ``detlab.methods.config`` (torch-free: composing a config
never imports torch) and is named there in ``METHOD_CONFIGS``; ``check_configs()`` (run at
import) holds the two together. Adding a method: its model file, its config dataclass and
one line in ``METHOD_CONFIGS``, one line here, its YAML.
"""

from __future__ import annotations

from detlab.methods.config import METHOD_CONFIGS, AugConfig, BackboneConfig, MethodConfig
from detlab.methods.models.base import Method
from detlab.methods.models.detcon import DetConB, DetConS
from detlab.methods.models.image import BYOL, MoCoV2, SimCLR, VICReg
from detlab.methods.models.soco import SoCo

METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "mocov2": MoCoV2,
    "vicreg": VICReg,
    "detcon_s": DetConS,
    "detcon_b": DetConB,
    "soco": SoCo,
}


# The image-level counterpart of each object-level method: the same objective with one
# "mask" (the whole image), the baseline a study compares the object-level method against.
IMAGE_BASELINE: dict[str, str] = {"detcon_b": "byol", "detcon_s": "simclr", "soco": "byol"}
TITLES = {"simclr": "SimCLR", "byol": "BYOL", "mocov2": "MoCo v2", "vicreg": "VICReg",
          "detcon_s": "DetCon-S", "detcon_b": "DetCon-B", "soco": "SoCo"}  # fmt: skip


def title(name: str | None) -> str:
    """How reports name a method (``detcon_s`` -> ``DetCon-S``); unknown names as given."""
    return TITLES.get(name or "", name or "?")


class UnknownMethodError(ValueError):
    pass


def check_configs() -> None:
    """Every registered method's ``config_class`` is the one ``METHOD_CONFIGS`` names."""
    if set(METHODS) != set(METHOD_CONFIGS):
        raise RuntimeError(f"methods {sorted(METHODS)} != METHOD_CONFIGS {sorted(METHOD_CONFIGS)}")
    for name, cls in METHODS.items():
        if cls.config_class is not METHOD_CONFIGS[name]:
            raise RuntimeError(f"{name}: config_class {cls.config_class.__name__} != "
                               f"METHOD_CONFIGS[{name!r}] {METHOD_CONFIGS[name].__name__}")  # fmt: skip


check_configs()


def build_method(m: MethodConfig, b: BackboneConfig, aug: AugConfig) -> Method:
    if m.name not in METHODS:
        raise UnknownMethodError(f"method.name={m.name!r} is not one of {sorted(METHODS)}")
    return METHODS[m.name](m, b, aug)

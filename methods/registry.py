"""The method registry: one class per name, matching the config group ``method/``.

``build_method(cfg.method, cfg.backbone, cfg.aug)`` is the only way the platform builds a
method; tests iterate over ``METHODS``.
"""

from __future__ import annotations

from torch import nn

from detlab.methods.models.detcon import DetConB, DetConS
from detlab.methods.models.image import BYOL, MoCoV2, SimCLR, VICReg
from detlab.methods.models.soco import SoCo
from detlab.platform.config import AugConfig, BackboneConfig, MethodConfig

METHODS: dict[str, type[nn.Module]] = {
    "simclr": SimCLR,
    "byol": BYOL,
    "mocov2": MoCoV2,
    "vicreg": VICReg,
    "detcon_s": DetConS,
    "detcon_b": DetConB,
    "soco": SoCo,
}


class UnknownMethodError(ValueError):
    pass


def build_method(m: MethodConfig, b: BackboneConfig, aug: AugConfig) -> nn.Module:
    if m.name not in METHODS:
        raise UnknownMethodError(f"method.name={m.name!r} is not one of {sorted(METHODS)}")
    return METHODS[m.name](m, b, aug)

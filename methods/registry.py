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


def build_method(m: MethodConfig, b: BackboneConfig, aug: AugConfig) -> nn.Module:
    if m.name not in METHODS:
        raise UnknownMethodError(f"method.name={m.name!r} is not one of {sorted(METHODS)}")
    return METHODS[m.name](m, b, aug)

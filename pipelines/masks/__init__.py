"""Mask generation (grid, fh, slic, ss boxes, gt), compact mask stores, mask quality."""

from detlab.methods.datasets.mask_store import MaskStore, MaskStoreError, write_store
from detlab.pipelines.masks.generators import DEFAULTS, KIND

GENERATORS = tuple(DEFAULTS)

__all__ = ["DEFAULTS", "GENERATORS", "KIND", "MaskStore", "MaskStoreError", "generate",
           "write_store"]  # fmt: skip


def __getattr__(name: str):
    # `generate` lives in .run, which is also `python -m detlab.pipelines.masks.run`:
    # importing it here, on package import, made runpy warn that the module was already in
    # sys.modules (once per stage and once per spawned worker)
    if name == "generate":
        from detlab.pipelines.masks.run import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

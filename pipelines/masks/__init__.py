"""Mask generation (grid, fh, slic, ss boxes, gt), compact mask stores, mask quality."""

from detlab.pipelines.masks.generators import DEFAULTS, KIND
from detlab.pipelines.masks.run import generate
from detlab.pipelines.masks.store import MaskStore, MaskStoreError, write_store

GENERATORS = tuple(DEFAULTS)

__all__ = ["DEFAULTS", "GENERATORS", "KIND", "MaskStore", "MaskStoreError", "generate",
           "write_store"]  # fmt: skip

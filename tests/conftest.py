"""Shared fixtures: a tiny generated `shapes` dataset and mask sets made by the real
mask generators (subfolders may override ``tiny_shapes`` with their own sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """24 train / 8 val images of 48 px, up to 3 objects (read-only: copy to modify)."""
    from detlab.pipelines.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    return Path(
        generate_shapes(root, seed=0, num_train=24, num_val=8, image_size=48, max_objects=3)
    )


@pytest.fixture(scope="session")
def tiny_mask_sets(tiny_shapes, tmp_path_factory) -> dict[str, Path]:
    """Mask stores for ``tiny_shapes`` (train split) made by the `masks` stage's code."""
    from detlab.pipelines.masks import generate

    out = tmp_path_factory.mktemp("tiny_masks")
    return {
        name: Path(generate(name, tiny_shapes, out / name, workers=1, progress=False))
        for name in ("fh", "ss", "gt")
    }

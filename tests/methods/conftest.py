"""Fixtures for tests/methods: a tiny generated shapes dataset and mask stores on it
(written with the real store code from hand-made masks, so tests can recognise them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SIZE = 48


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A generated shapes dataset: 24 train / 8 val images of 48 px."""
    from detlab.methods.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    return Path(
        generate_shapes(root, seed=0, num_train=24, num_val=8, image_size=SIZE, max_objects=3)
    )


@pytest.fixture(scope="session")
def other_shapes(tmp_path_factory) -> Path:
    """A second dataset version (different seed): its fingerprint differs."""
    from detlab.methods.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes_other")
    return Path(
        generate_shapes(root, seed=1, num_train=24, num_val=8, image_size=SIZE, max_objects=3)
    )


def _write(path, root, kind):
    from detlab.methods.datasets import open_dataset
    from detlab.pipelines.masks import write_store

    ds = open_dataset(root, "train")
    if kind == "mask":  # ids 0..5 in horizontal bands: easy to recognise after augmenting

        def make(i):
            r = ds.records[i]
            return (
                (np.arange(r.height)[:, None] * 6 // r.height).repeat(r.width, 1).astype(np.uint8)
            )
    else:

        def make(i):
            return np.array([[4, 4, 30, 30], [10, 20, 44, 40]], np.float32)

    return write_store(path, ds, kind, make)


@pytest.fixture(scope="session")
def band_masks(tiny_shapes, tmp_path_factory) -> Path:
    """A mask store (kind mask) for ``tiny_shapes``."""
    return _write(tmp_path_factory.mktemp("masks") / "bands", tiny_shapes, "mask")


@pytest.fixture(scope="session")
def box_store(tiny_shapes, tmp_path_factory) -> Path:
    """A proposal store (kind boxes) for ``tiny_shapes``."""
    return _write(tmp_path_factory.mktemp("masks") / "ss", tiny_shapes, "boxes")

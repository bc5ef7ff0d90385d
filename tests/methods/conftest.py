"""Fixtures for tests/methods: a tiny generated shapes dataset and mask stores on it.

TEMPORARY: until detlab.pipelines.masks lands, a minimal fake of its contract API is
installed into sys.modules so the data tests can run.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest


def _install_fakes() -> dict | None:
    try:
        import detlab.pipelines.masks  # noqa: F401

        return None
    except ImportError:
        pass

    class MaskStoreError(ValueError):
        pass

    class MaskStore:
        @classmethod
        def open(cls, path, dataset=None):
            self = cls()
            self.path = Path(path)
            self.meta = json.loads((self.path / "meta.json").read_text())
            if dataset is not None and dataset.fingerprint != self.meta["dataset_fingerprint"]:
                raise MaskStoreError(
                    f"{path}: made for dataset {self.meta['dataset_fingerprint'][:12]}, "
                    f"not {dataset.fingerprint[:12]}"
                )
            self.kind = self.meta["kind"]
            with np.load(self.path / "data.npz") as f:  # eager: fork-safe
                self.data = {k: f[k] for k in f.files}
            return self

        def __len__(self):
            return len(self.data)

        def mask(self, i):
            return self.data[f"x{i}"]

        def boxes(self, i):
            return self.data[f"x{i}"].astype(np.float32)

    def write_store(path, dataset, kind, make):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "data.npz", **{f"x{i}": make(i) for i in range(len(dataset))})
        meta = {"kind": kind, "generator": "fake", "dataset_fingerprint": dataset.fingerprint}
        (path / "meta.json").write_text(json.dumps(meta))
        return path

    ms = types.ModuleType("detlab.pipelines.masks")
    ms.MaskStore, ms.MaskStoreError, ms._fake_write_store = MaskStore, MaskStoreError, write_store
    return {"detlab.pipelines.masks": ms}


@pytest.fixture(scope="session")
def pipelines_api():
    """The readers (fakes while the real modules are missing; undone after the session)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, module in (_install_fakes() or {}).items():
            mp.setitem(sys.modules, name, module)
        yield


SIZE = 48


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory, pipelines_api) -> Path:
    """A generated shapes dataset: 24 train / 8 val images of 48 px."""
    from detlab.pipelines.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    return Path(
        generate_shapes(root, seed=0, num_train=24, num_val=8, image_size=SIZE, max_objects=3)
    )


@pytest.fixture(scope="session")
def other_shapes(tmp_path_factory, pipelines_api) -> Path:
    """A second dataset version (different seed): its fingerprint differs."""
    from detlab.pipelines.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes_other")
    return Path(
        generate_shapes(root, seed=1, num_train=24, num_val=8, image_size=SIZE, max_objects=3)
    )


def _write(path, root, kind):
    from detlab.pipelines.datasets import open_dataset
    from detlab.pipelines.masks import _fake_write_store

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

    return _fake_write_store(path, ds, kind, make)


@pytest.fixture(scope="session")
def band_masks(tiny_shapes, tmp_path_factory) -> Path:
    """A mask store (kind mask) for ``tiny_shapes``."""
    return _write(tmp_path_factory.mktemp("masks") / "bands", tiny_shapes, "mask")


@pytest.fixture(scope="session")
def box_store(tiny_shapes, tmp_path_factory) -> Path:
    """A proposal store (kind boxes) for ``tiny_shapes``."""
    return _write(tmp_path_factory.mktemp("masks") / "ss", tiny_shapes, "boxes")

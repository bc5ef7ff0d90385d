"""Mask generators and stores: exact / reference-equal outputs, determinism, parallel ==
serial, resume after a kill, dataset pairing and corrupt input."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from skimage.segmentation import felzenszwalb

from detlab.methods.datasets import DatasetError, open_dataset
from detlab.pipelines.masks import MaskStore, MaskStoreError, generate
from detlab.pipelines.masks.generators import fh, fh_min_size, grid
from detlab.pipelines.masks.selective_search import soco_filter, soco_proposals


def digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def test_grid_is_exact():
    out = grid(np.zeros((6, 8, 3), np.uint8), n=2)
    want = np.array([[0] * 4 + [1] * 4] * 3 + [[2] * 4 + [3] * 4] * 3)
    assert out.dtype == np.uint8 and np.array_equal(out, want)


def test_fh_equals_a_direct_skimage_call(tiny_shapes):
    image = open_dataset(tiny_shapes, "train").load_image(0)
    size = min(image.shape[:2])
    direct = felzenszwalb(image, scale=1000, sigma=0.8, min_size=fh_min_size(1000, size, 224))
    assert np.array_equal(fh(image), direct.astype(np.uint8))
    big = np.random.default_rng(0).integers(0, 255, (240, 240, 3), dtype=np.uint8)
    assert fh_min_size(1000, 240, 224) == 1000  # the official value at >= 224 px
    assert np.array_equal(fh(big), np.minimum(felzenszwalb(big, 1000, 0.8, 1000), 255))


def test_ss_boxes_pass_socos_filter(tiny_shapes):
    image = open_dataset(tiny_shapes, "train").load_image(1)
    boxes = soco_proposals(image)
    h, w = image.shape[:2]
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert np.array_equal(boxes, soco_proposals(image))  # deterministic
    # the filter and its fall-backs, by hand
    cand = np.array([[0, 0, 10, 10], [0, 0, 60, 40], [0, 0, 90, 10]], np.float32)
    assert soco_filter(cand, 100, 100, 32).tolist() == [[0, 0, 60, 40]]
    only_thin = np.array([[0, 0, 90, 10]], np.float32)
    assert soco_filter(only_thin, 100, 100, 32).tolist() == [[0, 0, 90, 10]]  # no filter


@pytest.mark.parametrize("method", ["grid", "fh", "slic", "ss", "gt"])
def test_parallel_equals_serial_bit_for_bit(method, tiny_shapes, tmp_path):
    a = generate(method, tiny_shapes, tmp_path / "a", workers=1, shard_size=5, progress=False)
    b = generate(method, tiny_shapes, tmp_path / "b", workers=2, shard_size=5, progress=False)
    assert digest(a) == digest(b)
    store = MaskStore.open(a, open_dataset(tiny_shapes, "train"))
    assert len(store) == len(open_dataset(tiny_shapes, "train"))
    assert store.meta["generator"] == method


def test_gt_masks_reproduce_the_instances(tiny_shapes, tmp_path):
    ds = open_dataset(tiny_shapes, "train")
    store = MaskStore.open(generate("gt", tiny_shapes, tmp_path / "gt", progress=False), ds)
    masks, _ = ds.instances(2)
    ids = store.mask(2)
    for k, m in enumerate(masks):  # visible part of each instance carries its id
        assert (ids[m] == k + 1).mean() > 0.5


@pytest.mark.faults
def test_killed_run_resumes_to_the_same_store(tiny_shapes, tmp_path):
    full = generate("fh", tiny_shapes, tmp_path / "full", shard_size=5, progress=False)
    part = generate("fh", tiny_shapes, tmp_path / "part", shard_size=5, progress=False,
                    stop_after_shards=2)  # fmt: skip
    assert not (part / "meta.json").exists()  # incomplete stores are not visible as stores
    with pytest.raises(MaskStoreError, match="not a complete mask store"):
        MaskStore.open(part)
    assert sorted(p.name for p in (part / "shards").iterdir()) == [
        "shard-00000.bin", "shard-00000.off.npy", "shard-00001.bin", "shard-00001.off.npy"
    ]  # fmt: skip
    first = (part / "shards/shard-00000.bin").stat().st_mtime_ns
    generate("fh", tiny_shapes, part, shard_size=5, workers=2, progress=False)
    assert (part / "shards/shard-00000.bin").stat().st_mtime_ns == first  # kept, not redone
    assert digest(part) == digest(full)


def test_changed_params_start_afresh(tiny_shapes, tmp_path):
    out = generate("grid", tiny_shapes, tmp_path / "g", params={"n": 2}, progress=False)
    generate("grid", tiny_shapes, out, params={"n": 3}, progress=False)
    store = MaskStore.open(out)
    assert store.meta["params"]["n"] == 3 and store.mask(0).max() == 8


def test_store_for_another_dataset_version_is_refused(tiny_shapes, tmp_path):
    from detlab.methods.datasets.shapes import generate_shapes

    out = generate("grid", tiny_shapes, tmp_path / "g", progress=False)
    other = generate_shapes(tmp_path / "other", seed=5, num_train=24, num_val=8,
                            image_size=48, max_objects=3)  # fmt: skip
    with pytest.raises(MaskStoreError, match=str(out)):
        MaskStore.open(out, open_dataset(other, "train"))


def test_corrupt_image_is_named_before_any_work(tiny_shapes, tmp_path):
    copy = Path(shutil.copytree(tiny_shapes, tmp_path / "shapes"))
    victim = sorted((copy / "images" / "train").rglob("*.*"))[3]
    victim.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=victim.name):
        generate("fh", copy, tmp_path / "fh", progress=False)
    assert not (tmp_path / "fh").exists()


def test_unknown_param_is_named(tiny_shapes, tmp_path):
    with pytest.raises(ValueError, match="unknown params.*'scal'"):
        generate("fh", tiny_shapes, tmp_path / "fh", params={"scal": 3}, progress=False)


def test_the_stage_command_runs_two_workers_without_warnings(tiny_shapes, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "grid"
    args = f"--method grid --data {tiny_shapes} --out {out} --workers 2 --shard-size 4"
    cmd = [sys.executable, "-m", "detlab.pipelines.masks.run", *args.split()]  # 3 shards
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr and "leaked" not in done.stderr, done.stderr[-2000:]
    assert len(MaskStore.open(out)) == 12

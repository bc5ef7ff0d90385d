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


# ---------------------------------------------------------------- controlled mask sets
def test_gt_split_cuts_every_region_into_equal_parts_inside_it():
    from detlab.pipelines.masks.generators import gt_split

    ids = np.zeros((8, 8), np.uint8)
    ids[:, 4:] = 1  # two regions, 4 px wide and 8 tall: the first cut is across the rows
    two = gt_split(ids, parts=2)
    want = np.array([[0] * 4 + [2] * 4] * 4 + [[1] * 4 + [3] * 4] * 4)
    assert np.array_equal(two, want)
    four = gt_split(ids, parts=4)
    assert len(np.unique(four)) == 8 and all((four == k).sum() == 8 for k in range(8))
    for k in np.unique(four):  # every piece inside one region
        assert len(np.unique(ids[four == k])) == 1
    with pytest.raises(ValueError, match="power of two"):
        gt_split(ids, parts=3)


def test_gt_warp_keeps_the_regions_moves_the_boundaries_and_is_seeded():
    from detlab.pipelines.masks.generators import gt_warp, image_rng

    ids = np.zeros((64, 64), np.uint8)
    ids[16:48, 16:48] = 1
    assert np.array_equal(gt_warp(ids, image_rng(0, 3), amplitude=0), ids)
    warped = gt_warp(ids, image_rng(0, 3), amplitude=6)
    assert set(np.unique(warped)) == {0, 1}  # the same regions
    moved = (warped != ids).mean()
    assert 0 < moved < 0.2  # boundaries moved, the object still there
    assert np.array_equal(warped, gt_warp(ids, image_rng(0, 3), amplitude=6))  # seeded
    assert not np.array_equal(warped, gt_warp(ids, image_rng(1, 3), amplitude=6))
    assert (gt_warp(ids, image_rng(0, 3), amplitude=20) != ids).mean() > moved


def test_random_boxes_have_socos_sizes_inside_the_image():
    from detlab.pipelines.masks.generators import image_rng, random_boxes

    boxes = random_boxes(90, 120, image_rng(0, 0), n=200)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scale = np.sqrt(w * h) / np.sqrt(90 * 120)
    assert boxes.shape == (200, 4) and (boxes[:, :2] >= 0).all()
    assert (boxes[:, 2] <= 120 + 1e-4).all() and (boxes[:, 3] <= 90 + 1e-4).all()
    assert scale.min() >= 0.3 - 1e-3 and scale.max() <= 0.8 + 1e-3
    assert (w / h).max() <= 3.0 + 1e-3 and (w / h).min() >= 1 / 3 - 1e-3


def test_object_box_is_the_tight_box_of_the_bright_pixels():
    from detlab.pipelines.masks.generators import KIND, generate_one, object_box

    image = np.zeros((32, 40, 3), np.uint8)
    image[5:20, 7:31, 1] = 200  # the object, in one channel
    image[25, 2, 0] = 10  # faint noise below the threshold
    assert object_box(image).tolist() == [[7, 5, 31, 20]]  # pixel edges
    assert object_box(image, threshold=5).tolist() == [[2, 5, 31, 26]]  # the noise counts
    assert object_box(np.zeros((32, 40, 3), np.uint8)).tolist() == [[0, 0, 40, 32]]

    class One:  # generate_one's view of a dataset
        records = [None]

        def load_image(self, index):
            return image

    assert generate_one("object_box", {"threshold": 16}, One(), 0).tolist() == [[7, 5, 31, 20]]
    assert KIND["object_box"] == "boxes"


def test_a_named_mask_set_runs_its_generator_with_its_params(tiny_shapes, tmp_path):
    from detlab.pipelines.masks.run import main

    params = tmp_path / "params.yaml"
    params.write_text("masks:\n  methods:\n    split2: {generator: gt_split, parts: 2}\n")
    out = tmp_path / "split2"
    assert main(["--method", "split2", "--data", str(tiny_shapes), "--out", str(out),
                 "--params-file", str(params)]) == 0  # fmt: skip
    store, gt = MaskStore.open(out), open_dataset(tiny_shapes, "train")
    assert store.meta["generator"] == "gt_split" and store.meta["params"] == {"parts": 2}
    from detlab.pipelines.masks.generators import generate_one

    assert np.array_equal(store.mask(0), generate_one("gt_split", {"parts": 2}, gt, 0))
    assert len(np.unique(store.mask(0))) == 2 * len(np.unique(generate_one("gt", {}, gt, 0)))
    params.write_text("masks:\n  methods:\n    bad: {generator: gt_split, prts: 2}\n")
    assert main(["--method", "bad", "--data", str(tiny_shapes), "--out", str(tmp_path / "b"),
                 "--params-file", str(params)]) == 2  # fmt: skip


def test_workers_are_forked_not_spawned_where_no_cuda_context_exists(monkeypatch):
    """A spawned worker re-imports scikit-image and torch (~0.6 + 2 s each) before its first
    shard: on a 6 s run that held 2 workers at 1.2-1.64x one. Forked, it starts at once."""
    import multiprocessing as mp
    import sys

    import torch

    from detlab.pipelines.masks.shards import pool_context

    assert "torch" in sys.modules and pool_context().get_start_method() == "fork"
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert pool_context().get_start_method() == "spawn"
    monkeypatch.setattr(mp, "get_all_start_methods", lambda: ["spawn"])
    assert pool_context().get_start_method() == "spawn"

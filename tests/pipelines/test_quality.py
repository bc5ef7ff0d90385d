"""Mask quality on hand-built cases, and the expected ordering on shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detlab.methods.datasets import open_dataset
from detlab.pipelines.masks import MaskStore, generate
from detlab.pipelines.masks.quality import best_overlaps, box_iou, main, measure


def test_best_overlap_hand_cases():
    inst = np.zeros((2, 4, 4), bool)
    inst[0, :2, :2] = True  # 4 px
    inst[1, 2:, :] = True  # 8 px
    perfect = inst[0] * 1 + inst[1] * 2
    assert best_overlaps(perfect, inst).tolist() == [1.0, 1.0]
    halves = np.zeros((4, 4), np.uint8)
    halves[:, 2:] = 1  # left half id 0 (8 px), right half id 1 (8 px)
    # object 0 in the left half: IoU 4 / 8; object 1 (bottom rows): 4 / (8 + 8 - 4) either half
    assert best_overlaps(halves, inst) == pytest.approx([0.5, 1 / 3])


def test_box_iou_hand_case():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2]], float)
    assert box_iou(a, b).tolist() == [[pytest.approx(1 / 7), 1.0]]


def test_gt_is_perfect_and_fh_beats_grid(tmp_path):
    from detlab.methods.datasets.shapes import generate_shapes

    root = generate_shapes(tmp_path / "s", seed=0, num_train=32, num_val=4, image_size=96,
                           max_objects=3)  # fmt: skip
    ds = open_dataset(root, "train")
    q = {m: measure(MaskStore.open(generate(m, root, tmp_path / m, progress=False), ds), ds)
         for m in ("gt", "fh", "grid")}  # fmt: skip
    assert q["gt"]["abo"] == 1.0 and q["gt"]["recall50"] == 1.0
    assert q["fh"]["abo"] > q["grid"]["abo"] + 0.1
    assert q["grid"]["masks_per_image"] == 16.0


def test_stage_writes_metrics_plot_and_mlflow_run(tiny_shapes, tmp_path):
    from mlflow.tracking import MlflowClient

    store = generate("ss", tiny_shapes, tmp_path / "ss", progress=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out, plot = tmp_path / "m/ss.json", tmp_path / "r/ss.png"
    assert main(["--masks", str(store), "--data", str(tiny_shapes), "--out", str(out),
                 "--plot", str(plot), "--tracking-uri", uri]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"abo", "recall50", "masks_per_image"}
    assert plot.stat().st_size > 5000
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mask-quality").experiment_id])
    assert run.data.metrics["abo"] == pytest.approx(metrics["abo"])
    assert run.info.run_name == "ss"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["ss.png"]


def test_purity_hand_case():
    from detlab.pipelines.masks.quality import purity

    inst = np.zeros((1, 4, 4), bool)
    inst[0, :, :2] = True  # the object: left half
    split = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    assert purity(split, inst) == 1.0  # every mask inside one region
    straddle = np.array([[0, 0, 0, 1]] * 4)  # mask 0: 8 object px + 4 background px
    assert purity(straddle, inst) == pytest.approx((8 + 4) / 16)


def test_boxes_measured_against_a_box_store_of_ground_truth(tiny_fmnist, tmp_path):
    """A dataset without annotations (Fashion-MNIST) names its ground-truth boxes as a
    store: ABO is the best box IoU per image's object box, by hand on two cases."""
    from detlab.methods.datasets.mask_store import write_store

    ds = open_dataset(tiny_fmnist, "train")
    truth = write_store(tmp_path / "truth", ds, "boxes",
                        lambda i: np.array([[0, 0, 4, 4]], np.float32))  # fmt: skip
    props = write_store(tmp_path / "props", ds, "boxes",
                        lambda i: np.array([[0, 0, 2, 2], [0, 0, 4, 2]], np.float32))  # fmt: skip
    q = measure(MaskStore.open(props, ds), ds, gt=MaskStore.open(truth, ds))
    assert q["abo"] == pytest.approx(0.5) and q["recall50"] == 1.0  # 8 / 16 px, twice
    assert q["masks_per_image"] == 2.0 and q["num_objects"] == len(ds)
    out = tmp_path / "q.json"
    assert main(["--masks", str(props), "--data", str(tiny_fmnist), "--out", str(out),
                 "--gt-boxes", str(truth), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["abo"] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="not boxes"):
        main(["--masks", str(props), "--data", str(tiny_fmnist), "--out", str(out),
              "--gt-boxes", str(write_store(tmp_path / "m", ds, "mask",
                                            lambda i: np.zeros((32, 32), np.uint8)))])  # fmt: skip

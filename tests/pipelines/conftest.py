"""Fixtures that build tiny datasets: generated shapes, and hand-written VOC / ImageFolder /
COCO folders (so each reader is tested on its own format, not only on shapes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHAPES_SIZE = 64


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """Root of a generated shapes dataset: 12 train / 6 val images of 64 px (read-only!)."""
    from detlab.methods.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    return generate_shapes(
        root, seed=0, num_train=12, num_val=6, image_size=SHAPES_SIZE, max_objects=3
    )


@pytest.fixture
def shapes_copy(tiny_shapes, tmp_path) -> Path:
    """A private, writable copy of ``tiny_shapes`` (for tests that damage files)."""
    return Path(shutil.copytree(tiny_shapes, tmp_path / "shapes"))


def _palette() -> list[int]:
    """VOC's colour map (bit-interleaved), 256 RGB entries."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += [r, g, b]
    return out


def save_palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(_palette())
    im.save(path)


def voc_scene(k: int, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image [H,W,3], class ids [H,W], object ids [H,W]) with two objects and 255 borders."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([yy * 5, xx * 4, np.full_like(yy, 40 * k)], -1).astype(np.uint8)  # smooth
    cls = np.zeros((h, w), np.uint8)
    obj = np.zeros((h, w), np.uint8)
    cls[5:20, 4:20], obj[5:20, 4:20] = 15, 1  # person
    cls[22:35, 25 + k : 44], obj[22:35, 25 + k : 44] = 12, 2  # dog
    for ids in (cls, obj):  # VOC draws a 255 "void" outline around objects
        ids[4, 4:20] = 255
        ids[21, 25 + k : 44] = 255
    return image, cls, obj


@pytest.fixture
def voc_truth():
    """voc_truth(k) -> (image, class ids, object ids) that ``make_voc`` wrote for image k."""
    return voc_scene


@pytest.fixture
def make_voc(tmp_path):
    """make_voc(n=3, devkit=False) -> root of a hand-built VOC segmentation folder."""

    def make(n: int = 3, devkit: bool = False) -> Path:
        root = tmp_path / ("VOCdevkit/VOC2012" if devkit else "voc")
        names = [f"2007_{k:06d}" for k in range(n)]
        for k, name in enumerate(names):
            image, cls, obj = voc_scene(k)
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            save_palette_png(root / "SegmentationClass" / f"{name}.png", cls)
            save_palette_png(root / "SegmentationObject" / f"{name}.png", obj)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        (sets / "train.txt").write_text("".join(f"{n}\n" for n in names[:-1]))
        (sets / "val.txt").write_text(f"{names[-1]}\n")
        return tmp_path / "VOCdevkit" if devkit else root

    return make


@pytest.fixture
def make_imagefolder(tmp_path):
    """make_imagefolder() -> root of ``<root>/{train,val}/<class>/<img>`` (ImageNet layout),
    with JPEG, PNG and greyscale images of different sizes."""

    def make() -> Path:
        root = tmp_path / "imagenet"
        rng = np.random.default_rng(0)
        layout = {"train": {"n01": 3, "n02": 2, "n03": 2}, "val": {"n01": 1, "n02": 1, "n03": 1}}
        for split, classes in layout.items():
            for cls, count in classes.items():
                for k in range(count):
                    d = root / split / cls
                    d.mkdir(parents=True, exist_ok=True)
                    h, w = 30 + 2 * k, 40 - k
                    if k == 1:  # greyscale PNG
                        arr = rng.integers(0, 255, (h, w), dtype=np.uint8)
                        Image.fromarray(arr, mode="L").save(d / f"{cls}_{k}.png")
                    else:
                        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                        Image.fromarray(arr).save(d / f"{cls}_{k}.JPEG", format="JPEG")
        (root / "train" / "n01" / "notes.txt").write_text("not an image")
        return root

    return make


@pytest.fixture
def make_coco(tmp_path):
    """make_coco() -> root in COCO's own layout (``<root>/val2017/``) with a polygon object,
    an RLE object and a crowd region; no labels, no semantic PNGs."""
    from pycocotools import mask as mask_utils

    def make() -> Path:
        root = tmp_path / "coco"
        (root / "val2017").mkdir(parents=True)
        (root / "annotations").mkdir()
        h, w = 30, 40
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(root / "val2017" / "a.jpg")
        Image.fromarray(np.full((h, w, 3), 150, np.uint8)).save(root / "val2017" / "b.jpg")
        rle_mask = np.zeros((h, w, 1), np.uint8)
        rle_mask[10:20, 20:35] = 1
        rle = mask_utils.encode(np.asfortranarray(rle_mask))[0]
        crowd = np.zeros((h, w, 1), np.uint8)
        crowd[0:4, 0:40] = 1
        crowd_rle = mask_utils.encode(np.asfortranarray(crowd))[0]
        data = {
            "images": [
                {"id": 7, "file_name": "a.jpg", "height": h, "width": w},
                {"id": 3, "file_name": "b.jpg", "height": h, "width": w},
            ],
            "annotations": [
                {
                    "id": 1,
                    "image_id": 7,
                    "category_id": 18,
                    "iscrowd": 0,
                    "area": 100.0,
                    "bbox": [2.0, 5.0, 10.0, 10.0],
                    "segmentation": [[2, 5, 12, 5, 12, 15, 2, 15]],
                },
                {
                    "id": 2,
                    "image_id": 7,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 150.0,
                    "bbox": [20.0, 10.0, 15.0, 10.0],
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                },
                {
                    "id": 3,
                    "image_id": 7,
                    "category_id": 1,
                    "iscrowd": 1,
                    "area": 160.0,
                    "bbox": [0.0, 0.0, 40.0, 4.0],
                    "segmentation": {"size": [h, w], "counts": crowd_rle["counts"].decode()},
                },
            ],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        }
        (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
        return root

    return make


@pytest.fixture
def tiny_params():
    """make(params, tmp) -> ``params.yaml``'s content cut to a tiny study (seconds a cell)."""

    def make(params: dict, tmp: Path) -> dict:
        params["prepare"].update(num_train=24, num_val=8, image_size=48, max_objects=3)
        params["masks"]["workers"] = 1
        st = params["studies"]
        st["tracking_uri"] = f"sqlite:///{tmp}/mlflow.db"
        st["common"] = ["experiment=tiny", "train.steps=3", "eval.epochs=3"]
        st["method_overrides"] = []  # the preset's (experiment/per_method/tiny_<method>.yaml)
        st["mask_quality"].update(masks=["grid", "gt", "global"], seeds=[0, 1], resolution=32,
                                  cells={"grid": [], "gt": [], "global": []})  # fmt: skip
        st["resolution"].update(masks=["gt"], resolutions=[40], seeds=[0], cells={"gt": []})
        st["references"].update(kinds=["random", "supervised"], seeds=[0])
        st["mask_count"].update(masks=["gt", "gt_warp12", "gt_split2"], seeds=[0, 1],
                                resolution=32, ladders={"quality": ["gt", "gt_warp12"],
                                                        "count": ["gt", "gt_split2"]})  # fmt: skip
        st["soco_proposals"].update(masks=["ss", "random_boxes"], seeds=[0], resolution=32)
        st["methods"].update(seeds=[0], resolution=32, cells={}, rows={
            "simclr": {"method": "simclr", "mask": "global"},
            "detcon_s": {"method": "detcon_s", "mask": "gt"},
            "byol": {"method": "byol", "mask": "global"}})  # fmt: skip
        st["methods_fmnist"]["data"]["max_per_split"] = 40  # images of each split exported
        st["methods_fmnist"].update(seeds=[0], resolution=32, probe_resolution=32, cells={},
                                    rows={"simclr": {"method": "simclr", "mask": "global"},
                                          "detcon_s": {"method": "detcon_s", "mask": "fh"},
                                          "soco": {"method": "soco", "mask": "ss"}})  # fmt: skip
        st["soco_proposals_fmnist"].update(masks=["ss", "random_boxes"], seeds=[0], cells={})
        for study in ("methods_fmnist", "soco_proposals_fmnist"):  # its own, still tiny
            st[study]["supervised_steps"] = 4
        st["probe_resolution"] = 32
        return params

    return make

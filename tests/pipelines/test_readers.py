"""Readers: COCO (shapes output and a hand-built COCO layout), ImageFolder, VOC; format
detection; fingerprints; and every up-front validation error naming the offending path."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detlab.methods.datasets import DatasetError, ImageRecord, detect_format, open_dataset
from detlab.methods.datasets.scenes import CLASSES

# pycocotools predates numpy 2's __array__(copy=...): harmless DeprecationWarning
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def coco_json(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# ------------------------------------------------------------------------ COCO (shapes)
def test_shapes_read_as_coco(tiny_shapes):
    ds = open_dataset(tiny_shapes, "train")
    data = coco_json(tiny_shapes, "train")
    assert ds.format == "coco" and ds.split == "train" and len(ds) == 12
    assert ds.classes == list(CLASSES) and ds.num_seg_classes == len(CLASSES) + 1
    assert ds.categories == {i + 1: n for i, n in enumerate(CLASSES)}
    assert ds.has_labels and ds.has_instances and ds.has_semantic
    for i, (rec, im) in enumerate(zip(ds.records, data["images"], strict=True)):
        assert isinstance(rec, ImageRecord)
        assert rec.image_id == im["id"] and rec.label == im["label"]
        assert rec.path == tiny_shapes / "images" / "train" / im["file_name"]
        assert (rec.height, rec.width) == (64, 64)
        image = ds.load_image(i)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, np.asarray(Image.open(rec.path)))
        masks, cats = ds.instances(i)
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        assert masks.shape == (len(anns), 64, 64) and masks.dtype == bool
        assert cats.tolist() == [a["category_id"] for a in anns]
        semantic = ds.semantic(i)
        assert semantic.dtype == np.uint8 and semantic.shape == (64, 64)
        painted = np.zeros_like(semantic)
        for m, c in zip(masks, cats, strict=True):
            painted[m] = c
        np.testing.assert_array_equal(semantic, painted)
        boxes, box_cats = ds.boxes(i)
        assert boxes.dtype == np.float32 and boxes.shape == (len(anns), 4)
        for m, b in zip(masks, boxes, strict=True):
            ys, xs = np.nonzero(m)
            assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box_cats.tolist() == cats.tolist()


def test_fingerprint_is_stable_relative_and_sensitive(tiny_shapes, tmp_path):
    a = open_dataset(tiny_shapes, "train")
    assert (
        len(a.fingerprint) == 64 and a.fingerprint == open_dataset(tiny_shapes, "train").fingerprint
    )
    moved = shutil.copytree(tiny_shapes, tmp_path / "elsewhere" / "copy")
    assert open_dataset(moved, "train").fingerprint == a.fingerprint, "paths are relative"
    assert open_dataset(tiny_shapes, "train", max_images=3).fingerprint == a.fingerprint
    assert open_dataset(tiny_shapes, "val").fingerprint != a.fingerprint
    # an edited annotation changes it; so does a re-encoded image of another size
    ann = moved / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    data["images"][0]["label"] = (data["images"][0]["label"] + 1) % len(CLASSES)
    ann.write_text(json.dumps(data))
    assert open_dataset(moved, "train").fingerprint != a.fingerprint


def test_max_images_and_pickling(tiny_shapes):
    ds = open_dataset(tiny_shapes, "val", max_images=4)
    assert len(ds) == 4 and [r.image_id for r in ds.records] == [1, 2, 3, 4]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.load_image(3), ds.load_image(3))
    assert clone.fingerprint == ds.fingerprint


# ------------------------------------------------------------------------ ImageFolder
def test_shapes_read_as_imagefolder_match_coco_labels(tiny_shapes):
    folder = open_dataset(tiny_shapes, "val", format="imagefolder")
    coco = open_dataset(tiny_shapes, "val", format="coco")
    assert folder.format == "imagefolder" and folder.classes == list(CLASSES)
    assert not folder.has_instances and folder.has_semantic and folder.has_labels
    by_path = {r.path: r.label for r in coco.records}
    assert {r.path: r.label for r in folder.records} == by_path
    with pytest.raises(DatasetError, match="no instance annotations"):
        folder.instances(0)


def test_imagenet_layout(make_imagefolder):
    root = make_imagefolder()
    assert detect_format(root, "train") == "imagefolder"
    ds = open_dataset(root, "train")
    assert ds.classes == ["n01", "n02", "n03"] and len(ds) == 7  # notes.txt ignored
    assert [r.label for r in ds.records] == [0, 0, 0, 1, 1, 2, 2]
    assert [r.image_id for r in ds.records] == list(range(7))
    assert not ds.has_semantic and not ds.has_instances and ds.categories == {}
    grey = next(i for i, r in enumerate(ds.records) if r.path.suffix == ".png")
    image = ds.load_image(grey)
    rec = ds.records[grey]
    assert image.shape == (rec.height, rec.width, 3) == (32, 39, 3)
    assert (image[..., 0] == image[..., 2]).all()
    assert len(open_dataset(root, "val")) == 3
    with pytest.raises(DatasetError, match="no semantic"):
        ds.semantic(0)


def test_the_loaders_torchvision_decode_gives_the_same_pixels(make_imagefolder, tiny_shapes):
    """load_image_chw (the pretraining loader's libjpeg-turbo / libpng decode) equals
    load_image (PIL) on JPEG, RGB and greyscale PNG, as [3, H, W]."""
    for ds in (open_dataset(make_imagefolder(), "train"), open_dataset(tiny_shapes, "train")):
        for i in range(len(ds)):
            chw = ds.load_image_chw(i)
            assert str(chw.dtype) == "torch.uint8" and chw.shape[0] == 3
            assert np.array_equal(chw.permute(1, 2, 0).numpy(), ds.load_image(i)), ds.records[i]


def test_the_loaders_decode_names_a_corrupt_image(shapes_copy):
    ds = open_dataset(shapes_copy, "val")
    ds.records[0].path.write_bytes(b"this is not a png" * 10)
    with pytest.raises(DatasetError, match=f"{ds.records[0].path}: cannot load image"):
        ds.load_image_chw(0)


# ------------------------------------------------------------------------ COCO layout
def test_coco_layout_polygons_rle_and_crowd(make_coco):
    root = make_coco()
    ds = open_dataset(root, "val2017")
    assert ds.format == "coco" and [r.image_id for r in ds.records] == [3, 7]
    assert ds.records[0].path == root / "val2017" / "b.jpg"
    assert not ds.has_labels and ds.classes == [] and ds.num_seg_classes == 19
    masks, cats = ds.instances(0)
    assert masks.shape == (0, 30, 40) and cats.shape == (0,)
    masks, cats = ds.instances(1)
    assert cats.tolist() == [18, 1], "crowd regions are not instances"
    polygon, rle = masks
    assert 80 <= polygon.sum() <= 130 and polygon[8:12, 5:10].all() and not polygon[20:].any()
    assert rle.sum() == 150 and rle[10:20, 20:35].all()
    boxes, _ = ds.boxes(1)
    assert boxes.tolist() == [[2, 5, 12, 15], [20, 10, 35, 20]]
    semantic = ds.semantic(1)
    assert (semantic[0:4] == 255).all(), "crowd is ignore"
    assert (semantic[10:20, 20:35] == 1).all() and semantic[10, 6] == 18
    assert set(np.unique(semantic)) == {0, 1, 18, 255}


# ------------------------------------------------------------------------ VOC
@pytest.mark.parametrize("devkit", [False, True])
def test_voc_segmentation(make_voc, voc_truth, devkit):
    root = make_voc(n=3, devkit=devkit)
    assert detect_format(root, "train") == "voc"
    ds = open_dataset(root, "train")
    assert ds.format == "voc" and len(ds) == 2 and ds.num_seg_classes == 21
    assert ds.categories[15] == "person" and ds.categories[12] == "dog" and 0 not in ds.categories
    assert not ds.has_labels and ds.has_instances and ds.has_semantic
    for k, rec in enumerate(ds.records):
        image, cls, obj = voc_truth(k)
        assert rec.path.name == f"2007_{k:06d}.jpg" and (rec.height, rec.width) == (40, 48)
        assert np.abs(ds.load_image(k).astype(int) - image).mean() < 4  # JPEG
        np.testing.assert_array_equal(ds.semantic(k), cls)
        masks, cats = ds.instances(k)
        assert cats.tolist() == [15, 12]
        np.testing.assert_array_equal(masks[0], obj == 1)
        np.testing.assert_array_equal(masks[1], obj == 2)
        boxes, _ = ds.boxes(k)
        assert boxes.tolist() == [[4, 5, 20, 20], [25 + k, 22, 44, 35]]
    assert len(open_dataset(root, "val")) == 1


def test_voc_missing_and_wrong_size_masks_are_named(make_voc):
    root = make_voc(n=3)
    missing = root / "SegmentationClass" / "2007_000001.png"
    missing.unlink()
    wrong = root / "SegmentationObject" / "2007_000000.png"
    Image.open(wrong).resize((20, 20)).save(wrong)
    with pytest.raises(DatasetError) as err:
        open_dataset(root, "train")
    msg = str(err.value)
    assert f"{missing}: annotation file is missing" in msg
    assert f"{wrong}: mask is 20x20" in msg and "2 problem(s)" in msg


# ------------------------------------------------------------------------ validation
def test_missing_image_is_named(shapes_copy):
    rec = open_dataset(shapes_copy, "train").records[2]
    rec.path.unlink()
    ann = shapes_copy / "annotations" / "instances_train.json"
    with pytest.raises(DatasetError, match=f"{rec.path}: file is missing \\(listed in {ann}\\)"):
        open_dataset(shapes_copy, "train")
    # an ImageFolder listing cannot miss a file: it just has one image fewer
    assert len(open_dataset(shapes_copy, "train", format="imagefolder")) == 11
    # the first images are fine: max_images limits the checks to what will be used
    assert len(open_dataset(shapes_copy, "train", max_images=2)) == 2


def test_corrupt_image_is_named(shapes_copy):
    rec = open_dataset(shapes_copy, "val").records[1]
    rec.path.write_bytes(b"this is not a png" * 10)
    for fmt in ("coco", "imagefolder"):
        with pytest.raises(DatasetError, match=f"{rec.path}: cannot decode image"):
            open_dataset(shapes_copy, "val", format=fmt)


def test_truncated_image_needs_full_decode(shapes_copy):
    rec = open_dataset(shapes_copy, "val").records[0]
    data = rec.path.read_bytes()
    rec.path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    ds = open_dataset(shapes_copy, "val")  # header check passes
    with pytest.raises(DatasetError, match=str(rec.path)):
        open_dataset(shapes_copy, "val", full_decode=True)
    with pytest.raises(DatasetError, match=f"{rec.path}: cannot load image"):
        ds.load_image(0)


def test_image_size_differing_from_annotation_is_named(shapes_copy):
    rec = open_dataset(shapes_copy, "train").records[4]
    Image.open(rec.path).resize((50, 64)).save(rec.path)
    ann = shapes_copy / "annotations" / "instances_train.json"
    with pytest.raises(DatasetError) as err:
        open_dataset(shapes_copy, "train")
    assert f"{rec.path}: image is 50x64 (WxH) but {ann} says 64x64" in str(err.value)
    # unchecked, the mismatch still surfaces with the path when the image is loaded
    ds = open_dataset(shapes_copy, "train", validate=False)
    with pytest.raises(DatasetError, match=str(rec.path)):
        ds.load_image(4)


def test_wrong_size_semantic_mask_is_named(shapes_copy):
    rec = open_dataset(shapes_copy, "val").records[3]
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(rec.semantic_path)
    for fmt in ("coco", "imagefolder"):
        with pytest.raises(DatasetError, match=f"{rec.semantic_path}: mask is 32x32"):
            open_dataset(shapes_copy, "val", format=fmt)
    with pytest.raises(DatasetError, match=str(rec.semantic_path)):
        open_dataset(shapes_copy, "val", validate=False).semantic(3)


def test_bad_annotations_are_named(shapes_copy):
    ann = shapes_copy / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["image_id"] = 999
    data["annotations"][1]["category_id"] = 77
    data["annotations"][2]["segmentation"]["size"] = [10, 10]
    ann.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as err:
        open_dataset(shapes_copy, "train", validate=False)
    msg = str(err.value)
    assert str(ann) in msg and "image_id 999" in msg and "category_id 77" in msg
    assert "mask size [10, 10]" in msg
    ann.write_text("{not json")
    with pytest.raises(DatasetError, match=f"{ann}: not valid COCO JSON"):
        open_dataset(shapes_copy, "train")


def test_unknown_split_empty_dataset_and_bad_root(tiny_shapes, make_imagefolder, tmp_path):
    with pytest.raises(DatasetError, match=r"instances_test\.json.*\['train', 'val'\]"):
        open_dataset(tiny_shapes, "test")
    root = make_imagefolder()
    with pytest.raises(DatasetError, match=r"'test'.*\['train', 'val'\]"):
        open_dataset(root, "test")
    empty = tmp_path / "empty" / "train" / "cls"
    empty.mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{empty.parent}.*no images"):
        open_dataset(tmp_path / "empty", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="unknown dataset format 'tfrecord'"):
        open_dataset(tiny_shapes, "train", format="tfrecord")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the dataset format"):
        open_dataset(tmp_path / "nothing", "train")

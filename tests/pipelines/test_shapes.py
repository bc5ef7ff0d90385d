"""The shapes generator and the `prepare` stage: determinism, ground-truth consistency,
scene properties (occlusion, textures, classes), and the atomic stage program."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from skimage.segmentation import felzenszwalb

from detlab.methods.datasets.scenes import CLASSES, MIN_VISIBLE
from detlab.methods.datasets.shapes import ShapesError, generate_shapes
from detlab.pipelines import prepare as prepare_mod

TINY = dict(num_train=5, num_val=2, image_size=48, max_objects=3)

# pycocotools predates numpy 2's __array__(copy=...): harmless DeprecationWarning
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def coco(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


# ------------------------------------------------------------------------ determinism
def test_same_seed_is_bit_identical_and_other_seed_differs(tmp_path):
    a = tree(generate_shapes(tmp_path / "a", seed=3, **TINY))
    b = tree(generate_shapes(tmp_path / "b", seed=3, **TINY))
    c = tree(generate_shapes(tmp_path / "c", seed=4, **TINY))
    assert a == b
    images = lambda t: [v for k, v in sorted(t.items()) if k.startswith("images/")]  # noqa: E731
    assert len(images(a)) == 7
    assert all(x != y for x, y in zip(images(a), images(c), strict=False))
    assert a["annotations/instances_train.json"] != c["annotations/instances_train.json"]


def test_an_image_does_not_depend_on_how_many_are_generated(tmp_path):
    few = generate_shapes(tmp_path / "few", seed=1, **{**TINY, "num_train": 2})
    many = generate_shapes(tmp_path / "many", seed=1, **{**TINY, "num_train": 5})
    for im in coco(few, "train")["images"]:
        rel = f"images/train/{im['file_name']}"
        assert (few / rel).read_bytes() == (many / rel).read_bytes()


# ------------------------------------------------------------------------ ground truth
def test_rle_semantic_label_and_folders_agree(tiny_shapes):
    meta = json.loads((tiny_shapes / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["num_seg_classes"] == len(CLASSES) + 1
    for split, n in (("train", 12), ("val", 6)):
        data = coco(tiny_shapes, split)
        assert len(data["images"]) == n
        assert [c["id"] for c in data["categories"]] == list(range(1, len(CLASSES) + 1))
        for im in data["images"]:
            anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
            assert anns, "every scene has an object"
            image = png(tiny_shapes / "images" / split / im["file_name"])
            assert image.shape == (im["height"], im["width"], 3) and image.dtype == np.uint8
            stem = Path(im["file_name"]).stem
            semantic = png(tiny_shapes / "semantic" / split / f"{stem}.png")
            masks = mask_utils.decode([a["segmentation"] for a in anns]).astype(bool)  # [H,W,N]
            assert masks.sum(2).max() <= 1, "instances are disjoint (occlusion resolved)"
            expected = np.zeros(semantic.shape, np.uint8)
            for j, a in enumerate(anns):
                m = masks[:, :, j]
                assert m.sum() == a["area"] > 0
                ys, xs = np.nonzero(m)
                box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert a["bbox"] == [float(v) for v in box]
                expected[m] = a["category_id"]
            np.testing.assert_array_equal(semantic, expected)
            areas = [a["area"] for a in anns]
            largest = anns[int(np.argmax(areas))]
            assert im["label"] == largest["category_id"] - 1
            assert im["file_name"].split("/")[0] == CLASSES[im["label"]]


def test_scenes_have_occlusion_several_objects_all_classes_and_texture(tmp_path):
    root = generate_shapes(
        tmp_path / "s", seed=0, num_train=40, num_val=0, image_size=64, max_objects=4
    )
    data = coco(root, "train")
    anns = data["annotations"]
    visible = np.array([a["visible_fraction"] for a in anns])
    assert visible.min() >= MIN_VISIBLE - 1e-3
    assert (visible < 0.95).sum() >= 3, "some objects are partly hidden by others"
    assert {a["category_id"] for a in anns} == set(range(1, len(CLASSES) + 1))
    per_image = np.bincount([a["image_id"] for a in anns])[1:]
    assert per_image.max() >= 3 and per_image.min() >= 1
    assert len({im["label"] for im in data["images"]}) >= 5
    # objects are large (>= 1.5% of the image on average) and backgrounds are not flat
    assert np.mean([a["area"] for a in anns]) >= 0.015 * 64 * 64
    stds = []
    for im in data["images"][:10]:
        image = png(root / "images" / "train" / im["file_name"]).astype(float)
        background = (
            png(root / "semantic" / "train" / Path(im["file_name"]).with_suffix(".png").name) == 0
        )
        stds.append(image[background].std(0).mean())
    assert np.median(stds) > 8


def _abo(root: Path, split: str, segment) -> float:
    """Average over GT objects of the best IoU with any segment of the image."""
    data = coco(root, split)
    best = []
    for im in data["images"]:
        seg = segment(png(root / "images" / split / im["file_name"]))
        ids = np.unique(seg)
        regions = seg[None] == ids[:, None, None]  # [K, H, W]
        for a in (a for a in data["annotations"] if a["image_id"] == im["id"]):
            gt = mask_utils.decode(a["segmentation"]).astype(bool)
            inter = (regions & gt).sum((1, 2))
            union = (regions | gt).sum((1, 2))
            best.append((inter / union).max())
    return float(np.mean(best))


def test_felzenszwalb_beats_a_grid_but_is_not_ground_truth(tiny_shapes):
    size = 64
    cell = np.arange(size) * 4 // size
    grid = lambda img: cell[:, None] * 4 + cell[None, :]  # noqa: E731
    # DetCon's scale=1000 with min_size scaled from 1000 px at 224 to this image size
    fh = lambda img: felzenszwalb(img, scale=1000, min_size=int(1000 * (size / 224) ** 2))  # noqa: E731
    abo_grid = np.mean([_abo(tiny_shapes, s, grid) for s in ("train", "val")])
    abo_fh = np.mean([_abo(tiny_shapes, s, fh) for s in ("train", "val")])
    assert abo_fh > abo_grid + 0.2, (abo_fh, abo_grid)
    assert abo_fh < 0.95, f"fh masks should not reproduce the ground truth (abo {abo_fh:.3f})"


# ------------------------------------------------------------------------ bad input
def test_generator_rejects_bad_params_and_a_non_empty_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("old")
    with pytest.raises(ShapesError, match=str(tmp_path / "full")):
        generate_shapes(tmp_path / "full", seed=0, **TINY)
    for bad in ({"image_size": 8}, {"max_objects": 0}, {"num_train": -1}):
        with pytest.raises(ShapesError, match=next(iter(bad))):
            generate_shapes(tmp_path / "new", seed=0, **{**TINY, **bad})
    with pytest.raises(ShapesError, match="seed"):
        generate_shapes(tmp_path / "new", seed="0", **TINY)


# ------------------------------------------------------------------------ prepare stage
def write_params(path: Path, **prepare) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"prepare": prepare, "other": {"x": 1}}))
    return path


PARAMS = dict(dataset="shapes", seed=2, num_train=4, num_val=2, image_size=48, max_objects=2)


def test_prepare_writes_the_dataset_and_replaces_it_atomically(tmp_path, capsys):
    out = tmp_path / "data" / "shapes"
    params = write_params(tmp_path / "params.yaml", **PARAMS, out=str(out))
    assert prepare_mod.main(["--params", str(params), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(out) in line and "train=4" in line
    first = tree(out)
    expected = generate_shapes(
        tmp_path / "direct", seed=2, num_train=4, num_val=2, image_size=48, max_objects=2
    )
    assert first == tree(expected)
    assert prepare_mod.main(["--params", str(params), "--no-progress"]) == 0  # replaces
    assert tree(out) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["shapes"], "no temp folders left"


def test_prepare_failure_keeps_the_old_dataset_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "shapes"
    params = prepare_mod.load_params(write_params(tmp_path / "p.yaml", **PARAMS, out=str(out)))
    prepare_mod.prepare(params, progress=False)
    before = tree(out)

    def broken(root, **kwargs):
        (Path(root) / "images").mkdir()
        (Path(root) / "images" / "partial.png").write_bytes(b"x")
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(prepare_mod, "generate_shapes", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare(params, progress=False)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml", "shapes"]


def test_prepare_params_errors_name_the_file_and_key(tmp_path, capsys):
    bad = write_params(tmp_path / "a.yaml", **PARAMS, out="x", colour="red")
    with pytest.raises(prepare_mod.PrepareError, match=r"a\.yaml.*colour"):
        prepare_mod.load_params(bad)
    missing = write_params(tmp_path / "b.yaml", dataset="shapes", seed=0)
    with pytest.raises(prepare_mod.PrepareError, match=r"b\.yaml.*prepare\.num_train"):
        prepare_mod.load_params(missing)
    real = write_params(tmp_path / "c.yaml", **{**PARAMS, "dataset": "coco"}, out="x")
    with pytest.raises(prepare_mod.PrepareError, match="data.root"):
        prepare_mod.load_params(real)
    neg = write_params(tmp_path / "d.yaml", **{**PARAMS, "num_val": -3}, out=str(tmp_path / "o"))
    assert prepare_mod.main(["--params", str(neg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "d.yaml" in err and "num_val" in err
    assert not (tmp_path / "o").exists()

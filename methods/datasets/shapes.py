"""`shapes`, the embedded synthetic dataset, written in the readers' on-disk layout.

    <root>/images/<split>/<class_name>/<stem>.png      RGB scene, folder = image-level label
    <root>/annotations/instances_<split>.json          COCO instances, RLE segmentation
    <root>/semantic/<split>/<stem>.png                 uint8 category id per pixel, 0 background
    <root>/meta.json                                   generator, params, classes

COCO extras: ``images[i]["label"]`` (image-level class index = category id - 1),
``annotations[j]["visible_fraction"]`` (share of the object left visible by occluders) and a
top-level ``"classes"`` list. Everything is determined by the seed and the params.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from detlab.methods.datasets.scenes import CLASSES, render_scene, scene_rng

GENERATOR = "detlab.shapes"
GENERATOR_VERSION = 1  # bump whenever the drawing changes
SPLIT_KEYS = {"train": 0, "val": 1}


class ShapesError(ValueError):
    """Bad generator parameters or output folder."""


def categories() -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]


def _check(root: Path, seed, counts: dict[str, int], image_size, min_objects, max_objects):
    if not isinstance(seed, int) or seed < 0:
        raise ShapesError(f"shapes: seed must be a non-negative int, got {seed!r}")
    for split, n in counts.items():
        if not isinstance(n, int) or n < 0:
            raise ShapesError(f"shapes: num_{split} must be a non-negative int, got {n!r}")
    if not isinstance(image_size, int) or not 16 <= image_size <= 4096:
        raise ShapesError(f"shapes: image_size must be an int in [16, 4096], got {image_size!r}")
    if not isinstance(max_objects, int) or not 1 <= max_objects <= 255:
        raise ShapesError(f"shapes: max_objects must be an int in [1, 255], got {max_objects!r}")
    if not isinstance(min_objects, int) or not 1 <= min_objects <= max_objects:
        raise ShapesError(
            f"shapes: min_objects must be an int in [1, max_objects={max_objects}], "
            f"got {min_objects!r}"
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ShapesError(f"shapes: output folder {root} exists and is not empty")


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _annotations(scene, image_id: int, next_ann_id: int) -> list[dict]:
    n = len(scene.categories)
    ids = np.arange(1, n + 1, dtype=np.uint8)
    masks = (scene.instances[:, :, None] == ids[None, None, :]).astype(np.uint8)  # [H, W, N]
    rles = mask_utils.encode(np.asfortranarray(masks))
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    anns = []
    for j, rle in enumerate(rles):
        anns.append(
            {
                "id": next_ann_id + j,
                "image_id": image_id,
                "category_id": int(scene.categories[j]),
                "segmentation": {
                    "size": [int(s) for s in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(areas[j]),
                "bbox": [float(x) for x in boxes[j]],
                "iscrowd": 0,
                "visible_fraction": round(float(scene.visible_fraction[j]), 4),
            }
        )
    return anns


def _write_split(root, split, count, params, progress) -> dict:
    images, anns = [], []
    size = params["image_size"]
    bar = tqdm(range(count), desc=f"shapes {split}", unit="img", disable=not progress)
    for index in bar:
        scene = render_scene(
            scene_rng(params["seed"], SPLIT_KEYS[split], index),
            size,
            params["min_objects"],
            params["max_objects"],
            params.get("textures", "random"),
        )
        stem = f"{split}_{index:06d}"
        file_name = f"{CLASSES[scene.label]}/{stem}.png"
        _write_png(root / "images" / split / file_name, scene.image)
        _write_png(root / "semantic" / split / f"{stem}.png", scene.semantic)
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "height": size,
                "width": size,
                "label": scene.label,
            }
        )
        anns.extend(_annotations(scene, image_id, len(anns) + 1))
    coco = {
        "info": {
            "description": "detlab shapes",
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            "split": split,
            "params": params,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories(),
        "classes": list(CLASSES),
    }
    out = root / "annotations" / f"instances_{split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coco, separators=(",", ":")))
    labels = np.bincount([im["label"] for im in images], minlength=len(CLASSES))
    return {"images": count, "objects": len(anns), "label_counts": labels.tolist()}


def generate_shapes(
    root,
    *,
    seed: int,
    num_train: int,
    num_val: int,
    image_size: int,
    max_objects: int,
    min_objects: int = 1,
    textures: str = "random",
    progress: bool = False,
) -> Path:
    """Write the shapes dataset into ``root`` (absent or empty); return ``root``.

    Image ``index`` of ``split`` depends only on (seed, split, index, image_size,
    min_objects, max_objects, textures): two calls with the same arguments give identical
    files. ``textures="class"`` gives every class its own texture family (colours random).
    """
    if textures not in ("random", "class"):
        raise ShapesError(f"shapes: textures must be 'random' or 'class', got {textures!r}")
    root = Path(root)
    counts = {"train": num_train, "val": num_val}
    _check(root, seed, counts, image_size, min_objects, max_objects)
    params = {
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "min_objects": min_objects,
        "max_objects": max_objects,
    }
    if textures != "random":  # the key appears only when used: older datasets keep their hash
        params["textures"] = textures
    root.mkdir(parents=True, exist_ok=True)
    splits = {split: _write_split(root, split, n, params, progress) for split, n in counts.items()}
    meta = {
        "dataset": "shapes",
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "params": params,
        "classes": list(CLASSES),
        "categories": categories(),
        "num_seg_classes": len(CLASSES) + 1,
        "splits": splits,
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return root

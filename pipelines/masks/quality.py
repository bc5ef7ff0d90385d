"""The `mask_quality@<method>` stage: how well a mask set covers the ground-truth objects.

For every ground-truth instance: the best IoU over the image's masks (boxes: box IoU
against the instance's box); ``abo`` is their mean, ``recall50`` the share >= 0.5,
``masks_per_image`` the mean number of masks (or boxes). ``purity`` (masks only): the share
of pixels whose mask's majority ground-truth region (an object, or the background) is their
own, i.e. how rarely a mask straddles a boundary; splitting objects keeps it at 1 while ABO
falls, moving boundaries lowers both. Written to a metrics JSON, logged
to MLflow (experiment ``mask-quality``, one run per mask set) with a PNG grid of examples.

    python -m detlab.pipelines.masks.quality --masks data/masks/fh --data data/shapes \
        --out metrics/mask_quality/fh.json --plot reports/masks/fh.png

A dataset without annotations may name its ground-truth boxes as a box store of its own
(``--gt-boxes data/fashion_mnist_masks/object_box``: the object's box on a plain background).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detlab.methods.datasets.mask_store import MaskStore
from detlab.pipelines.masks.generators import gt_masks


def best_overlaps(masks: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """masks [H, W] ids, instances [N, H, W] bool -> [N] best IoU over the mask ids."""
    if len(instances) == 0:
        return np.zeros(0)
    ids, flat = np.unique(masks.reshape(-1), return_inverse=True)
    onehot = np.eye(len(ids), dtype=np.float64)[flat]  # [HW, K]
    gt = instances.reshape(len(instances), -1).astype(np.float64)  # [N, HW]
    inter = gt @ onehot  # [N, K]
    union = gt.sum(1, keepdims=True) + onehot.sum(0, keepdims=True) - inter
    return (inter / np.maximum(union, 1)).max(axis=1)


def purity(masks: np.ndarray, instances: np.ndarray) -> float:
    """masks [H, W] ids, instances [N, H, W] bool (later on top) -> the share of pixels
    lying in their mask's majority region (objects and the background as regions)."""
    regions = gt_masks(instances, *masks.shape).astype(np.int64)  # as the gt mask set draws them
    _, mask_ids = np.unique(masks.reshape(-1), return_inverse=True)
    counts = np.zeros((mask_ids.max() + 1, len(instances) + 1), np.int64)
    np.add.at(counts, (mask_ids, regions.reshape(-1)), 1)
    return float(counts.max(1).sum() / masks.size)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, 4] x [K, 4] xyxy -> [N, K]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def measure(store: MaskStore, dataset, progress: bool = False,
            gt: MaskStore | None = None) -> dict[str, float]:  # fmt: skip
    """``gt``: a box store read as the ground-truth boxes (else the dataset's annotations)."""
    if gt is not None and store.kind != "boxes":
        raise ValueError(f"{store.path}: ground-truth boxes measure box proposals, not masks")
    best, counts, pure = [], [], []
    for i in tqdm(range(len(dataset)), desc="mask quality", disable=not progress):
        if store.kind == "boxes":
            gt_boxes = gt.boxes(i) if gt is not None else dataset.boxes(i)[0]
            boxes = store.boxes(i)
            counts.append(len(boxes))
            if len(gt_boxes):
                best.append(box_iou(np.asarray(gt_boxes, np.float64), boxes).max(1)
                            if len(boxes) else np.zeros(len(gt_boxes)))  # fmt: skip
        else:
            masks = store.mask(i)
            instances, _ = dataset.instances(i)
            counts.append(len(np.unique(masks)))
            best.append(best_overlaps(masks, np.asarray(instances, bool)))
            pure.append(purity(masks, np.asarray(instances, bool)))
    scores = np.concatenate(best) if best else np.zeros(0)
    return {
        "abo": float(scores.mean()) if len(scores) else 0.0,
        "recall50": float((scores >= 0.5).mean()) if len(scores) else 0.0,
        "masks_per_image": float(np.mean(counts)) if counts else 0.0,
        **({"purity": float(np.mean(pure))} if pure else {}),
        "num_images": len(dataset),
        "num_objects": int(len(scores)),
    }


def plot_examples(store: MaskStore, dataset, path: Path, n: int = 6) -> Path:
    """Rows: image, masks (random colours) or boxes, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(dataset))
    fig, axes = plt.subplots(3, n, figsize=(1.8 * n, 5.4), squeeze=False)
    palette = np.random.default_rng(0).integers(0, 255, (256, 3), dtype=np.uint8)
    for j in range(n):
        image = dataset.load_image(j)
        axes[0, j].imshow(image)
        if store.kind == "boxes":
            axes[1, j].imshow(image)
            for x0, y0, x1, y1 in store.boxes(j).tolist():
                axes[1, j].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                                   color="yellow", lw=0.8))  # fmt: skip
        else:
            overlay = (0.45 * image + 0.55 * palette[store.mask(j)]).astype(np.uint8)
            axes[1, j].imshow(overlay)
        instances, _ = dataset.instances(j)
        gt = np.zeros(image.shape[:2], np.int64)
        for k, m in enumerate(instances):
            gt[np.asarray(m, bool)] = k + 1
        axes[2, j].imshow(palette[gt])
        for ax in axes[:, j]:
            ax.axis("off")
    for ax, title in zip(axes[:, 0], ("image", store.meta["generator"], "ground truth"),
                         strict=True):  # fmt: skip
        ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def log_to_mlflow(uri: str, store: MaskStore, metrics: dict, plot: Path | None) -> str:
    from detlab.platform.config import TrackingConfig
    from detlab.platform.tracking import create_run, end_run, log_artifact, log_metrics, log_params

    name = Path(store.path).name  # the mask set (several sets share a generator)
    rid = create_run(TrackingConfig(uri=uri, experiment="mask-quality", run_name=name),
                     tags={"detlab.masks_fingerprint": store.meta["fingerprint"],
                           "detlab.data_fingerprint": store.meta["dataset_fingerprint"]})  # fmt: skip
    log_params(uri, rid, {**store.meta["params"], "generator": name})
    log_metrics(uri, rid, metrics)
    if plot is not None:
        log_artifact(uri, rid, plot)
    end_run(uri, rid)
    return rid


def main(argv: list[str] | None = None) -> int:
    from detlab.methods.datasets import open_dataset

    p = argparse.ArgumentParser(description="Mask quality against ground truth (DVC stage).")
    p.add_argument("--masks", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--plot", default=None)
    p.add_argument("--gt-boxes", default=None,
                   help="a box store of the same images read as their ground-truth boxes")  # fmt: skip
    p.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    a = p.parse_args(argv)
    dataset = open_dataset(a.data, a.split)
    store = MaskStore.open(a.masks, dataset)
    gt = MaskStore.open(a.gt_boxes, dataset) if a.gt_boxes else None
    if gt is not None and gt.kind != "boxes":
        raise SystemExit(f"--gt-boxes {a.gt_boxes} holds {gt.kind}, not boxes")
    metrics = measure(store, dataset, progress=True, gt=gt)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1) + "\n")  # first: nothing computed is lost
    plot = plot_examples(store, dataset, Path(a.plot)) if a.plot else None
    try:
        rid = log_to_mlflow(a.tracking_uri, store, metrics, plot)
        print(f"{Path(a.masks).name}: {metrics} (MLflow run {rid})")
    except Exception as exc:  # the metrics file is written; tracking is best effort here
        print(f"{Path(a.masks).name}: {metrics} (MLflow logging failed: {exc})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Downstream evaluation protocols on a pretrained backbone.

``run_eval(eval_cfg, backbone, data_cfg, device)`` -> metrics prefixed by protocol
(``knn_top1``, ``linear_top1``, ``seg_miou``, ``det_ap_bb`` ...). The dataset is checked
for the labels a protocol needs before any compute.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROTOCOLS = ("knn", "linear", "finetune", "seg", "det")
NEEDS = {"knn": "has_labels", "linear": "has_labels", "finetune": "has_labels",
         "seg": "has_semantic", "det": "has_instances"}  # fmt: skip
WHAT = {"has_labels": "image-level labels", "has_semantic": "semantic masks",
        "has_instances": "instance annotations"}  # fmt: skip


# the settings each protocol reads (besides resolution, batch_size and max_images)
SETTINGS = {
    "knn": ("k", "knn_temperature"),
    "linear": ("epochs", "lr", "weight_decay"),
    "finetune": ("epochs", "lr", "weight_decay"),
    "seg": ("head", "finetune", "balanced", "epochs", "weight_decay"),
    "det": ("steps", "lr"),
}


def eval_params(eval_cfg) -> dict[str, object]:
    """``eval.<protocol>.<key>`` -> value for the settings that protocol actually used, for
    the MLflow run it is logged to (not the unused defaults of the other protocols)."""
    name = eval_cfg.name
    keys = ["resolution", "batch_size", "max_images", *SETTINGS[name]]
    if name == "seg" and (eval_cfg.head != "linear" or eval_cfg.finetune):
        keys.append("lr")  # the frozen linear head is fitted by L-BFGS: no learning rate
    elif name == "seg":
        keys.append("max_pixels")
    return {f"eval.{name}.{k}": eval_cfg[k] for k in keys}


class EvalError(ValueError):
    """The protocol cannot run on this dataset / checkpoint (names what is missing)."""


def open_splits(protocol: str, data, max_images: int | None):
    from detlab.methods.datasets import open_dataset

    limit = max_images if data.max_images is None else data.max_images
    splits = [
        open_dataset(data.root, split, format=data.format, max_images=limit)
        for split in (data.train_split, data.val_split)
    ]
    need = NEEDS[protocol]
    for images in splits:
        if not getattr(images, need):
            raise EvalError(
                f"eval={protocol} needs {WHAT[need]}, but {images.root} ({images.format}, "
                f"split {images.split}) has none"
            )
    from detlab.methods.datasets.checks import verify_decodes

    for images in splits:  # a corrupt image is named before any feature is computed
        verify_decodes(images)
    return splits


def run_eval(eval_cfg, backbone, data_cfg, device, out_dir: Path | None = None,
             progress: bool = False) -> dict[str, float]:  # fmt: skip
    """Run protocol ``eval_cfg.name``; visualisations go to ``out_dir`` when given."""
    protocol = eval_cfg.name
    if protocol not in PROTOCOLS:
        raise EvalError(f"eval.name={protocol!r} is not one of {PROTOCOLS}")
    if eval_cfg.resolution is None:
        raise EvalError("eval.resolution is unset: give the probe resolution in px")
    train_images, val_images = open_splits(protocol, data_cfg, eval_cfg.max_images)
    backbone = backbone.to(device)
    if protocol in ("knn", "linear"):
        from detlab.methods.data import EvalDataset
        from detlab.methods.eval.features import extract_features

        loaders = [
            torch.utils.data.DataLoader(
                EvalDataset(images, eval_cfg.resolution), batch_size=eval_cfg.batch_size
            )
            for images in (train_images, val_images)
        ]
        (ftr, ltr), (fva, lva) = (
            extract_features(backbone, ld, device, progress) for ld in loaders
        )
        num_classes = len(train_images.classes)
        if protocol == "knn":
            from detlab.methods.eval.knn import knn_classify

            res = knn_classify(
                ftr, ltr, fva, lva, eval_cfg.k, eval_cfg.knn_temperature, num_classes
            )
        else:
            from detlab.methods.eval.linear import linear_probe

            res = linear_probe(ftr, ltr, fva, lva, num_classes, eval_cfg.epochs, eval_cfg.lr,
                               eval_cfg.weight_decay)  # fmt: skip
    elif protocol == "finetune":
        from detlab.methods.data import EvalDataset
        from detlab.methods.eval.finetune import finetune_classify

        train_loader, val_loader = (
            torch.utils.data.DataLoader(EvalDataset(images, eval_cfg.resolution),
                                        batch_size=eval_cfg.batch_size, shuffle=shuffle,
                                        generator=torch.Generator().manual_seed(0))
            for images, shuffle in ((train_images, True), (val_images, False))
        )  # fmt: skip
        res = finetune_classify(backbone, train_loader, val_loader, len(train_images.classes),
                                eval_cfg, device, progress)  # fmt: skip
    elif protocol == "seg":
        from detlab.methods.eval.seg import seg_probe

        res = seg_probe(backbone, train_images, val_images, eval_cfg, device, progress)
    else:
        from detlab.methods.eval.det import det_finetune

        res = det_finetune(backbone, train_images, val_images, eval_cfg, device, progress)
    vis = res.pop("_vis", None)
    if out_dir is not None and vis is not None:
        from detlab.methods.eval.visualise import save_visualisation

        save_visualisation(protocol, vis, Path(out_dir))
    return {f"{protocol}_{k}": float(v) for k, v in res.items()}

"""A study's reference rows: the study backbone randomly initialised (``random``, what
pretraining must beat) and trained on the segmentation labels with a pretraining cell's
budget (``supervised``, an upper bound at this budget), probed like every cell and logged to
each study's MLflow experiment (tag ``detlab.role=reference``).

    python -m detlab.pipelines.study reference --kind random --seed 0
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from detlab.methods.backbones import build_backbone
from detlab.methods.datasets import open_dataset
from detlab.methods.eval.supervised import train_supervised
from detlab.pipelines.study_cells import (
    DEFAULT_STUDIES,
    cell_key,
    inputs_fingerprint,
    log_probes,
    parent_run,
    probe,
    probe_resolution,
    write_record,
)
from detlab.pipelines.study_views import axis_params
from detlab.platform.compose import compose
from detlab.platform.config import TrackingConfig
from detlab.platform.states import RunStatus
from detlab.platform.tracking import RunLogger
from detlab.platform.train import seed_everything

REFERENCES = ("random", "supervised")


def reference_overrides(params: dict, seed: int, kind: str = "random") -> list[str]:
    """The composed overrides of a reference: the studies' common ones, then the supervised
    reference's own budget where a study sets one (``supervised_steps``: the table's largest
    pretraining budget, so the row bounds every pretrained row from above)."""
    st = params["studies"]
    refs = st.get("references", {}) or {}
    resolution = refs.get("resolution") or st["mask_quality"]["resolution"]
    steps = refs.get("supervised_steps") if kind == "supervised" else None
    return [
        *st["common"],
        *refs.get("overrides", []),
        *([f"train.steps={int(steps)}"] if steps else []),
        f"data.root={params['prepare']['out']}",
        f"train.seed={seed}",
        f"aug.resolution={resolution}",
    ]


def reference_key(params: dict, kind: str, seed: int, inputs: str | None = None) -> str:
    overrides = [f"reference={kind}", *reference_overrides(params, seed, kind)]
    return cell_key(overrides, inputs or inputs_fingerprint(params, None))


def run_reference(
    params: dict,
    kind: str,
    seed: int,
    metrics_root: Path,
    key: str | None = None,
    studies: tuple[str, ...] = DEFAULT_STUDIES,
) -> dict:
    """A reference row: the study backbone randomly initialised (``random``) or trained on
    the segmentation labels with a pretraining cell's budget (``supervised``), probed like
    every cell and logged to the MLflow experiment of each of ``studies``."""
    if kind not in REFERENCES:
        raise ValueError(f"reference kind {kind!r} is not one of {REFERENCES}")
    st = params["studies"]
    overrides = reference_overrides(params, seed, kind)
    key = key or reference_key(params, kind, seed)
    cfg = compose(overrides)
    seed_everything(seed, cfg.train.deterministic, cfg.train.threads)
    backbone = build_backbone(cfg.backbone)
    t0 = time.time()
    if kind == "supervised":
        ref = st.get("references", {}) or {}
        images = open_dataset(cfg.data.root, cfg.data.train_split, format=cfg.data.format)
        backbone = train_supervised(
            backbone,
            images,
            resolution=cfg.aug.resolution,
            steps=cfg.train.steps,
            batch_size=cfg.train.batch_size,
            crop_scale=tuple(cfg.aug.crop_scale),
            lr=float(ref.get("supervised_lr", 2e-3)),
            seed=seed,
        )
    t1 = time.time()
    pictures = Path(tempfile.mkdtemp(prefix="detlab-reference-"))
    probed = probe(backbone, cfg, overrides, st["evals"], probe_resolution(params), pictures)
    name = f"{kind}-s{seed}"
    tracking_uri = st.get("tracking_uri", "sqlite:///mlflow.db")
    run_ids = {}
    for study in studies:
        tracking = TrackingConfig(uri=tracking_uri, experiment=f"study-{study}")
        logger = RunLogger(
            TrackingConfig(
                uri=tracking_uri,
                experiment=tracking.experiment,
                run_name=f"reference: {name}",
                parent_run_id=parent_run(tracking, study),
                tags={"detlab.study": study, "detlab.role": "reference", "detlab.cell": name},
            )
        )
        logger.log_params(axis_params(kind, "-", cfg.aug.resolution, seed)
                          | {"reference": kind, "backbone": cfg.backbone.name,
                             "steps": cfg.train.steps})  # fmt: skip
        log_probes(logger, probed, pictures)
        logger.finish(RunStatus.FINISHED)
        run_ids[study] = logger.run_id
    shutil.rmtree(pictures, ignore_errors=True)
    record = {
        "study": "references",
        "kind": kind,
        "cell": name,
        "mask": None,
        "seed": seed,
        "resolution": int(cfg.aug.resolution),
        "probe_resolution": probe_resolution(params),
        "metrics": probed["metrics"],
        "chance": probed["chance"],
        "classes": probed["classes"],
        "key": key,
        "mlflow_run_ids": run_ids,
        "train_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.time() - t1, 1),
        "overrides": overrides,
    }
    return write_record(record, metrics_root / "references" / f"{name}.json")

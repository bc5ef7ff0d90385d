"""Study cells: pretrain through the platform, probe, record; and the DVC stage running them.

    python -m detlab.pipelines.study run [--jobs N]        # every cell (the `studies` stage)
    python -m detlab.pipelines.study run --studies methods --metrics metrics/ablations/methods \
        --reuse metrics/studies                           # a named stage (ablations/dvc.yaml)
    python -m detlab.pipelines.study mask_quality --mask fh --seed 0
    python -m detlab.pipelines.study resolution --mask gt --resolution 32 --seed 0
    python -m detlab.pipelines.study reference --kind random --seed 0

A cell's settings come from ``params.yaml`` (key ``studies``): overrides shared by every
cell, the study's own, and the cell's (``studies.<study>.cells.<mask>``). Pretraining runs
where ``studies.cluster`` says (local in-process by default; ``slurm`` submits and waits).
The cell's key hashes its overrides, the training code and its inputs' fingerprints: the
checkpoint folder is named by it, so a killed cell resumes from its last checkpoint while a
changed one starts afresh, and ``run`` (pipelines/study_runner.py) skips cells whose record
already holds their key. Output: ``metrics/studies/<study>/<cell>.json``.

Every cell is probed the same way at ``studies.probe_resolution`` (so the resolution study
varies the pretraining resolution only). The references that give the probes a scale
(random init, supervised) are in pipelines/study_reference.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import yaml

from detlab.pipelines.study_cells import cell_name, cell_overrides, cell_row
from detlab.pipelines.study_views import axis_params
from detlab.platform.compose import compose
from detlab.platform.config import TrackingConfig
from detlab.platform.run import pretrain
from detlab.platform.tracking import RunLogger, create_run

DEFAULT_STUDIES = ("mask_quality", "resolution")  # the `studies` stage (default `dvc repro`)
ABLATIONS = ("mask_count", "soco_proposals", "methods")  # named stages: ablations/dvc.yaml
STUDIES = DEFAULT_STUDIES + ABLATIONS
HEALTH = ("loss", "rep_std", "knn_top1")  # last logged values of the pretraining run


def code_fingerprint() -> str:
    """Hash of the training code (detlab.methods, detlab.platform): a cell rerun by DVC
    because the code changed trains afresh, a killed cell with the same code resumes."""
    import importlib

    h = hashlib.sha256()
    for name in ("detlab.methods", "detlab.platform"):
        for root in importlib.import_module(name).__path__:
            for f in sorted(Path(root).rglob("*.py")):
                h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def dataset_fingerprint(params: dict) -> str:
    """The study dataset's train and val fingerprints (each stats every image: compute it
    once per run of many cells and pass it on)."""
    from detlab.methods.datasets import open_dataset

    root = params["prepare"]["out"]
    return "\n".join(open_dataset(root, split).fingerprint for split in ("train", "val"))


def inputs_fingerprint(params: dict, mask: str | None, dataset: str | None = None) -> str:
    """Content fingerprint of what a cell reads: the dataset's splits (``dataset``, else
    computed) and its mask set (the store's meta.json records the shards' hash), so new masks
    or data retrain the cell."""
    parts = [dataset or dataset_fingerprint(params)]
    if mask and mask != "global":
        meta = Path(params["masks"]["out"]) / mask / "meta.json"
        parts.append(json.loads(meta.read_text())["fingerprint"] if meta.exists() else "absent")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cell_key(overrides: list[str], inputs: str) -> str:
    """The identity of a cell's result: its overrides, the training code and its inputs."""
    text = "\n".join([*overrides, code_fingerprint(), inputs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def study_cell_key(params: dict, study: str, mask: str, seed: int, resolution: int,
                   inputs: str | None = None) -> str:  # fmt: skip
    """A study cell's key; ``inputs``: its inputs_fingerprint when already known."""
    overrides = cell_overrides(params, study, mask, seed, resolution)
    return cell_key(
        overrides, inputs or inputs_fingerprint(params, cell_row(params, study, mask)[1])
    )


def probe_resolution(params: dict) -> int:
    st = params["studies"]
    return int(st.get("probe_resolution") or st["mask_quality"]["resolution"])


def parent_run(tracking: TrackingConfig, study: str) -> str:
    """One MLflow parent run per study, found by tag or created once."""
    from detlab.platform.tracking import experiment_id, search_runs

    exp = experiment_id(tracking.uri, tracking.experiment)
    found = search_runs(
        tracking.uri, [exp], f"tags.`detlab.study` = '{study}' and tags.`detlab.role` = 'parent'"
    )
    if found:
        return found[0].run_id
    cfg = TrackingConfig(
        uri=tracking.uri, experiment=tracking.experiment, run_name=f"study: {study}"
    )
    return create_run(cfg, tags={"detlab.study": study, "detlab.role": "parent"})


def end_stale_runs(tracking: TrackingConfig, st: dict) -> None:
    """Runs of the study left RUNNING by a cell whose process or SLURM job died end
    KILLED/FAILED with the reason (a rerun of that cell reopens its own run)."""
    from detlab.platform.launch import reconcile

    cluster = compose([f"cluster={st.get('cluster', 'local')}"]).cluster
    reconcile(tracking.uri, cluster, [tracking.experiment])


def probe(model, cfg, overrides: list[str], evals: list[str], resolution: int,
          pictures: Path | None = None) -> dict:  # fmt: skip
    """Run the study's probes on ``model`` (a checkpoint path, or a backbone in hand) at
    ``resolution``: flat metrics, the settings each probe used (``eval.<name>.<key>``),
    chance levels and class names; prediction pictures go to ``pictures/<name>/`` when
    given. ``cfg``: the cell's composed ``overrides`` (device, data)."""
    from detlab.methods.eval import eval_params
    from detlab.platform.checkpoint import load_backbone
    from detlab.platform.run import evaluate

    if isinstance(model, str):
        model = load_backbone(model, cfg.backbone)  # loaded once for every probe
    metrics: dict[str, float] = {}
    settings: dict[str, object] = {}
    for name in evals:
        ecfg = compose([*overrides, f"eval={name}", f"eval.resolution={resolution}"])
        settings |= eval_params(ecfg.eval)
        out = None if pictures is None else pictures / name
        found = evaluate(ecfg.eval, ecfg.data, cfg.backbone, model, device=cfg.train.device,
                         out_dir=out)  # fmt: skip
        metrics.update({k: float(v) for k, v in found.items()})
    from detlab.methods.datasets import open_dataset

    classes = list(
        open_dataset(cfg.data.root, cfg.data.train_split, format=cfg.data.format).classes
    )
    chance = {"linear_top1": 1 / len(classes)}
    return {"metrics": metrics, "params": settings, "chance": chance, "classes": classes}


def log_probes(logger: RunLogger, probed: dict, pictures: Path | None) -> None:
    """The probes' metrics, settings and prediction pictures, into one MLflow run. Metrics
    at step 0: MLflow's chart view then draws each as bars, one per run (a metric logged at
    a step >= 1 in any run gets a line chart over steps, where one value is a lone dot); the
    checkpoint probed is the run's last (param train.steps)."""
    logger.log_metrics(probed["metrics"], step=0)
    logger.log_params(probed["params"])
    for png in sorted(pictures.glob("*/*.png")) if pictures else []:
        logger.log_artifact(png, f"eval/{png.parent.name}")


def health(tracking_uri: str, run_id: str) -> dict[str, float]:
    """Learning health of a pretraining run: its last loss, collapse monitor and kNN."""
    from detlab.platform.tracking import get_run

    logged = get_run(tracking_uri, run_id).metrics
    return {("final_loss" if k == "loss" else k): float(logged[k]) for k in HEALTH if k in logged}


def run_cell(
    params: dict,
    study: str,
    mask: str,
    seed: int,
    resolution: int | None,
    metrics_root: Path,
    outputs_root: Path,
    key: str | None = None,
) -> dict:
    """``key``: the runner's (computed once, before any cell ran), else computed here."""
    st = params["studies"]
    resolution = int(resolution or st[study].get("resolution") or probe_resolution(params))
    name = cell_name(study, mask, seed, resolution)
    overrides = cell_overrides(params, study, mask, seed, resolution)
    key = key or study_cell_key(params, study, mask, seed, resolution)
    tracking_uri = st.get("tracking_uri", "sqlite:///mlflow.db")
    tracking = TrackingConfig(uri=tracking_uri, experiment=f"study-{study}")
    parent = parent_run(tracking, study)
    end_stale_runs(tracking, st)
    overrides += [
        f"train.out_dir={outputs_root}/{study}/{name}-{key[:8]}",
        f"tracking.uri={tracking_uri}",
        f"tracking.experiment=study-{study}",
        f"tracking.parent_run_id={parent}",
        f"tracking.run_name={name}",
        f"cluster={st.get('cluster', 'local')}",  # where: in this process, or a SLURM job
    ]
    cfg = compose(overrides)  # validates every key before any compute
    t0 = time.time()
    result = pretrain(cfg)  # the platform facade: here or a SLURM job
    run_id = result.run_id
    t1 = time.time()
    pictures = Path(cfg.train.out_dir) / "eval"
    probed = probe(result.checkpoint, cfg, overrides, st["evals"], probe_resolution(params),
                   pictures)  # fmt: skip
    metrics = {**probed["metrics"], **health(tracking_uri, run_id)}
    logger = RunLogger(
        TrackingConfig(uri=tracking_uri, experiment=tracking.experiment, run_id=run_id),
        owner=True,
    )
    log_probes(logger, probed, pictures)
    logger.log_params(axis_params(mask, cfg.method.name, resolution, seed))
    logger.finish("FINISHED")
    mask_set = cell_row(params, study, mask)[1]
    quality_file = Path(params.get("quality_dir", "metrics/mask_quality")) / f"{mask_set}.json"
    quality = json.loads(quality_file.read_text()) if quality_file.exists() else {}
    from detlab.platform.tracking import log_metrics, set_tags

    # the cell's row in the study: tags + mask quality
    set_tags(
        tracking_uri, run_id, {"detlab.study": study, "detlab.cell": name, "detlab.role": "cell"}
    )
    mask_quality = {
        f"mask_{q}": quality[q]
        for q in ("abo", "recall50", "purity", "masks_per_image")
        if quality.get(q) is not None
    }
    log_metrics(tracking_uri, run_id, mask_quality)
    record = {
        "study": study,
        "cell": name,
        "mask": mask,
        "seed": seed,
        "resolution": resolution,
        "probe_resolution": probe_resolution(params),
        "method": cfg.method.name,
        "masks": mask_set,
        "abo": quality.get("abo"),
        "recall50": quality.get("recall50"),
        "purity": quality.get("purity"),
        "masks_per_image": quality.get("masks_per_image"),
        "metrics": metrics,
        "chance": probed["chance"],
        "classes": probed["classes"],
        "key": key,
        "mlflow_run_id": run_id,
        "mlflow_parent_run_id": parent,
        "pretrain_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.time() - t1, 1),
        "overrides": overrides,
    }
    return write_record(record, metrics_root / study / f"{name}.json")


def write_record(record: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    from detlab.pipelines.study_reference import REFERENCES

    p = argparse.ArgumentParser(
        description="Run every study cell (`run`, the DVC stage) or one cell or reference."
    )
    p.add_argument("study", choices=["run", *STUDIES, "reference"])
    p.add_argument("--jobs", type=int, default=None, help="run: cells at a time (studies.jobs)")
    p.add_argument(
        "--studies",
        nargs="+",
        choices=STUDIES,
        default=list(DEFAULT_STUDIES),
        help="run: the studies of this stage (default: the `studies` stage's)",
    )
    p.add_argument("--reuse", nargs="*", type=Path, default=[],
                   help="run: metrics folders of other stages whose records of the same key "
                   "are copied instead of retrained")  # fmt: skip
    p.add_argument("--mask", help="mask source (studies)")
    p.add_argument("--kind", choices=REFERENCES, help="reference kind (reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", default="metrics/studies")
    p.add_argument("--outputs", default="outputs/studies")
    args = p.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text())
    if args.study == "run":
        from detlab.pipelines.study_runner import StudyFailure, run_studies
        from detlab.platform.lifecycle import end_with_dvc

        end_with_dvc("studies")  # `kill -9 dvc repro` ends this stage (and so its workers)

        try:
            run_studies(params, Path(args.metrics), Path(args.outputs), args.jobs,
                        studies=tuple(args.studies), reuse=args.reuse)  # fmt: skip
        except StudyFailure as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.study == "reference":
        if not args.kind:
            p.error("reference needs --kind random|supervised")
        from detlab.pipelines.study_reference import run_reference

        rec = run_reference(params, args.kind, args.seed, Path(args.metrics))
        print(json.dumps({k: rec[k] for k in ("cell", "metrics", "train_seconds")}))
        return 0
    if not args.mask:
        p.error(f"{args.study} needs --mask")
    rec = run_cell(
        params,
        args.study,
        args.mask,
        args.seed,
        args.resolution,
        Path(args.metrics),
        Path(args.outputs),
    )
    print(json.dumps({k: rec[k] for k in ("cell", "abo", "metrics", "pretrain_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

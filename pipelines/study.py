"""DVC stage program for one study cell: pretrain through the platform, evaluate, record.

    python -m detlab.pipelines.study mask_quality --mask fh --seed 0
    python -m detlab.pipelines.study resolution --mask gt --resolution 64 --seed 0

The cell's settings come from ``params.yaml`` (key ``studies``): overrides shared by every
cell, the study's own, and the cell's (``studies.<study>.cells.<mask>``), so changing one
mask source's overrides reruns only its cells. Pretraining runs where ``studies.cluster``
says (local in-process by default; ``slurm`` submits and waits). The checkpoint folder is
keyed by a hash of the cell's overrides and the training code, so a failed or killed cell resumes from its last
checkpoint, while a changed cell (or changed training code) starts afresh. Output: ``metrics/studies/<study>/<cell>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import yaml

from detlab.platform.compose import compose
from detlab.platform.config import TrackingConfig
from detlab.platform.tracking import RunLogger, create_run

BASELINE = {"global": "method=byol"}  # the global-mask cell is the image-level baseline


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


def cell_name(study: str, mask: str, seed: int, resolution: int | None) -> str:
    return f"{mask}-s{seed}" if study == "mask_quality" else f"{mask}-r{resolution}-s{seed}"


def cell_overrides(params: dict, study: str, mask: str, seed: int, resolution: int) -> list[str]:
    st = params["studies"]
    spec = st[study]
    mask_path = [] if mask == "global" else [f"masks.path={params['masks']['out']}/{mask}"]
    return [
        *st["common"],
        *spec.get("overrides", []),
        BASELINE.get(mask, f"method={st.get('method', 'detcon_b')}"),
        f"masks={mask}",
        *mask_path,
        f"data.root={params['prepare']['out']}",
        f"train.seed={seed}",
        f"aug.resolution={resolution}",
        *(spec.get("cells", {}) or {}).get(mask, []),
    ]


def parent_run(tracking: TrackingConfig, study: str) -> str:
    """One MLflow parent run per study, found by tag or created once."""
    from mlflow.tracking import MlflowClient

    from detlab.platform.tracking import experiment_id

    client = MlflowClient(tracking.uri)
    exp = experiment_id(client, tracking.experiment)
    found = client.search_runs(
        [exp], f"tags.`detlab.study` = '{study}' and tags.`detlab.role` = 'parent'"
    )
    if found:
        return found[0].info.run_id
    cfg = TrackingConfig(
        uri=tracking.uri, experiment=tracking.experiment, run_name=f"study: {study}"
    )
    return create_run(cfg, tags={"detlab.study": study, "detlab.role": "parent"})


def pretrain(cfg, cluster: str):
    """Run the cell's pretraining where the params say; return the MLflow run id."""
    if cluster == "local":
        from detlab.platform.train import train

        return train(cfg).run_id
    from detlab.platform.launch import submit_and_wait

    return submit_and_wait(cfg)


def evaluate(cfg, evals: list[str], overrides: list[str], run_id: str) -> dict[str, float]:
    from detlab.methods.eval import run_eval
    from detlab.platform.checkpoint import load_backbone
    from detlab.platform.distributed import resolve_device

    device = resolve_device(cfg.train.device)
    backbone = load_backbone(str(Path(cfg.train.out_dir) / "checkpoint.pt"), cfg.backbone).to(
        device
    )
    metrics: dict[str, float] = {}
    for name in evals:
        ecfg = compose([*overrides, f"eval={name}", f"eval.resolution={cfg.aug.resolution}"])
        res = run_eval(ecfg.eval, backbone, ecfg.data, device)
        metrics.update(
            {
                f"{name}_{k}" if not k.startswith(name) else k: float(v)
                for k, v in res.items()
                if isinstance(v, int | float)
            }
        )
    logger = RunLogger(
        TrackingConfig(uri=cfg.tracking.uri, experiment=cfg.tracking.experiment, run_id=run_id)
    )
    logger.log_metrics(metrics, step=cfg.train.steps)
    logger.finish("FINISHED")
    return metrics


def run_cell(
    params: dict,
    study: str,
    mask: str,
    seed: int,
    resolution: int | None,
    metrics_root: Path,
    outputs_root: Path,
) -> dict:
    st = params["studies"]
    resolution = int(resolution or st[study]["resolution"])
    name = cell_name(study, mask, seed, resolution)
    overrides = cell_overrides(params, study, mask, seed, resolution)
    key = hashlib.sha256("\n".join([*overrides, code_fingerprint()]).encode()).hexdigest()[:8]
    tracking_uri = st.get("tracking_uri", "sqlite:///mlflow.db")
    tracking = TrackingConfig(uri=tracking_uri, experiment=f"study-{study}")
    parent = parent_run(tracking, study)
    overrides += [
        f"train.out_dir={outputs_root}/{study}/{name}-{key}",
        f"tracking.uri={tracking_uri}",
        f"tracking.experiment=study-{study}",
        f"tracking.parent_run_id={parent}",
        f"tracking.run_name={name}",
    ]
    cfg = compose(overrides)  # validates every key before any compute
    t0 = time.time()
    run_id = pretrain(cfg, st.get("cluster", "local"))
    t1 = time.time()
    metrics = evaluate(cfg, st["evals"], overrides, run_id)
    quality_file = Path(params.get("quality_dir", "metrics/mask_quality")) / f"{mask}.json"
    quality = json.loads(quality_file.read_text()) if quality_file.exists() else {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)  # the cell's row in the study: tags + mask quality
    client.set_tag(run_id, "detlab.study", study)
    client.set_tag(run_id, "detlab.cell", name)
    for key in ("abo", "recall50"):
        if quality.get(key) is not None:
            client.log_metric(run_id, f"mask_{key}", float(quality[key]))
    record = {
        "study": study,
        "cell": name,
        "mask": mask,
        "seed": seed,
        "resolution": resolution,
        "method": cfg.method.name,
        "abo": quality.get("abo"),
        "recall50": quality.get("recall50"),
        "metrics": metrics,
        "mlflow_run_id": run_id,
        "mlflow_parent_run_id": parent,
        "pretrain_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.time() - t1, 1),
        "overrides": overrides,
    }
    out = metrics_root / study / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run one study cell (a DVC stage).")
    p.add_argument("study", choices=["mask_quality", "resolution"])
    p.add_argument("--mask", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", default="metrics/studies")
    p.add_argument("--outputs", default="outputs/studies")
    args = p.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text())
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

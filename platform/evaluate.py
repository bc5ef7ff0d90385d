"""`detlab eval eval=<protocol> checkpoint=<path | MLflow run id>`: evaluate a pretrained
backbone and log the results into the pretraining run (one MLflow row per model)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def logged_run(run_id: str | None, tracking_uri: str) -> str | None:
    """The checkpoint's MLflow run when this store holds it; else None, with a warning (the
    results are then printed only: a checkpoint copied from elsewhere still evaluates)."""
    if not run_id:
        return None
    from detlab.platform.tracking import TrackingError, get_run

    try:
        get_run(tracking_uri, run_id)
        return run_id
    except TrackingError:
        print(
            f"detlab eval: warning: the checkpoint's MLflow run {run_id} is not in "
            f"tracking.uri={tracking_uri}; results are printed, not logged (set tracking.uri "
            "to the store the run was logged to)",
            file=sys.stderr,
        )
        return None


def eval_command(cfg: DictConfig) -> int:
    from detlab.methods.datasets import DatasetError
    from detlab.methods.eval import EvalError
    from detlab.platform.checkpoint import CheckpointError, check_backbone, resolve
    from detlab.platform.run import evaluate, pretraining_resolution

    if not cfg.checkpoint:
        print("detlab eval: set checkpoint=<path or MLflow run id>", file=sys.stderr)
        return 2
    try:  # everything checked before any compute
        state = resolve(cfg.checkpoint, cfg.tracking.uri)
        if state.get("imported"):  # imported weights say what backbone they are
            cfg.backbone = OmegaConf.merge(cfg.backbone, state["backbone_cfg"])
        check_backbone(state, cfg.backbone)
        run_id = logged_run(state.get("run_id"), cfg.tracking.uri)
        from detlab.methods.eval import open_splits

        open_splits(cfg.eval.name, cfg.data, cfg.eval.max_images)
        if cfg.eval.resolution is None:  # default: probe at the pretraining resolution
            cfg.eval.resolution = pretraining_resolution(state)
        out_dir = Path(state["path"]).parent / "eval" / cfg.eval.name
        t0 = time.time()
        metrics = evaluate(cfg.eval, cfg.data, cfg.backbone, state, device=cfg.train.device,
                           out_dir=out_dir, progress=True)  # fmt: skip
    except (CheckpointError, EvalError, DatasetError, FloatingPointError) as exc:
        print(f"detlab eval: {exc}", file=sys.stderr)
        return 2
    seconds = time.time() - t0
    print(
        f"\n{cfg.eval.name} on {cfg.data.root} at {cfg.eval.resolution} px "
        f"({state.get('method_name')}, step {state.get('step')})"
    )
    for key, value in metrics.items():
        print(f"  {key:<24} {value:.4f}")
    if run_id:
        from detlab.methods.eval import eval_params
        from detlab.platform import tracking

        uri = cfg.tracking.uri
        tracking.log_metrics(uri, run_id, metrics, step=int(state.get("step") or 0))
        # params are write-once in MLflow: a repeated eval keeps its first settings there
        tracking.log_params(uri, run_id, eval_params(cfg.eval))
        tracking.set_tags(uri, run_id, {f"detlab.eval.{cfg.eval.name}": f"{seconds:.1f}s"})
        for path in sorted(out_dir.glob("*.png")):
            tracking.log_artifact(uri, run_id, path, f"eval/{cfg.eval.name}")
        print(f"logged to MLflow run {run_id} ({cfg.tracking.uri})")
    return 0

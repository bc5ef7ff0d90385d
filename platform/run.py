"""One way to run and evaluate a config: the CLI, sweep workers and DVC stages all call
these two functions, so where a run executes and how a checkpoint is evaluated are decided
in one place.

- ``pretrain(cfg)``: train ``cfg`` where ``cfg.cluster`` says (in this process; a local
  submitit job; a SLURM job, submitted and followed through its requeues) and return its
  ``TrainResult``. ``here=True`` runs in this process whatever the cluster group says: the
  caller is itself the job (a sweep worker).
- ``evaluate(...)``: the pretrained backbone of a checkpoint (path, MLflow run id or an
  already resolved state), checked against the backbone config, through one evaluation
  protocol; probes at the checkpoint's pretraining resolution unless told otherwise. A
  backbone in hand (a study's random-init or supervised reference) is evaluated as is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from detlab.methods.eval import run_eval
from detlab.platform.checkpoint import load_backbone, resolve
from detlab.platform.distributed import resolve_device
from detlab.platform.job import StopFlag
from detlab.platform.launch import local_executor, submit, wait
from detlab.platform.states import TrainStatus
from detlab.platform.tracking import get_run
from detlab.platform.train import TrainResult, resolve_out_dir, train


def pretraining_resolution(state: dict, default: int = 224) -> int:
    """aug.resolution of the checkpoint's run (``default`` for checkpoints without config)."""
    import yaml

    config = yaml.safe_load(state.get("config") or "") or {}
    return int((config.get("aug") or {}).get("resolution") or default)


def _train_in_job(cfg: DictConfig) -> TrainResult:
    """A local submitit job's process: SIGTERM / SIGUSR2 stop the run at a step boundary
    with a checkpoint, as on SLURM."""
    return train(cfg, stop_requested=StopFlag().install())


def pretrain(
    cfg: DictConfig,
    *,
    here: bool = False,
    on_metrics: Callable[[int, dict[str, float]], str | None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``cfg`` to its end (or a stop) where ``cfg.cluster`` says; see the module doc.
    ``on_metrics`` and ``stop_requested`` reach train() and so need this process."""
    cfg = resolve_out_dir(cfg)  # fixed now: a job or a requeue writes where we look
    if here or (cfg.cluster.name != "slurm" and cfg.cluster.executor != "submitit"):
        return train(cfg, on_metrics=on_metrics, stop_requested=stop_requested)
    if on_metrics is not None or stop_requested is not None:
        raise ValueError("on_metrics / stop_requested need the run in this process (here=True)")
    if cfg.cluster.name != "slurm":  # a local submitit job: its own process and log
        return local_executor(cfg.cluster).submit(_train_in_job, cfg).result()
    job, run_id = submit(cfg)
    wait(job, run_id, cfg)  # through requeues; an error naming the log unless COMPLETED
    return TrainResult(
        status=TrainStatus.COMPLETED,
        step=int(cfg.train.steps),
        run_id=run_id,
        metrics=dict(get_run(cfg.tracking.uri, run_id).metrics),
        checkpoint=str(Path(cfg.train.out_dir).resolve() / "checkpoint.pt"),
    )


def evaluate(
    eval_cfg: DictConfig,
    data_cfg: DictConfig,
    backbone_cfg: DictConfig,
    model: str | dict | nn.Module,
    *,
    tracking_uri: str | None = None,
    device: str = "auto",
    out_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Protocol ``eval_cfg.name`` on ``model`` (a checkpoint path or MLflow run id, a
    resolved checkpoint state, or a backbone module); pictures go to ``out_dir``."""
    if isinstance(model, nn.Module):
        backbone = model
    else:
        state = model if isinstance(model, dict) else resolve(model, tracking_uri)
        backbone = load_backbone(state, backbone_cfg)
        if eval_cfg.resolution is None:  # default: probe at the pretraining resolution
            eval_cfg = OmegaConf.merge(eval_cfg, {"resolution": pretraining_resolution(state)})
    return run_eval(eval_cfg, backbone, data_cfg, resolve_device(device), out_dir, progress)

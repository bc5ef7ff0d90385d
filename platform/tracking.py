"""MLflow tracking for runs: open or continue a run, log params/metrics/artifacts, close.

Only rank 0 talks to MLflow; other ranks get a :class:`RunLogger` that does nothing.
Uses ``MlflowClient`` with an explicit run id (no global "active run" state), so a sweep
worker or a requeued job can continue exactly the run it was given.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from detlab.platform.config import TrackingConfig

MAX_PARAM_LEN = 500


# What decides a run's results: the code, its configs and the pinned environment. Files that
# DVC or the runs themselves rewrite (dvc.lock, metrics, reports, params.yaml, whose values
# are logged as params) do not make the commit "-dirty".
SOURCE_PATHSPECS = (
    ":(top,glob)**/*.py",
    ":(top,glob)**/conf/**/*.yaml",
    ":(top,glob)plots/**",
    ":(top)pyproject.toml",
    ":(top)setup.py",
    ":(top)requirements.lock",
)


def git_commit(cwd: str | Path = ".") -> str:
    """HEAD's commit, with "-dirty" when a tracked source file differs from it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHSPECS],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        assert exp is not None
        return exp.experiment_id


def create_run(cfg: TrackingConfig, tags: dict[str, str] | None = None) -> str:
    """Create a run up front (launchers do this so the id can be printed before the job)."""
    client = MlflowClient(cfg.uri)
    all_tags = {**cfg.tags, **(tags or {})}
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    run = client.create_run(
        experiment_id(client, cfg.experiment), run_name=cfg.run_name, tags=all_tags
    )
    return run.info.run_id


def log_new_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
    """Log the params the run does not have yet (MLflow params are write-once)."""
    existing = client.get_run(run_id).data.params
    new = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), 100):
        client.log_batch(run_id, params=new[i : i + 100])


class RunLogger:
    """Logs to one MLflow run; a no-op when ``active`` is False (non-zero ranks)."""

    def __init__(self, cfg: TrackingConfig, active: bool = True):
        self.active = active
        self.run_id: str | None = None
        if not active:
            return
        self.client = MlflowClient(cfg.uri)
        self.run_id = cfg.run_id or create_run(cfg)
        self.client.update_run(self.run_id, status="RUNNING")
        self.uri = cfg.uri

    def log_params(self, params: dict[str, object]) -> None:
        if self.active:
            log_new_params(self.client, self.run_id, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if not self.active:
            return
        if reason:
            self.client.set_tag(self.run_id, "failure_reason", reason[:5000])
        assert status in RunStatus.all_status() or status in ("FINISHED", "FAILED", "KILLED")
        self.client.set_terminated(self.run_id, status=status)

    def pause(self) -> None:
        """Leave the run RUNNING-but-detached for a requeued job to continue."""
        if self.active:
            self.client.set_tag(self.run_id, "detlab.state", "requeued")

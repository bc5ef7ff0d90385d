"""MLflow tracking for runs: open or continue a run, log params/metrics/artifacts, close.

Only rank 0 talks to MLflow; other ranks get a :class:`RunLogger` that does nothing.
Uses ``MlflowClient`` with an explicit run id (no global "active run" state), so a sweep
worker or a requeued job can continue exactly the run it was given.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from detlab.platform import lifecycle
from detlab.platform.config import TrackingConfig

MAX_PARAM_LEN = 500
STALE_REASON = "failure_reason"  # why a run ended FAILED or KILLED


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

    def __init__(self, cfg: TrackingConfig, active: bool = True, owner: bool = False):
        """``owner``: this process computes the run (training, probing): its host and pid
        are tagged so that ``reconcile`` can tell when it died without closing the run. A
        run reopened after an interruption loses its stale state tags and keeps the reason
        as ``detlab.interrupted``."""
        self.active = active
        self.run_id: str | None = None
        if not active:
            return
        self.client = MlflowClient(cfg.uri)
        self.run_id = cfg.run_id or create_run(cfg)
        self.uri = cfg.uri
        if owner:  # tags first: a reconciler never sees RUNNING beside a dead owner's pid
            tags = [RunTag(f"detlab.{k}", v) for k, v in lifecycle.identity().items()]
            self.client.log_batch(self.run_id, tags=tags)
        if cfg.run_id:
            tags = self.client.get_run(self.run_id).data.tags
            if STALE_REASON in tags:
                self.client.set_tag(self.run_id, "detlab.interrupted", tags[STALE_REASON])
            for key in (STALE_REASON, "detlab.state"):
                if key in tags:
                    self.client.delete_tag(self.run_id, key)
        self.client.update_run(self.run_id, status="RUNNING")

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
            self.client.set_tag(self.run_id, STALE_REASON, reason[:5000])
        if "detlab.state" in self.client.get_run(self.run_id).data.tags:  # paused, then resumed
            self.client.delete_tag(self.run_id, "detlab.state")
        assert status in RunStatus.all_status() or status in ("FINISHED", "FAILED", "KILLED")
        self.client.set_terminated(self.run_id, status=status)

    def pause(self) -> None:
        """Leave the run RUNNING-but-detached for a requeued job to continue."""
        if self.active:
            self.client.set_tag(self.run_id, "detlab.state", "requeued")


# ------------------------------------------------------------------ stale-run reconciliation


# a job in one of these states will never close its run
JOB_ENDED = {"FAILED": "FAILED", "CANCELLED": "KILLED", "OUT_OF_MEMORY": "FAILED",
             "TIMEOUT": "FAILED", "NODE_FAIL": "FAILED", "BOOT_FAIL": "FAILED",
             "DEADLINE": "FAILED"}  # fmt: skip


def stale_verdict(
    tags: dict[str, str], job_state: Callable[[str], str | None]
) -> tuple[str, str] | None:
    """(status, reason) for a RUNNING run whose computation is gone, else None.

    A run submitted to SLURM (tag ``detlab.slurm_job``) is judged by its job's final state
    (``job_state``: the launcher's sacct lookup; None when it cannot tell); while the job is
    pending, running or requeued the run is left alone. Otherwise, and after a COMPLETED job,
    by the owner process tagged when the run was opened (only on the host it ran on).
    """
    job = tags.get("detlab.slurm_job")
    if job:
        state = job_state(job)
        if state in JOB_ENDED:
            return JOB_ENDED[state], f"SLURM job {job} ended {state}"
        if state != "COMPLETED":
            return None
    host, pid = tags.get("detlab.host"), tags.get("detlab.pid")
    if (
        not (host and pid)
        or lifecycle.alive(host, int(pid), tags.get("detlab.pid_start", "")) is not False
    ):
        return None
    return (
        "KILLED",
        f"process {pid} on {host} ended without closing the run (killed or out of memory)",
    )


def reconcile(
    uri: str,
    job_state: Callable[[str], str | None] = lambda job: None,
    experiments: list[str] | None = None,
) -> list[tuple[str, str, str]]:
    """End the RUNNING runs (of the named experiments, default all) whose job or process is
    gone (see ``stale_verdict``) with that status and the reason as the ``failure_reason``
    tag; returns (run id, status, reason). A SQLite store that does not exist is left
    uncreated."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = MlflowClient(uri)
    if experiments is None:
        ids = [e.experiment_id for e in client.search_experiments()]
    else:
        found = (client.get_experiment_by_name(name) for name in experiments)
        ids = [e.experiment_id for e in found if e is not None]
    if not ids:
        return []
    ended = []
    for run in client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=5000):
        verdict = stale_verdict(run.data.tags, job_state)
        if verdict is None:
            continue
        now = client.get_run(run.info.run_id)  # reopened meanwhile by a resumed run?
        if now.info.status != "RUNNING" or now.data.tags.get("detlab.pid") != run.data.tags.get(
            "detlab.pid"
        ):
            continue
        status, reason = verdict
        client.set_tag(run.info.run_id, STALE_REASON, reason)
        client.set_terminated(run.info.run_id, status=status)
        ended.append((run.info.run_id, status, reason))
    return ended

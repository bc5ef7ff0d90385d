"""MLflow tracking for runs: open or continue a run, log params/metrics/artifacts, close.

The only module that talks to MLflow (tests/platform/test_tracking.py checks that no other
imports it): callers name a store by its URI and a run by its id, and get plain values
back (:class:`TrackedRun`, dicts, lists), never an MLflow object.

Only rank 0 talks to MLflow; other ranks get a :class:`RunLogger` that does nothing.
Uses ``MlflowClient`` with an explicit run id (no global "active run" state), so a sweep
worker or a requeued job can continue exactly the run it was given.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def _experiment_id(client: MlflowClient, name: str) -> str:
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
    client = _client(cfg.uri)
    all_tags = {**cfg.tags, **(tags or {})}
    if cfg.parent_run_id:
        all_tags["mlflow.parentRunId"] = cfg.parent_run_id
    run = client.create_run(
        _experiment_id(client, cfg.experiment), run_name=cfg.run_name, tags=all_tags
    )
    return run.info.run_id


def _set_tags(client: MlflowClient, run_id: str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def _log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    """One value per metric at ``step``, all with this moment's timestamp."""
    ts = int(time.time() * 1000)
    batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
    for i in range(0, len(batch), 500):  # MLflow takes at most 1000 per request
        client.log_batch(run_id, metrics=batch[i : i + 500])


def _end(client: MlflowClient, run_id: str, status: str, reason: str | None) -> None:
    """End the run with ``status``; ``reason`` (why it FAILED or was KILLED) as a tag."""
    if reason:
        client.set_tag(run_id, STALE_REASON, reason[:5000])
    client.set_terminated(run_id, status=status)


def _log_new_params(client: MlflowClient, run_id: str, params: dict[str, object]) -> None:
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
        self.client = _client(cfg.uri)
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
            _log_new_params(self.client, self.run_id, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            _set_tags(self.client, self.run_id, tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active and metrics:
            _log_metrics(self.client, self.run_id, metrics, step)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if not self.active:
            return
        if "detlab.state" in self.client.get_run(self.run_id).data.tags:  # paused, then resumed
            self.client.delete_tag(self.run_id, "detlab.state")
        assert status in RunStatus.all_status() or status in ("FINISHED", "FAILED", "KILLED")
        _end(self.client, self.run_id, status, reason)

    def pause(self) -> None:
        """Leave the run RUNNING-but-detached for a requeued job to continue."""
        if self.active:
            self.client.set_tag(self.run_id, "detlab.state", "requeued")


# -------------------------------------------------- one run, by store URI and run id
# For code that reads or writes a run it does not own as a RunLogger: a launcher, a sweep,
# a study. ``uri`` None is MLflow's default store. The store's refusals (an unknown run, a
# bad filter) raise TrackingError.


class TrackingError(Exception):
    """The tracking store refused a request (an unknown run id, a bad filter string...)."""


def _store_call(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except mlflow.exceptions.MlflowException as exc:
            raise TrackingError(str(exc)) from exc

    return call


_READY: set[str] = set()  # SQLite stores this process has seen initialised


def _client(uri: str | None) -> MlflowClient:
    """An MlflowClient (cheap: MLflow keeps one store per URI). A SQLite store is first
    opened under an exclusive lock on ``<db>.lock``: MLflow creates a new store's tables and
    runs its migrations on first open, and two processes doing that at once fail with
    "table already exists"; the lock makes the second wait and find them made."""
    if not uri or not uri.startswith("sqlite:///") or uri in _READY:
        return MlflowClient(uri)
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # the store is open: created, migrated
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY.add(uri)
    return client


@dataclass(frozen=True)
class TrackedRun:
    """A run as the store held it when read (a copy: later writes do not show)."""

    run_id: str
    experiment_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED or SCHEDULED
    metrics: dict[str, float]  # each metric's latest value
    params: dict[str, str]
    tags: dict[str, str]


def _tracked(run) -> TrackedRun:
    info, data = run.info, run.data
    return TrackedRun(info.run_id, info.experiment_id, info.status, dict(data.metrics),
                      dict(data.params), dict(data.tags))  # fmt: skip


@_store_call
def get_run(uri: str | None, run_id: str) -> TrackedRun:
    """The run ``run_id``; TrackingError when the store does not hold it."""
    return _tracked(_client(uri).get_run(run_id))


@_store_call
def search_runs(uri: str, experiment_ids: list[str], filter_string: str = "") -> list[TrackedRun]:
    """The runs of the experiments that match ``filter_string`` (MLflow's search syntax),
    newest first; at most 1000, MLflow's default page."""
    return [_tracked(r) for r in _client(uri).search_runs(experiment_ids, filter_string)]


@_store_call
def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every (step, value) logged for metric ``key`` in the run."""
    return [(m.step, m.value) for m in _client(uri).get_metric_history(run_id, key)]


@_store_call
def experiment_id(uri: str, name: str) -> str:
    """The id of the experiment ``name``, created when it does not exist yet."""
    return _experiment_id(_client(uri), name)


@_store_call
def experiment_tags(uri: str, experiment_id: str) -> dict[str, str]:
    return dict(_client(uri).get_experiment(experiment_id).tags)


@_store_call
def set_experiment_tag(uri: str, experiment_id: str, key: str, value: str) -> None:
    _client(uri).set_experiment_tag(experiment_id, key, value)


@_store_call
def set_tags(uri: str, run_id: str, tags: dict[str, object]) -> None:
    """Set each tag (values as strings), replacing what the run had under that key."""
    _set_tags(_client(uri), run_id, tags)


@_store_call
def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """One value per metric at ``step``, all with this moment's timestamp."""
    _log_metrics(_client(uri), run_id, metrics, step)


@_store_call
def log_params(uri: str, run_id: str, params: dict[str, object]) -> None:
    """The params the run does not have yet (MLflow params are write-once: a key it has
    keeps its first value)."""
    _log_new_params(_client(uri), run_id, params)


@_store_call
def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Copy the file ``path`` into the run's artifacts (under ``artifact_path``)."""
    _client(uri).log_artifact(run_id, str(path), artifact_path)


@_store_call
def mark_running(uri: str, run_id: str) -> None:
    """Set the run's status back to RUNNING (a parent whose children are coming)."""
    _client(uri).update_run(run_id, status="RUNNING")


@_store_call
def end_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """End the run with ``status`` and its end time; ``reason`` (why it FAILED or was
    KILLED) as its ``failure_reason`` tag."""
    _end(_client(uri), run_id, status, reason)


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
    client = _client(uri)
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
        _end(client, run.info.run_id, status, reason)
        ended.append((run.info.run_id, status, reason))
    return ended

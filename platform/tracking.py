"""MLflow tracking for runs: open or continue a run, log params/metrics/artifacts, close.

The only module that talks to MLflow (tests/platform/test_tracking.py checks that no other
imports it): callers name a store by its URI and a run by its id, and get plain values
back (:class:`TrackedRun`, dicts, lists), never an MLflow object.

Only rank 0 talks to MLflow; other ranks get a :class:`RunLogger` that does nothing.
Uses ``MlflowClient`` with an explicit run id (no global "active run" state), so a sweep
worker or a requeued job can continue exactly the run it was given.
"""

from __future__ import annotations

import atexit
import functools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from detlab.platform import lifecycle
from detlab.platform.config import TrackingConfig
from detlab.platform.states import ENDED, STATE_TAG, RunState, RunStatus
from detlab.platform.tracking_queue import TrackingQueue

MAX_PARAM_LEN = 500
STALE_REASON = "failure_reason"  # why a run ended FAILED or KILLED


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


def _log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int, ts: int | None = None
) -> None:
    """One value per metric at ``step``, all with timestamp ``ts`` (ms; default now)."""
    ts = int(time.time() * 1000) if ts is None else ts
    _log_metric_list(client, run_id, [Metric(k, float(v), ts, step) for k, v in metrics.items()])


def _log_metric_list(client: MlflowClient, run_id: str, batch: list[Metric]) -> None:
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


# ------------------------------------------- records: what a RunLogger's queue carries
# JSON-able dicts ({"op": ..., "uri": ...}), applied in order by the queue's writer thread or
# replayed from a spill file; each is idempotent (see tracking_queue).


def _apply_records(client: MlflowClient, run_id: str, records: list[dict]) -> None:
    metrics: list[Metric] = []  # consecutive metric records go as one request
    for rec in [*records, {"op": "flush"}]:
        op = rec["op"]
        if op == "metrics":
            metrics += [
                Metric(k, float(v), rec["ts"], rec["step"]) for k, v in rec["values"].items()
            ]
            continue
        _log_metric_list(client, run_id, metrics)
        metrics = []
        if op == "params":
            _log_new_params(client, run_id, rec["values"])
        elif op == "tags":
            _set_tags(client, run_id, rec["values"])
        elif op == "text":
            client.log_text(run_id, rec["text"], rec["file"])
        elif op == "artifact":
            client.log_artifact(run_id, rec["path"], rec["artifact_path"])
        elif op == "pause":
            client.set_tag(run_id, STATE_TAG, RunState.REQUEUED)
        elif op == "end":
            if STATE_TAG in client.get_run(run_id).data.tags:  # paused, then resumed
                client.delete_tag(run_id, STATE_TAG)
            _end(client, run_id, rec["status"], rec["reason"])


REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
            "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}  # fmt: skip


def _refused(exc: BaseException) -> bool:
    """The store said no (retrying cannot help), as opposed to not answering."""
    if isinstance(exc, FileNotFoundError):  # an artifact removed before it was written
        return True
    return isinstance(exc, mlflow.exceptions.MlflowException) and exc.error_code in REFUSALS


def spill_file(run_id: str) -> Path:
    """Where a run's records wait when the store is down: $DETLAB_HOME/spill/<run id>.jsonl."""
    return lifecycle.detlab_home() / "spill" / f"{run_id}.jsonl"


class RunLogger:
    """Logs to one MLflow run; a no-op when ``active`` is False (non-zero ranks)."""

    def __init__(self, cfg: TrackingConfig, active: bool = True, owner: bool = False):
        """``owner``: this process computes the run (training, probing): its host and pid
        are tagged so that ``reconcile`` can tell when it died without closing the run. A
        run reopened after an interruption loses its stale state tags and keeps the reason
        as ``detlab.interrupted``."""
        self.active = active
        self.run_id: str | None = None
        self.queue = None
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
            for key in (STALE_REASON, STATE_TAG):
                if key in tags:
                    self.client.delete_tag(self.run_id, key)
        self.client.update_run(self.run_id, status=RunStatus.RUNNING)
        self.flush_timeout_s = float(cfg.flush_timeout_s)
        self.queue: TrackingQueue | None = TrackingQueue(
            functools.partial(_apply_records, self.client, self.run_id),
            spill_file(self.run_id), int(cfg.queue_size),
            f"tracking ({self.uri}, run {self.run_id[:8]})", _refused)  # fmt: skip
        atexit.register(self.close)  # a logger nobody finished still writes what it has

    def _put(self, op: str, **fields) -> None:
        if self.active:
            self.queue.put({"op": op, "uri": self.uri, **fields})

    def log_params(self, params: dict[str, object]) -> None:
        self._put("params", values={k: str(v)[:MAX_PARAM_LEN] for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._put("tags", values={k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if metrics:  # stamped now: a late write keeps the moment it was logged
            values = {k: float(v) for k, v in metrics.items()}
            self._put("metrics", values=values, step=int(step), ts=int(time.time() * 1000))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put("text", text=text, file=artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("artifact", path=str(Path(path).resolve()), artifact_path=artifact_path)

    def finish(self, status: str = RunStatus.FINISHED, reason: str | None = None) -> None:
        if status not in ENDED:
            raise ValueError(f"a run ends FINISHED, FAILED or KILLED, not {status!r}")
        self._put("end", status=status, reason=reason)
        self.close()

    def pause(self) -> None:
        """Leave the run RUNNING-but-detached for a requeued job to continue."""
        self._put("pause")
        self.close()

    def close(self) -> int:
        """Wait (up to ``tracking.flush_timeout_s``) for the queue to be written; what the
        store did not take by then waits in the spill file. Returns how many records wait."""
        if not self.active or self.queue is None:
            return 0
        queue, self.queue = self.queue, None
        atexit.unregister(self.close)
        left = queue.close(self.flush_timeout_s)
        if left:
            print(f"detlab tracking: {left} records of run {self.run_id} did not reach "
                  f"{self.uri}; they wait in {queue.spill} for `detlab jobs` (or the run's "
                  "next start) to write them", file=sys.stderr, flush=True)  # fmt: skip
        return left


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
def search_runs(
    uri: str, experiment_ids: list[str], filter_string: str = "", max_results: int = 1000
) -> list[TrackedRun]:
    """The runs of the experiments that match ``filter_string`` (MLflow's search syntax),
    newest first; at most ``max_results`` (MLflow's default page: 1000)."""
    found = _client(uri).search_runs(experiment_ids, filter_string, max_results=max_results)
    return [_tracked(r) for r in found]


@_store_call
def experiment_ids(uri: str, names: list[str] | None = None) -> list[str]:
    """The ids of the experiments ``names`` that exist (default: every experiment)."""
    client = _client(uri)
    if names is None:
        return [e.experiment_id for e in client.search_experiments()]
    found = (client.get_experiment_by_name(name) for name in names)
    return [e.experiment_id for e in found if e is not None]


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
def apply_records(uri: str, run_id: str, records: list[dict]) -> None:
    """Write a logger's queued records (a spill file's) into the run, in order."""
    _apply_records(_client(uri), run_id, records)


@_store_call
def mark_running(uri: str, run_id: str) -> None:
    """Set the run's status back to RUNNING (a parent whose children are coming)."""
    _client(uri).update_run(run_id, status=RunStatus.RUNNING)


@_store_call
def end_run(
    uri: str, run_id: str, status: str = RunStatus.FINISHED, reason: str | None = None
) -> None:
    """End the run with ``status`` and its end time; ``reason`` (why it FAILED or was
    KILLED) as its ``failure_reason`` tag."""
    _end(_client(uri), run_id, status, reason)

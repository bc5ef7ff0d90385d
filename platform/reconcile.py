"""Runs whose computation is gone: end the ones left RUNNING, write what waited on disk.

A run left RUNNING by a process or SLURM job that died (kill -9, out of memory, a node
lost) is ended with its true status and the reason (``reconcile``); records a run's logger
could not write while the store was down wait in spill files, which ``replay_spills``
writes into their runs once nobody else will. ``detlab jobs`` and the study stages call
both. The store is reached through :mod:`detlab.platform.tracking` only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from detlab.platform import lifecycle, tracking
from detlab.platform.states import JobState, RunStatus
from detlab.platform.tracking_queue import read_spill

# a job in one of these states will never close its run
JOB_ENDED = {JobState.FAILED: RunStatus.FAILED, JobState.CANCELLED: RunStatus.KILLED,
             JobState.OUT_OF_MEMORY: RunStatus.FAILED, JobState.TIMEOUT: RunStatus.FAILED,
             JobState.NODE_FAIL: RunStatus.FAILED, JobState.BOOT_FAIL: RunStatus.FAILED,
             JobState.DEADLINE: RunStatus.FAILED}  # fmt: skip


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
        if state != JobState.COMPLETED:
            return None
    if not owner_gone(tags):
        return None
    host, pid = tags.get("detlab.host"), tags.get("detlab.pid")
    return (
        RunStatus.KILLED,
        f"process {pid} on {host} ended without closing the run (killed or out of memory)",
    )


def owner_gone(tags: dict[str, str]) -> bool:
    """The process tagged as the run's owner is known to have ended (False: alive, or
    untagged, or on another host where it cannot be told)."""
    host, pid = tags.get("detlab.host"), tags.get("detlab.pid")
    if not (host and pid):
        return False
    return lifecycle.alive(host, int(pid), tags.get("detlab.pid_start", "")) is False


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
    ids = tracking.experiment_ids(uri, experiments)
    if not ids:
        return []
    ended = []
    for run in tracking.search_runs(uri, ids, f"attributes.status = '{RunStatus.RUNNING}'", 5000):
        verdict = stale_verdict(run.tags, job_state)
        if verdict is None:
            continue
        now = tracking.get_run(uri, run.run_id)  # reopened meanwhile by a resumed run?
        if now.status != RunStatus.RUNNING or now.tags.get("detlab.pid") != run.tags.get(
            "detlab.pid"
        ):
            continue
        status, reason = verdict
        tracking.end_run(uri, run.run_id, status, reason)
        ended.append((run.run_id, status, reason))
    return ended


def replay_spills(folder: Path | None = None) -> list[tuple[str, int, str]]:
    """Write each spill file's records (``$DETLAB_HOME/spill/<run id>.jsonl``, left by a
    logger whose store was down when its run ended) into its run, then delete the file;
    returns (run id, records, what happened). A file whose run's owner may still be writing
    it (a live process) or whose store does not answer is kept for a later call."""
    folder = folder or tracking.spill_file("-").parent
    done = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        records, run_id = read_spill(path), path.stem
        if not records:
            path.unlink()
            continue
        uri = records[0]["uri"]
        try:
            run = tracking.get_run(uri, run_id)
            if run.status == RunStatus.RUNNING and not owner_gone(run.tags):
                done.append((run_id, len(records), "kept: its run's process is still running"))
                continue
            tracking.apply_records(uri, run_id, records)
        except Exception as exc:  # the store is still down, or refuses: keep the file
            done.append((run_id, len(records), f"kept: {type(exc).__name__}: {exc}"[:300]))
            continue
        path.unlink()
        done.append((run_id, len(records), f"written to {uri}"))
    return done

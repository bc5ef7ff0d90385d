"""Preemption and hard crashes of SLURM jobs on the local two-node cluster, logging to a
real `mlflow server`: the run resumes from its checkpoint, in its own MLflow run, and ends
with a true status."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from detlab.platform.launch import follow, jobs_command, sacct_state, submit

pytestmark = pytest.mark.slurm


def wait_for_step(client: MlflowClient, run_id: str, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if max((m.step for m in client.get_metric_history(run_id, "loss")), default=0) >= step:
            return
        time.sleep(0.5)
    pytest.fail(f"run {run_id} did not reach step {step} within {timeout} s")


def test_scontrol_requeue_resumes_the_same_run(slurm_cfg, interruption):
    cfg = slurm_cfg("train.checkpoint_every=5", steps=60)
    job, run_id = submit(cfg)
    client = MlflowClient(cfg.tracking.uri)
    wait_for_step(client, run_id, 12)  # a checkpoint exists and training moved on
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
    assert follow(job, run_id, cfg) == "COMPLETED"
    history = client.get_metric_history(run_id, "loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(1, 61))  # continued, nothing missing
    assert len(steps) - 60 <= 5  # steps redone: at most one checkpoint interval
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["detlab.requeues"]) >= 1
    assert "detlab.state" not in run.data.tags and "failure_reason" not in run.data.tags
    redone, downtime = interruption(history)
    print(
        f"scontrol requeue: {redone} steps redone (checkpoint every 5), "
        f"{downtime:.1f} s without progress"
    )


def test_time_limit_signal_checkpoints_requeues_and_completes(slurm_cfg, interruption):
    """The time-limit warning (USR2, sent by SLURM `cluster.signal_delay_s` before the
    limit; sent here by hand with `scancel --signal=USR2` so the test does not depend on
    machine speed): the job stops at a step boundary, requeues itself and the next run
    continues from that step."""
    cfg = slurm_cfg("train.checkpoint_every=1000", "cluster.max_requeues=3", steps=150)
    job, run_id = submit(cfg)
    client = MlflowClient(cfg.tracking.uri)
    wait_for_step(client, run_id, 10)
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    assert follow(job, run_id, cfg) == "COMPLETED"
    client = MlflowClient(cfg.tracking.uri)
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 151))
    assert len(steps) == 150  # checkpointed exactly where it stopped: no step redone
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["detlab.requeues"]) >= 1
    assert "detlab.state" not in run.data.tags and "failure_reason" not in run.data.tags
    _, downtime = interruption(client.get_metric_history(run_id, "loss"))
    print(
        f"time-limit signal (USR2): {run.data.tags['detlab.requeues']} requeue(s), "
        f"0 steps redone, {downtime:.1f} s without progress"
    )


def test_kill_9_of_a_job_then_resubmission_continues_its_run(slurm_cfg, interruption, capsys):
    """SIGKILL of the job's training process (as the kernel's OOM killer would): no handler
    runs, the job ends FAILED and its MLflow run cannot close itself. `detlab jobs` marks
    the run FAILED with the reason; the same submission again resumes the checkpoint in the
    same run, which ends FINISHED with at most one checkpoint interval redone."""
    cfg = slurm_cfg("train.checkpoint_every=5", "tracking.experiment=kill9", steps=40)
    job, run_id = submit(cfg)
    client = MlflowClient(cfg.tracking.uri)
    wait_for_step(client, run_id, 12)
    pid = int(client.get_run(run_id).data.tags["detlab.pid"])  # rank 0, on this machine
    os.kill(pid, signal.SIGKILL)
    assert follow(job, run_id, cfg) == "FAILED"  # follow ends the run it left open
    capsys.readouterr()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == f"SLURM job {job.job_id} ended FAILED"
    client.update_run(run_id, status="RUNNING")  # as if nobody had followed the job:
    assert jobs_command(cfg) == 0  # `detlab jobs` ends it too
    assert f"MLflow run {run_id} was left RUNNING: marked FAILED" in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "FAILED"

    again, again_run = submit(cfg)  # the same command again
    assert again_run == run_id and again.job_id != job.job_id
    assert follow(again, again_run, cfg) == "COMPLETED"
    assert sacct_state(job.job_id, cfg.cluster) == "FAILED"
    exp = client.get_experiment_by_name("kill9").experiment_id
    assert [r.info.run_id for r in client.search_runs([exp])] == [run_id]  # one run per model
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "failure_reason" not in run.data.tags and "detlab.state" not in run.data.tags
    assert run.data.tags["detlab.interrupted"] == f"SLURM job {job.job_id} ended FAILED"
    assert run.data.tags["detlab.slurm_job"] == str(again.job_id)
    history = client.get_metric_history(run_id, "loss")
    assert sorted({m.step for m in history}) == list(range(1, 41))
    redone, downtime = interruption(history)
    assert redone <= 5  # at most one checkpoint interval
    print(f"kill -9 of a job + resubmission: {redone} steps redone (checkpoint every 5), "
          f"{downtime:.1f} s without progress, one MLflow run")  # fmt: skip

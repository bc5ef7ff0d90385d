"""Hard crashes outside SLURM: kill -9 of a local pretraining run and of a sweep worker.
Nothing computed is lost beyond one checkpoint interval, no trial is lost or run twice, and
every model keeps exactly one MLflow run, which ends with its true status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from detlab.platform.cli import main as cli
from detlab.sweeps.storage import open_storage


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"{what} within {timeout} s")


@pytest.mark.slow
def test_kill_9_of_a_local_run_is_reconciled_and_the_rerun_continues_it(
    tiny_overrides, tmp_path, interruption, capsys, monkeypatch
):
    """SIGKILL of `detlab pretrain` (no handler runs: as an OOM kill): `detlab jobs` marks
    its MLflow run KILLED with the reason; the same command again resumes the checkpoint in
    that run, which ends FINISHED, with at most one checkpoint interval redone."""
    args = tiny_overrides(tmp_path, "train.checkpoint_every=5", "tracking.experiment=local",
                          method="byol", steps=40)  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path / "home"))  # this test's job registry only
    proc = subprocess.Popen([sys.executable, "-m", "detlab.platform.cli", "pretrain", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def loss_steps() -> list[int]:
        if not (tmp_path / "run" / "checkpoint.pt").exists():
            return []  # the store is fully created by then (two first openers would race)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("local")
        found = client.search_runs([exp.experiment_id]) if exp else []
        return [m.step for r in found for m in client.get_metric_history(r.info.run_id, "loss")]

    wait_until(lambda: max(loss_steps(), default=0) >= 12, 300, "no step 12")
    assert proc.poll() is None
    proc.kill()
    proc.wait()
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("local").experiment_id])
    assert run.info.status == "RUNNING" and run.data.tags["detlab.pid"] == str(proc.pid)

    assert cli(["jobs", f"tracking.uri={uri}"]) == 0
    assert f"MLflow run {run.info.run_id} was left RUNNING: marked KILLED" in (
        capsys.readouterr().out
    )
    killed = client.get_run(run.info.run_id)
    assert killed.info.status == "KILLED"
    assert f"process {proc.pid} on " in killed.data.tags["failure_reason"]

    assert cli(["pretrain", *args]) == 0  # the same command again
    exp = client.get_experiment_by_name("local").experiment_id
    assert [r.info.run_id for r in client.search_runs([exp])] == [run.info.run_id]
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FINISHED" and "failure_reason" not in done.data.tags
    assert f"process {proc.pid} on " in done.data.tags["detlab.interrupted"]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in history}) == list(range(1, 41))
    redone, _ = interruption(history)
    assert redone <= 5
    print(f"kill -9 of a local run + rerun: {redone} steps redone (checkpoint every 5), "
          "one MLflow run, marked KILLED in between")  # fmt: skip


@pytest.mark.slow
def test_kill_9_of_a_sweep_worker_loses_and_duplicates_no_trial(sweep_args, tmp_path):
    """SIGKILL of the only worker mid-trial; the same sweep command again: the stale trial
    fails on its heartbeat and is retried once, in the killed trial's MLflow run, from its
    checkpoint."""
    args = sweep_args(
        "sweep.n_trials=2",
        "sweep.n_workers=1",
        "sweep.pruner=none",
        "train.checkpoint_every=5",
        steps=40,
    )
    assert cli(["sweep", "sweep=temperature", *args]) == 0  # returns at once
    url = f"sqlite:///{tmp_path}/sweeps/t/optuna.db"
    study = optuna.load_study(study_name="t", storage=open_storage(url))
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first checkpoint of trial 0
        if list((tmp_path / "sweeps/t/trials").glob("*/checkpoint.pt")):
            break
        time.sleep(0.5)
    storage = f"{tmp_path}/sweeps/t/optuna.db"  # only this test's worker
    ours = subprocess.run(["pgrep", "-f", storage], capture_output=True, text=True).stdout.split()
    assert ours, "the worker should still be running"
    for pid in ours:
        os.kill(int(pid), signal.SIGKILL)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert len(running) == 1
    # the same command again: a new worker fails the stale trial and retries it
    assert cli(["sweep", "sweep=temperature", *args, "--wait"]) == 0
    trials = study.get_trials()
    states = Counter(t.state for t in trials)
    assert states == {TrialState.COMPLETE: 2, TrialState.FAIL: 1}
    retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
    assert [t.system_attrs["failed_trial"] for t in retried] == [running[0].number]
    # the retry continued the killed trial's MLflow run from its checkpoint
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = study.user_attrs["parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    killed_run = running[0].user_attrs["mlflow_run_id"]
    history = [m.step for m in client.get_metric_history(killed_run, "loss")]
    assert max(history) == 40
    assert len(history) <= 40 + 5  # steps redone: at most one checkpoint interval
    print(f"kill -9 of a sweep worker: {len(history) - 40} steps redone (checkpoint every 5), "
          "2 trials COMPLETE, 1 FAIL (the killed attempt), 2 MLflow runs FINISHED")  # fmt: skip

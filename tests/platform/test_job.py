"""The platform's one SLURM job (platform/job.py): signals -> stop flag, requeue policy.

SLURM itself is faked here (``scontrol`` and the wait); the real requeue through a local
cluster is tests/faults/test_preemption.py."""

from __future__ import annotations

import os
import signal
import subprocess
from types import SimpleNamespace

import pytest

from detlab.platform import job as job_module
from detlab.platform.job import RequeueError, RequeueLimitError, SlurmJob, StopFlag, torch_env


@pytest.fixture
def slurm(monkeypatch):
    """Records `scontrol` calls and waits instead of making them."""
    calls = {"scontrol": [], "slept": 0}

    def run(cmd, **kwargs):
        calls["scontrol"].append(cmd)
        return SimpleNamespace(returncode=0, stdout="", stderr="")

    monkeypatch.setattr(job_module.subprocess, "run", run)
    monkeypatch.setattr(job_module.time, "sleep", lambda s: calls.__setitem__("slept", s))
    return calls


def stopped_by(signum: int) -> StopFlag:
    flag = StopFlag()
    flag.on_signal(signum, None)
    return flag


@pytest.mark.parametrize("restarts", [0, 2])
def test_time_limit_requeues_then_waits(slurm, monkeypatch, restarts):
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))
    SlurmJob(max_requeues=3).requeue_and_wait(SimpleNamespace(global_rank=0, job_id="41"),
                                              stopped_by(signal.SIGUSR2))  # fmt: skip
    assert slurm["scontrol"] == [["scontrol", "requeue", "41"]]
    assert slurm["slept"] == SlurmJob.wait_s


def test_requeue_limit_is_an_error(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    with pytest.raises(RequeueLimitError, match="cluster.max_requeues=3"):
        SlurmJob(max_requeues=3).requeue_and_wait(
            SimpleNamespace(global_rank=0, job_id="41"), stopped_by(signal.SIGUSR2)
        )
    assert slurm["scontrol"] == []


def test_a_failed_requeue_fails_the_job_with_scontrols_words(monkeypatch, tmp_path, capsys):
    """A real `scontrol` that refuses (here a script on PATH): the job raises, naming the
    job and what scontrol said, and logs it; it does not wait for a requeue."""
    fake = tmp_path / "scontrol"
    # written by a child process: a file this (threaded) process had open for writing could
    # be inherited by a fork elsewhere in the suite and make exec fail with ETXTBSY
    script = "#!/bin/sh\necho 'scontrol: error: Invalid job id specified' >&2\nexit 1\n"
    subprocess.run(["sh", "-c", 'printf "%s" "$1" > "$2" && chmod 755 "$2"', "sh", script,
                    str(fake)], check=True)  # fmt: skip
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    slept = []
    monkeypatch.setattr(job_module.time, "sleep", slept.append)
    with pytest.raises(RequeueError, match=r"scontrol requeue 41 failed \(exit 1\): scontrol: "
                       r"error: Invalid job id specified"):  # fmt: skip
        SlurmJob().requeue_and_wait(SimpleNamespace(global_rank=0, job_id="41"),
                                    stopped_by(signal.SIGUSR2))  # fmt: skip
    assert slept == [] and "Invalid job id" in capsys.readouterr().err


def test_no_scontrol_on_the_node_is_a_failed_requeue(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(RequeueError, match="scontrol requeue 7 failed"):
        SlurmJob.requeue("7")


@pytest.mark.parametrize(("rank", "signum"), [(0, signal.SIGTERM), (1, signal.SIGUSR2)])
def test_preemption_and_other_ranks_only_wait(slurm, monkeypatch, rank, signum):
    """On TERM SLURM requeues by itself; ranks > 0 never requeue."""
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    SlurmJob().requeue_and_wait(SimpleNamespace(global_rank=rank, job_id="41"), stopped_by(signum))
    assert slurm["scontrol"] == [] and slurm["slept"] == SlurmJob.wait_s


def test_stop_flag_keeps_the_first_signal():
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        flag = StopFlag().install()
        assert not flag()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag() and flag.signal == signal.SIGUSR2
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_torch_env_from_submitit_environment():
    env = SimpleNamespace(global_rank=3, num_tasks=4, local_rank=1, hostnames=["n1", "n2"],
                          job_id="123_4")  # fmt: skip
    assert torch_env(env) == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                              "MASTER_ADDR": "n1", "MASTER_PORT": str(20000 + 123)}  # fmt: skip


def test_both_launches_use_the_one_job():
    from detlab.platform.launch import PretrainJob
    from detlab.sweeps.slurm_worker import SweepWorkerJob

    assert issubclass(PretrainJob, SlurmJob) and issubclass(SweepWorkerJob, SlurmJob)
    assert SweepWorkerJob("sqlite:///x.db", "s", max_requeues=5).max_requeues == 5

"""One SLURM job for every launch: pretraining runs and sweep workers alike.

``SlurmJob`` is a submitit callable that does what any detlab job needs on a cluster and
nothing else: turn submitit's environment into torch's standard variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), turn SLURM's signals into a stop flag
the work polls at step boundaries (USR2: the time limit is near; TERM: preemption or
``scontrol requeue``), and, when the work reports that it stopped, requeue the job (USR2,
at most ``max_requeues`` times) and wait for SLURM to end it: the requeued job resumes from
the checkpoint the work wrote. Subclasses say what to run (``run``) and how a stopped
result looks (``stopped``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import submitit


def torch_env(env: submitit.JobEnvironment) -> dict[str, str]:
    """torch.distributed's variables for this task; the port is derived from the job id so
    that jobs sharing a node do not collide (a caller may set another per run)."""
    return {
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": str(20000 + int(str(env.job_id).split("_")[0]) % 20000),
    }


class StopFlag:
    """Set by the first SIGUSR2 or SIGTERM; called, it says whether to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> StopFlag:
        for sig in (signal.SIGUSR2, signal.SIGTERM):  # replaces submitit's own handlers
            signal.signal(sig, self.on_signal)
        return self

    def on_signal(self, signum, frame) -> None:  # noqa: ARG002 (signal handler signature)
        if self.signal is None:
            self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


class RequeueLimitError(RuntimeError):
    """The job was requeued ``cluster.max_requeues`` times already."""


class RequeueError(RuntimeError):
    """``scontrol requeue`` failed: the job ends as failed, its output in the message."""


class SlurmJob(submitit.helpers.Checkpointable):
    """Subclasses implement ``run(env, stop, *args)`` and ``stopped(result)``."""

    wait_s = 3600.0  # after a stop, SLURM ends (and requeues) the job long before this

    def __init__(self, max_requeues: int = 3):
        self.max_requeues = max_requeues

    def run(self, env: submitit.JobEnvironment, stop: StopFlag, *args: Any) -> Any:
        raise NotImplementedError

    def stopped(self, result: Any) -> bool:
        raise NotImplementedError

    def __call__(self, *args: Any) -> Any:
        env = submitit.JobEnvironment()
        os.environ.update(torch_env(env))
        stop = StopFlag().install()
        node = os.environ.get("SLURMD_NODENAME", env.hostname)
        print(f"rank {env.global_rank}/{env.num_tasks} on {node} (job {env.job_id})", flush=True)
        result = self.run(env, stop, *args)
        if self.stopped(result):
            self.requeue_and_wait(env, stop)
        return result

    def requeue_and_wait(self, env: submitit.JobEnvironment, stop: StopFlag) -> None:
        """Rank 0 requeues on USR2 (on TERM, SLURM requeues by itself); every rank then waits
        to be ended, so no result is written for a job that will run again."""
        if env.global_rank == 0 and stop.signal == signal.SIGUSR2:
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
            if restarts >= self.max_requeues:
                raise RequeueLimitError(
                    f"cluster.max_requeues={self.max_requeues} reached (job {env.job_id})"
                )
            self.requeue(str(env.job_id))
        time.sleep(self.wait_s)

    @staticmethod
    def requeue(job_id: str) -> None:
        """``scontrol requeue``; a failure is printed to the job's log with scontrol's own
        words and raised, so the job ends as failed (the launcher reconciles its run like
        any failed job's) instead of waiting for a requeue that will not come."""
        try:
            done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True,
                                  text=True, check=False)  # fmt: skip
            code, said = done.returncode, (done.stderr or done.stdout or "").strip()
        except OSError as e:  # no scontrol on this node
            code, said = None, str(e)
        if code != 0:
            msg = f"scontrol requeue {job_id} failed (exit {code}): {said or 'no output'}"
            print(msg, file=sys.stderr, flush=True)
            raise RequeueError(msg)

    def checkpoint(self, *args: Any, **kwargs: Any):  # only if our handlers were not set
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

"""The SLURM side of a sweep worker: a submitit callable that requeues on preemption."""

from __future__ import annotations

import submitit


class SweepWorkerJob(submitit.helpers.Checkpointable):
    """Runs ``detlab.sweeps.worker.work``; on timeout/preemption it is requeued and the
    worker continues its running trial (from the trial's checkpoint)."""

    def __init__(self, storage_url: str, study_name: str):
        self.storage_url, self.study_name = storage_url, study_name

    def __call__(self, worker_id: str) -> dict:
        from detlab.sweeps.worker import work

        job = submitit.JobEnvironment().job_id  # e.g. 123_4: the same after a requeue
        return work(self.storage_url, self.study_name, f"{worker_id}-{job}")

"""The SLURM side of a sweep worker: a submitit callable that requeues on preemption.

A worker job with several tasks (`cluster.nodes x cluster.tasks_per_node > 1`) runs each
trial on all of them: rank 0 talks to Optuna (claims, reports, tells) and, before training,
publishes the trial's composed config and a rendezvous port into a small file channel on
the shared file system; the other ranks train that config with it (DDP), then wait for the
next one. Rank 0 closes the channel when the study is done.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import submitit

from detlab.platform.job import SlurmJob, StopFlag
from detlab.platform.states import TrainStatus
from detlab.sweeps.storage import open_storage


class SweepWorkerJob(SlurmJob):
    """Runs ``detlab.sweeps.worker.work`` in the platform's SLURM job; on timeout or
    preemption the job is requeued and the worker continues its running trial (from the
    trial's checkpoint)."""

    def __init__(self, storage_url: str, study_name: str, max_requeues: int = 3):
        super().__init__(max_requeues)
        self.storage_url, self.study_name = storage_url, study_name

    def stopped(self, result: dict) -> bool:
        return "STOPPED" in result

    def run(self, env: submitit.JobEnvironment, stop: StopFlag, worker_id: str) -> dict:
        from detlab.sweeps.worker import work  # lazy: torch; the driver imports this module

        wid = f"{worker_id}-{env.job_id}"  # e.g. slurm-0-123_0: the same after a requeue
        if env.num_tasks == 1:
            return work(self.storage_url, self.study_name, wid, stop_requested=stop)
        channel = self.channel(wid)
        if env.global_rank > 0:
            return self.follow(channel, stop, env)
        channel.mkdir(parents=True, exist_ok=True)
        count = {"n": 0}

        def publish(cfg_yaml: str, port: int) -> None:
            tmp = channel / f".{count['n']:05d}.tmp"
            tmp.write_text(json.dumps({"cfg": cfg_yaml, "port": port}))
            os.replace(tmp, channel / f"{count['n']:05d}.json")
            count["n"] += 1

        done = work(self.storage_url, self.study_name, wid, publish=publish, stop_requested=stop)
        if "STOPPED" not in done:
            (channel / "done").touch()
        return done

    def channel(self, wid: str) -> Path:
        import optuna

        study = optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.storage_url)
        )
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")  # a requeued run: fresh channel
        return Path(study.user_attrs["out_dir"]) / "workers" / f"{wid}.channel" / restart

    def follow(self, channel: Path, stop: StopFlag, env, poll_s: float = 0.5) -> dict:
        """Ranks > 0: train every published trial config with rank 0 until it is done."""
        from omegaconf import OmegaConf

        from detlab.platform.run import pretrain  # lazy: torch, as above

        seen, trained = 0, 0
        while True:
            message = channel / f"{seen:05d}.json"
            if message.exists():
                data = json.loads(message.read_text())
                os.environ["MASTER_PORT"] = str(data["port"])
                try:  # every rank polls `stop` each step: train() reduces it across ranks
                    cfg = OmegaConf.create(data["cfg"])
                    result = pretrain(cfg, here=True, stop_requested=stop)
                    trained += 1
                except Exception as exc:  # failed: rank 0 tells Optuna
                    print(f"trial {seen} ended on this rank: {type(exc).__name__}: {exc}")
                else:
                    if result.status == TrainStatus.STOPPED:
                        self.requeue_and_wait(env, stop)  # rank 0 requeues; SLURM ends us
                seen += 1
            elif (channel / "done").exists():
                return {"trained": trained}
            else:
                time.sleep(poll_s)

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
import signal
import subprocess
import time
from pathlib import Path

import submitit


class SweepWorkerJob(submitit.helpers.Checkpointable):
    """Runs ``detlab.sweeps.worker.work``; on timeout/preemption it is requeued and the
    worker continues its running trial (from the trial's checkpoint)."""

    def __init__(self, storage_url: str, study_name: str):
        self.storage_url, self.study_name = storage_url, study_name

    def __call__(self, worker_id: str) -> dict:
        from detlab.sweeps.worker import work

        env = submitit.JobEnvironment()
        wid = f"{worker_id}-{env.job_id}"  # e.g. slurm-0-123_0: the same after a requeue
        got: dict[str, int] = {}
        for sig in (signal.SIGUSR2, signal.SIGTERM):  # stop at a step boundary, checkpoint
            signal.signal(sig, lambda s, f: got.setdefault("signal", s))

        def stop() -> bool:
            return "signal" in got

        if env.num_tasks == 1:
            done = work(self.storage_url, self.study_name, wid, stop_requested=stop)
            return self.after(done, got, env)
        os.environ.update(
            RANK=str(env.global_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=env.hostnames[0],
        )
        channel = self.channel(wid)
        if env.global_rank == 0:
            channel.mkdir(parents=True, exist_ok=True)
            count = {"n": 0}

            def publish(cfg_yaml: str, port: int) -> None:
                tmp = channel / f".{count['n']:05d}.tmp"
                tmp.write_text(json.dumps({"cfg": cfg_yaml, "port": port}))
                os.replace(tmp, channel / f"{count['n']:05d}.json")
                count["n"] += 1

            done = work(self.storage_url, self.study_name, wid, publish=publish,
                        stop_requested=stop)  # fmt: skip
            if "STOPPED" not in done:
                (channel / "done").touch()
            return self.after(done, got, env)
        return self.follow(channel, stop)

    @staticmethod
    def after(done: dict, got: dict, env) -> dict:
        """A trial stopped by a signal: requeue (USR2 = time limit; SIGTERM = SLURM's own
        requeue or preemption) and wait to be ended; its next run resumes the trial."""
        if "STOPPED" not in done:
            return done
        if got.get("signal") == signal.SIGUSR2 and env.global_rank == 0:
            subprocess.run(["scontrol", "requeue", str(env.job_id)], check=False)
        time.sleep(3600)
        return done

    def channel(self, wid: str) -> Path:
        import optuna

        from detlab.sweeps.storage import open_storage

        study = optuna.load_study(
            study_name=self.study_name, storage=open_storage(self.storage_url)
        )
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")  # a requeued run: fresh channel
        return Path(study.user_attrs["out_dir"]) / "workers" / f"{wid}.channel" / restart

    @staticmethod
    def follow(channel: Path, stop, poll_s: float = 0.5) -> dict:
        """Ranks > 0: train every published trial config with rank 0 until it is done."""
        from omegaconf import OmegaConf

        from detlab.platform.train import train

        seen, trained = 0, 0
        while True:
            message = channel / f"{seen:05d}.json"
            if message.exists():
                data = json.loads(message.read_text())
                os.environ["MASTER_PORT"] = str(data["port"])
                try:  # every rank polls `stop` each step: train() reduces it across ranks
                    if (
                        train(OmegaConf.create(data["cfg"]), stop_requested=stop).status
                        == "stopped"
                    ):
                        time.sleep(3600)  # rank 0 requeues the job; SLURM ends this rank
                    trained += 1
                except Exception as exc:  # failed: rank 0 tells Optuna
                    print(f"trial {seen} ended on this rank: {type(exc).__name__}: {exc}")
                seen += 1
            elif (channel / "done").exists():
                return {"trained": trained}
            else:
                time.sleep(poll_s)

"""The mask stage on SLURM (``masks.cluster: slurm`` in params.yaml): the shards a store
still misses run as one submitit job array, ``shards_per_task`` shards a task.

Each task computes its shards with the same code as a local run (``shards.compute``, a
pool of ``cpus_per_task`` processes) and writes each through ``write_shard``: atomic, so a
shard exists whole or not at all. The stage's process submits, follows the array with a
progress line, checks that every shard is there, and finalises the store, which is the
same, byte for byte, as a local run's. A task that fails, is cancelled or is killed costs
only its unwritten shards: the stage ends with one line naming each such task, its state
and its log, and the next run submits only the shards still missing.

A task is the platform's SLURM job (``detlab.platform.job.SlurmJob``): on USR2 (time limit
near) or TERM (preemption) it stops after the shard in progress and is requeued; the
requeued task skips the shards already written. Settings (``masks.slurm``): ``partition``,
``cpus_per_task``, ``time_min``, ``array_parallelism`` (tasks running at once) and
``shards_per_task``, plus any other key of the platform's cluster group (``account``,
``qos``, ``mem_gb``, ``log_dir``, ``setup``...) on top of ``platform/conf/cluster/slurm.yaml``;
checked against the cluster (partition, time limit, CPUs per node) before submission.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from detlab.pipelines.masks.shards import Job, compute, images, span, written
from detlab.platform.job import SlurmJob

SETTINGS = {"partition": None, "cpus_per_task": 1, "time_min": 30, "array_parallelism": 16,
            "shards_per_task": 2}  # fmt: skip
OWN = ("array_parallelism", "shards_per_task")  # the rest are the cluster group's keys
FIXED = ("name", "executor", "nodes", "tasks_per_node")  # a task: one process on one node


class ArrayTaskError(RuntimeError):
    """Array tasks that ended without writing their shards (names each, its state and log);
    every shard written is kept."""


class MaskShardsJob(SlurmJob):
    """One array task: its shards in order, skipping those already written."""

    def run(self, env, stop, init_args: tuple, jobs: list[Job], workers: int) -> dict:
        todo = [job for job in jobs if not written(job)]
        done = sum(1 for _ in compute(todo, init_args, workers, stop=stop))
        print(f"shards {span(jobs)}: {done} written, {len(jobs) - len(todo)} found done, "
              f"{len(todo) - done} left", flush=True)  # fmt: skip
        return {"shards": [job[0] for job in jobs], "left": len(todo) - done}

    def stopped(self, result: dict) -> bool:
        return result["left"] > 0


def cluster_settings(settings: dict | None):
    """``masks.slurm`` -> (the platform's cluster config, array parallelism, shards per
    task); ValueError naming the key that is unknown or of the wrong type."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from detlab.platform.compose import conf_dir
    from detlab.platform.config import ClusterConfig

    settings = {**SETTINGS, **(settings or {})}
    valid = sorted({*OWN, *ClusterConfig.__dataclass_fields__} - set(FIXED))
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise ValueError(f"masks.slurm: unknown keys {unknown}; valid: {valid}")
    for key in OWN:
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ValueError(f"masks.slurm.{key}={settings[key]}: a whole number >= 1")
    profile = OmegaConf.load(conf_dir() / "cluster" / "slurm.yaml")
    try:
        cluster = OmegaConf.merge(OmegaConf.structured(ClusterConfig), profile,
                                  {k: v for k, v in settings.items()
                                   if k not in OWN and v is not None})  # null: the profile's  # fmt: skip
    except OmegaConfBaseException as exc:
        key = f".{exc.full_key}" if getattr(exc, "full_key", None) else ""
        raise ValueError(f"masks.slurm{key}: {str(exc).splitlines()[0]}") from None
    return cluster, settings["array_parallelism"], settings["shards_per_task"]


class MaskArray:
    """Validated at construction (before anything is written or submitted); ``run`` submits
    the missing shards, follows them and raises ``ArrayTaskError`` for tasks that failed."""

    poll_s = 2.0

    def __init__(self, settings: dict | None, name: str):
        from detlab.platform.slurm_query import LaunchError, validate_slurm

        self.cluster, self.parallelism, self.per_task = cluster_settings(settings)
        self.name = name
        try:
            self.cluster.partition = validate_slurm(self.cluster)
        except LaunchError as exc:  # the user wrote masks.slurm.<key>, not cluster.<key>
            raise ValueError(str(exc).replace("cluster.", "masks.slurm.")) from None

    def run(self, jobs: list[Job], init_args: tuple, bar) -> None:
        if not jobs:
            return
        from detlab.platform.launch import build_executor

        method, params, root, split, fmt = init_args  # absolute paths: a task runs elsewhere
        init_args = (method, params, str(Path(root).resolve()), split, fmt)
        jobs = [(k, start, stop, str(Path(folder).resolve())) for k, start, stop, folder in jobs]
        tasks = [jobs[i : i + self.per_task] for i in range(0, len(jobs), self.per_task)]
        folder = Path(self.cluster.log_dir).resolve() / self.name
        executor = build_executor(self.cluster, folder, self.name)
        executor.update_parameters(slurm_array_parallelism=self.parallelism)
        with _cancel_on_exit() as guard:
            submitted = executor.map_array(MaskShardsJob(self.cluster.max_requeues),
                                           [init_args] * len(tasks), tasks,
                                           [self.cluster.cpus_per_task] * len(tasks))  # fmt: skip
            guard.array = array = submitted[0].job_id.split("_")[0]
            print(f"{self.name}: SLURM job array {array}: {len(tasks)} task(s) for "
                  f"{len(jobs)} shard(s), logs in {folder}", flush=True)  # fmt: skip
            states = self.follow(array, submitted, jobs, bar)
        failed = [(job, state, task) for job, state, task in zip(submitted, states, tasks, strict=True)
                  if state != "COMPLETED" or not all(map(written, task))]  # fmt: skip
        if failed:
            left = [job for job in jobs if not written(job)]
            named = [f"task {job.job_id} {state} (shards {span(task)}, log {job.paths.stderr})"
                     for job, state, task in failed[:3]]  # fmt: skip
            more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
            raise ArrayTaskError(
                f"{self.name}: {len(failed)} of {len(tasks)} tasks of SLURM job array {array} "
                f"did not finish: {'; '.join(named)}{more}; the {len(jobs) - len(left)} shards "
                f"written are kept: rerun to compute the {len(left)} missing"
            )

    def follow(self, array: str, submitted: list, jobs: list[Job], bar) -> list[str]:
        """Poll the array's states (one squeue and one sacct call) and the shards on disk
        until every task has ended; the tasks' final states, in order. A task neither
        queued nor recorded (cancelled while pending) counts as CANCELLED."""
        from detlab.platform.slurm_query import FINAL, LaunchError, array_states

        base, fails, states, unseen = bar.n, 0, {}, Counter()
        while True:
            try:
                states, fails = array_states(array, self.cluster), 0
            except LaunchError:  # squeue / sacct unreachable for a moment: keep the last
                fails += 1
                if fails * self.poll_s > 300:
                    raise
            ended = []
            for job in submitted:
                unseen[job.job_id] = 0 if job.job_id in states else unseen[job.job_id] + 1
                gone = "CANCELLED" if unseen[job.job_id] >= 3 else "PENDING"
                ended.append(states.get(job.job_id, gone))
            bar.goto(base + images([job for job in jobs if written(job)]))
            bar.set(tasks=", ".join(f"{k} {s.lower()}" for s, k in Counter(ended).items()))
            if all(state in FINAL for state in ended):
                return ended
            time.sleep(self.poll_s)


class _cancel_on_exit:
    """The array is cancelled if the stage stops while following it (Ctrl-C, TERM from
    `dvc repro`'s end): no task outlives the stage that waits for it. Shards are kept."""

    def __init__(self):
        self.array, self.previous = None, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return self

    def __exit__(self, kind, exc, tb):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        if kind is not None and self.array is not None:
            subprocess.run(["scancel", self.array], capture_output=True, check=False)
        return False

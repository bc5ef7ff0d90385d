"""Asking SLURM's command-line tools: whether a request fits the cluster (before anything is
submitted) and the states of jobs and job-array tasks (while they run). The launcher
(``detlab.platform.launch``), the sweep driver and the mask stage's job arrays all ask
through here; each failure is a ``LaunchError`` of one line naming the command.
"""

from __future__ import annotations

import os
import re
import subprocess

from omegaconf import DictConfig

from detlab.platform.states import FINAL, JobState


class LaunchError(ValueError):
    """A request the cluster cannot satisfy (names the offending key)."""


# ------------------------------------------------------------------ pre-submit validation


def slurm_env(cluster: DictConfig) -> dict:
    env = dict(os.environ)
    if cluster.slurm_conf:
        env["SLURM_CONF"] = str(cluster.slurm_conf)
    return env


def _run(cmd: list[str], cluster: DictConfig) -> str:
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=30, env=slurm_env(cluster)
        )
    except FileNotFoundError:
        raise LaunchError(f"cluster=slurm but `{cmd[0]}` is not installed here") from None
    if out.returncode:  # one line: the last of stderr says why (scontrol: "fatal: ...")
        why = (out.stderr.strip().splitlines() or [f"exit status {out.returncode}"])[-1]
        raise LaunchError(f"`{' '.join(cmd)}` failed: {why}")
    return out.stdout


def parse_partitions(text: str) -> dict[str, dict]:
    """`scontrol show partition -o` -> {name: {key: value}} (one partition per line)."""
    parts = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\S+?)=(\S*)", line))
        if "PartitionName" in fields:
            parts[fields["PartitionName"]] = fields
    return parts


def minutes(limit: str) -> float:
    """SLURM time ([days-]hours:minutes:seconds, minutes, UNLIMITED) -> minutes."""
    if limit in ("UNLIMITED", "INFINITE", ""):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, (m, s) = 0, parts
    else:
        h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + s / 60


def check_request(cluster: DictConfig, partitions: dict[str, dict], gpus_per_node: dict,
                  cpus_per_node: dict | None = None) -> str:  # fmt: skip
    """The partition to use; LaunchError naming the key that does not fit."""
    if not partitions:
        raise LaunchError("the SLURM cluster reports no partitions")
    name = cluster.partition
    if name is None:
        defaults = [p for p, f in partitions.items() if f.get("Default") == "YES"]
        name = defaults[0] if defaults else next(iter(partitions))
    if name not in partitions:
        raise LaunchError(
            f"cluster.partition={name} does not exist; partitions: {sorted(partitions)}"
        )
    part = partitions[name]
    total = int(part.get("TotalNodes", 0))
    if cluster.nodes > total:
        raise LaunchError(f"cluster.nodes={cluster.nodes} but partition {name} has {total} nodes")
    limit = minutes(part.get("MaxTime", "UNLIMITED"))
    if cluster.time_min > limit:
        raise LaunchError(
            f"cluster.time_min={cluster.time_min} exceeds partition {name}'s MaxTime={part['MaxTime']}"
        )
    if cluster.gpus_per_node:
        most = max(gpus_per_node.values() or [0])
        if cluster.gpus_per_node > most:
            raise LaunchError(
                f"cluster.gpus_per_node={cluster.gpus_per_node} but the nodes of {name} have at most {most} GPUs"
            )
    most = max((cpus_per_node or {}).values() or [0])
    if most and cluster.cpus_per_task * cluster.tasks_per_node > most:
        tasks = cluster.tasks_per_node
        per_node = f" x {tasks} tasks per node" if tasks > 1 else ""
        raise LaunchError(
            f"cluster.cpus_per_task={cluster.cpus_per_task}{per_node} but the nodes of {name} have at most {most} CPUs"
        )
    return name


def validate_slurm(cluster: DictConfig) -> str:
    partitions = parse_partitions(_run(["scontrol", "show", "partition", "-o"], cluster))
    nodes = _run(["sinfo", "-h", "-N", "-o", "%N %c %G"], cluster)
    gpus, cpus = {}, {}
    for line in nodes.splitlines():
        node, c, g = (line.split(None, 2) + ["", ""])[:3]
        found = re.search(r"gpu(?::[^:(\s]+)?:(\d+)", g)
        gpus[node] = int(found.group(1)) if found else 0
        cpus[node] = int(c) if c.isdigit() else 0
    return check_request(cluster, partitions, gpus, cpus)


# ------------------------------------------------------------------- job states


def _states(cmd: list[str], cluster: DictConfig) -> dict[str, str]:
    """``id|state`` lines -> {job id: state}; a folded line ``123_[5-9%2]`` -> 123_5...123_9."""
    from submitit.slurm.slurm import read_job_id

    states = {}
    for line in _run(cmd, cluster).splitlines():
        jid, _, state = line.strip().partition("|")
        state = state.split()[0] if state.strip() else JobState.UNKNOWN  # "CANCELLED by 0"
        for main, *tasks in read_job_id(jid) if jid else []:
            ids = [main] if not tasks else range(int(tasks[0]), int(tasks[-1]) + 1)
            states.update({(f"{main}_{t}" if tasks else main): state for t in ids})
    return states


def sacct_states(job_id: str, cluster: DictConfig) -> dict[str, str]:
    """{job id: state} of a job, or of every task of a job array (``123_4``): one call."""
    return _states(["sacct", "-j", str(job_id), "-X", "-n", "-P", "-o", "JobID,State"], cluster)


def array_states(job_id: str, cluster: DictConfig) -> dict[str, str]:
    """{task id: state} of an array's tasks: the queue's (what runs or waits, what ended in
    the last MinJobAge s) and accounting's (no record of a task cancelled while pending),
    whose final states win. A task in neither has left the queue without a record."""
    try:
        queue = _states(["squeue", "-h", "-r", "-t", "all", "-j", str(job_id), "-o", "%i|%T"],
                        cluster)  # fmt: skip
    except LaunchError as exc:  # squeue: "Invalid job id specified" once none is queued
        if "Invalid job id" not in str(exc):
            raise
        queue = {}
    recorded = sacct_states(job_id, cluster)
    return {**queue, **{k: v for k, v in recorded.items() if v in FINAL or k not in queue}}


def sacct_state(job_id: str, cluster: DictConfig) -> str:
    states = sacct_states(job_id, cluster)  # the last line: the latest of a requeued job
    return states.get(str(job_id)) or next(reversed(states.values()), JobState.UNKNOWN)

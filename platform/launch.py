"""Where a run executes: in this process, through submitit's local executor, or as a
(multi-node) SLURM job that checkpoints and requeues itself on timeout or preemption.

Only the platform knows about SLURM: this module validates requests and submits; the job
(``detlab.platform.job.SlurmJob``, shared with sweep workers) turns submitit's environment
into torch's standard variables and calls ``train(cfg)``, which behaves exactly as it does
locally.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import submitit
from omegaconf import DictConfig, OmegaConf

from detlab.platform.compose import to_yaml
from detlab.platform.job import SlurmJob, StopFlag
from detlab.platform.lifecycle import detlab_home
from detlab.platform.progress import Progress
from detlab.platform.slurm_query import LaunchError, sacct_state, slurm_env, validate_slurm
from detlab.platform.states import FINAL, JobState, TrainStatus

# Imports inside functions here are lazy on purpose: `detlab jobs` and the mask stages'
# SLURM arrays import this module without torch (train, checkpoint) or mlflow (tracking).


def registry() -> Path:
    """The list of submitted jobs (job id -> MLflow run, log): $DETLAB_HOME/jobs.jsonl."""
    return detlab_home() / "jobs.jsonl"


# ------------------------------------------------------------------------- the job


class PretrainJob(SlurmJob):
    """A pretraining run in the platform's SLURM job: checkpoints and requeues on USR2 (time
    limit), checkpoints on SIGTERM (preemption, `scontrol requeue`: SLURM requeues it),
    resumes from the checkpoint and continues the same MLflow run."""

    def run(self, env, stop, cfg_yaml: str):
        from detlab.platform.train import resolve_out_dir, train  # lazy: torch

        return train(resolve_out_dir(OmegaConf.create(cfg_yaml)), stop_requested=stop)

    def stopped(self, result) -> bool:
        return result.status == TrainStatus.STOPPED


def local_executor(cluster: DictConfig) -> submitit.Executor:
    """submitit's local executor: a job in its own process, logs under cluster.log_dir."""
    ex = submitit.LocalExecutor(folder=str(Path(cluster.log_dir) / "%j"))
    ex.update_parameters(timeout_min=cluster.time_min)
    return ex


def build_executor(cluster: DictConfig, folder: Path, name: str) -> submitit.Executor:
    """submitit's SLURM executor with the cluster group's resources."""
    os.environ.update(slurm_env(cluster))
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    extra = {k: v for k, v in {"account": cluster.account, "qos": cluster.qos,
                               "constraint": cluster.constraint}.items() if v}  # fmt: skip
    ex.update_parameters(
        name=name,
        nodes=cluster.nodes,
        tasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task,
        gpus_per_node=cluster.gpus_per_node or None,
        timeout_min=cluster.time_min,
        slurm_partition=cluster.partition,
        slurm_signal_delay_s=cluster.signal_delay_s,
        slurm_setup=list(cluster.setup),
        slurm_srun_args=list(cluster.srun_args),
        slurm_additional_parameters=extra,
        **({"mem_gb": cluster.mem_gb} if cluster.mem_gb else {}),
    )
    return ex


def register(entry: dict) -> None:
    registry().parent.mkdir(parents=True, exist_ok=True)
    with registry().open("a") as f:
        f.write(json.dumps(entry) + "\n")


def resumed_run_id(cfg: DictConfig) -> str | None:
    """The MLflow run of the checkpoint this submission will resume (resubmitting a job
    that was killed, OOM-killed or cancelled continues its run instead of opening a second
    one); a checkpoint another run wrote is refused here, before anything is queued."""
    from detlab.platform import checkpoint as ckpt  # lazy: torch

    path = Path(cfg.train.out_dir) / "checkpoint.pt"
    if not (cfg.train.resume and path.exists()):
        return None
    state = ckpt.load(path)
    ckpt.check_resumable(state, cfg, path)
    return state.get("run_id")


def submit(cfg: DictConfig):
    """Validate, create the MLflow run, submit; returns (job, run_id)."""
    from detlab.platform.tracking import create_run, set_tags  # lazy: mlflow
    from detlab.platform.train import resolve_out_dir, resolve_run_name  # lazy: torch

    partition = validate_slurm(cfg.cluster)
    cfg = OmegaConf.merge(cfg, {"cluster": {"partition": partition}})
    cfg = resolve_run_name(resolve_out_dir(cfg))
    out_dir = Path(cfg.train.out_dir).resolve()
    cfg = OmegaConf.merge(cfg, {"train": {"out_dir": str(out_dir), "progress": False}})
    if not cfg.tracking.run_id:  # created here so a requeued job never makes a second one
        run_id = resumed_run_id(cfg) or create_run(
            cfg.tracking, {"launcher": "slurm", "method": cfg.method.name}
        )
        cfg = OmegaConf.merge(cfg, {"tracking": {"run_id": run_id}})
    ex = build_executor(
        cfg.cluster, Path(cfg.cluster.log_dir).resolve(), f"detlab-{cfg.method.name}"
    )
    job = ex.submit(PretrainJob(cfg.cluster.max_requeues), to_yaml(cfg))
    set_tags(cfg.tracking.uri, cfg.tracking.run_id, {"detlab.slurm_job": job.job_id})
    register({"job_id": job.job_id, "run_id": cfg.tracking.run_id, "uri": cfg.tracking.uri,
              "log": str(job.paths.stdout).replace("%t", "0"), "out_dir": str(out_dir),
              "method": cfg.method.name, "submitted": time.time()})  # fmt: skip
    return job, cfg.tracking.run_id


def follow(job, run_id: str, cfg: DictConfig) -> str:
    """Wait for the job's final SLURM state (through requeues) with a progress bar; a run
    that its failed job left RUNNING is ended with the reason."""
    from detlab.platform.tracking import metric_history  # lazy: mlflow

    bar = Progress(cfg.train.steps, f"job {job.job_id}")
    state = JobState.PENDING
    while True:
        state = sacct_state(job.job_id, cfg.cluster)
        hist = metric_history(cfg.tracking.uri, run_id, "loss") if run_id else []
        bar.set(state=state)
        bar.goto(max([step for step, _ in hist], default=0))
        if state in FINAL:
            bar.close()
            if state != JobState.COMPLETED:  # a job killed hard could not close its run
                reconcile(cfg.tracking.uri, cfg.cluster, [cfg.tracking.experiment])
            return state
        time.sleep(2)


def wait(job, run_id: str, cfg: DictConfig) -> None:
    """Follow a submitted job to its end; an error naming its log unless it COMPLETED."""
    state = follow(job, run_id, cfg)
    if state != JobState.COMPLETED:
        raise RuntimeError(f"SLURM job {job.job_id} ended {state}: see {job.paths.stdout}")


# ---------------------------------------------------------------------------- commands


def run_local(cfg: DictConfig) -> int:
    """`detlab pretrain` in this process (or a local submitit job's): the facade's run,
    printed; SIGTERM / SIGUSR2 stop it at a step boundary with a checkpoint."""
    from detlab.platform.checkpoint import CheckpointError  # lazy: torch
    from detlab.platform.train import resolve_out_dir, train  # lazy: torch

    try:  # the facade's run in this process (detlab.platform.run.pretrain, here=True)
        result = train(resolve_out_dir(cfg), stop_requested=StopFlag().install())
    except CheckpointError as exc:
        print(f"detlab pretrain: {exc}", file=sys.stderr)
        return 2
    print(f"{result.status} at step {result.step}: checkpoint {result.checkpoint}, "
          f"MLflow run {result.run_id} ({cfg.tracking.uri})")  # fmt: skip
    return 0 if result.status == TrainStatus.COMPLETED else 1


def pretrain_command(cfg: DictConfig, wait: bool = False) -> int:
    from detlab.platform.train import resolve_out_dir  # lazy: torch

    cfg = resolve_out_dir(cfg)  # fixed now: a local submitit job or a requeue keeps it
    if cfg.cluster.name != "slurm":
        if cfg.cluster.executor == "submitit":
            job = local_executor(cfg.cluster).submit(run_local, cfg)
            print(f"local job {job.job_id}: logs {job.paths.stdout}")
            return job.result() if wait else 0
        return run_local(cfg)
    try:
        job, run_id = submit(cfg)
    except LaunchError as exc:
        print(f"detlab pretrain: {exc}", file=sys.stderr)
        return 2
    print(f"submitted SLURM job {job.job_id} ({cfg.cluster.nodes} node(s))")
    print(f"  logs:   {job.paths.stdout}".replace("%t", "0"))
    print(f"  MLflow: run {run_id} at {cfg.tracking.uri}")
    print("  follow: detlab jobs   (or rerun with --wait)")
    if wait:
        state = follow(job, run_id, cfg)
        print(f"job {job.job_id}: {state}")
        return 0 if state == JobState.COMPLETED else 1
    return 0


def reconcile(uri: str, cluster: DictConfig, experiments: list[str] | None = None) -> list:
    """End the RUNNING MLflow runs whose SLURM job or local process is gone (FAILED or
    KILLED, the reason as a tag; see ``reconcile.stale_verdict``). Printed, and returned as
    (run id, status, reason)."""
    from detlab.platform.reconcile import reconcile as end_stale  # lazy: mlflow

    def job_state(job_id: str) -> str | None:
        try:
            return sacct_state(job_id, cluster)
        except LaunchError:  # no SLURM here: leave the run alone
            return None

    ended = end_stale(uri, job_state, experiments)
    for run_id, status, reason in ended:
        print(f"MLflow run {run_id} was left RUNNING: marked {status} ({reason})")
    return ended


def store_reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """An http(s) tracking server answers its health check (MLflow's own client would retry
    a dead one for minutes); other stores count as reachable."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s)
        return True
    except OSError:
        return False


def jobs_command(cfg: DictConfig) -> int:
    """detlab's jobs with their SLURM state (sacct), MLflow run status and log path. Runs
    left RUNNING by a job or process that is gone are marked FAILED/KILLED first."""
    from detlab.platform.reconcile import replay_spills  # lazy: mlflow
    from detlab.platform.tracking import get_run  # lazy: mlflow

    entries = []
    if registry().exists():
        entries = [json.loads(x) for x in registry().read_text().splitlines() if x.strip()]
    reachable = set()
    for uri in dict.fromkeys([cfg.tracking.uri, *(e["uri"] for e in entries)]):
        if not store_reachable(uri):  # a server that is gone must not stop the listing
            print(f"MLflow store {uri} does not answer: its runs are not checked", file=sys.stderr)
            continue
        reachable.add(uri)
        reconcile(uri, cfg.cluster)
    for run_id, n, what in replay_spills():  # records a store outage kept on disk
        print(f"MLflow run {run_id}: {n} tracking records that waited on disk: {what}")
    if not entries:
        print("no detlab jobs submitted yet")
        return 0
    print(f"{'job':>8}  {'state':<12} {'method':<10} {'MLflow run':<34} {'run status':<10} log")
    for e in entries[-50:]:
        try:
            state = sacct_state(e["job_id"], cfg.cluster)
        except LaunchError:
            state = JobState.UNKNOWN
        run_status = "?"
        if e["uri"] in reachable:
            with contextlib.suppress(Exception):  # a run deleted from its store
                run_status = get_run(e["uri"], e["run_id"]).status
        print(f"{e['job_id']:>8}  {state:<12} {e['method']:<10} {e['run_id']:<34} "
              f"{run_status:<10} {e['log']}")  # fmt: skip
    return 0

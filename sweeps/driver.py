"""`detlab sweep sweep=<name> [overrides]`: create or resume an Optuna study, start its
workers (local processes or a SLURM job array) and return; `detlab sweep status` reports.

Every trial is enqueued here, once (grid points with their parameters, other sweeps as
empty trials the sampler fills in when a worker claims them): the budget is exact with
any number of workers, and re-running the command after everything was killed simply
starts workers again on what is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from detlab.platform.compose import flatten, group_options
from detlab.platform.launch import build_executor, reconcile
from detlab.platform.progress import Progress
from detlab.platform.slurm_query import LaunchError, validate_slurm
from detlab.platform.states import RunStatus
from detlab.platform.tracking import (
    RunLogger,
    create_run,
    end_run,
    log_artifact,
    log_metrics,
    mark_running,
    set_tags,
)
from detlab.sweeps.optuna_setup import build_pruner, build_sampler
from detlab.sweeps.slurm_worker import SweepWorkerJob
from detlab.sweeps.space import (
    SweepError,
    compose_trial,
    grid_points,
    merge_overrides,
    normalise_params,
    validate_space,
)
from detlab.sweeps.storage import open_storage, storage_url, warn_if_unsafe_for_cluster

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def user_overrides(overrides: list[str]) -> list[str]:
    """The command line minus the sweep's own keys: what every trial inherits."""
    return [o for o in overrides if not o.split("=", 1)[0].lstrip("+~").startswith("sweep")]


def prepare(cfg: DictConfig, overrides: list[str]):
    """Validate everything before anything runs; return (sweep, base cfg, storage url)."""
    if cfg.sweep is None:
        raise SweepError(f"choose a sweep: sweep=<{'|'.join(group_options('sweep'))}>")
    sweep = normalise_params(cfg.sweep)
    base = compose_trial(merge_overrides(sweep.base_overrides, user_overrides(overrides)))
    validate_space(sweep, base)
    url = storage_url(sweep.storage, Path(sweep.out_dir))
    return sweep, base, url


def create_or_resume(sweep: DictConfig, base: DictConfig, url: str, overrides: list[str]):
    """The study with its MLflow parent run and every trial enqueued exactly once."""
    storage = open_storage(url)
    study = optuna.create_study(
        study_name=sweep.name,
        storage=storage,
        sampler=build_sampler(sweep),
        pruner=build_pruner(sweep, base.train.steps),
        direction=sweep.direction,
        load_if_exists=True,
    )
    definition = OmegaConf.to_container(sweep, resolve=True)
    attrs = study.user_attrs
    if "definition" in attrs:
        if attrs["definition"]["params"] != definition["params"]:
            raise SweepError(
                f"study {sweep.name!r} in {url} was created with other params "
                f"({sorted(attrs['definition']['params'])}): set sweep.name to start a new one"
            )
    else:
        tracking = OmegaConf.merge(
            base.tracking, {"experiment": f"sweep-{sweep.name}", "run_name": sweep.name}
        )
        parent = create_run(tracking, {"detlab.sweep": sweep.name, "optuna.storage": url})
        logger = RunLogger(OmegaConf.merge(tracking, {"run_id": parent}))
        logger.log_params(
            {f"sweep.{k}": v for k, v in flatten(OmegaConf.create(definition)).items()}
        )
        logger.log_text(OmegaConf.to_yaml(sweep), "sweep.yaml")
        for key, value in {
            "definition": definition,
            "overrides": user_overrides(overrides),
            "out_dir": str(Path(sweep.out_dir).resolve()),
            "tracking_uri": base.tracking.uri,
            "experiment": tracking.experiment,
            "parent_run_id": parent,
            "steps": int(base.train.steps),
            "enqueued": 0,
        }.items():
            study.set_user_attr(key, value)
    study.set_user_attr("definition", definition)  # budget / workers may change on resume
    enqueued = study.user_attrs["enqueued"]
    if sweep.grid:
        points = grid_points(sweep)
        for point in points[enqueued:]:
            study.enqueue_trial(point)
        study.set_user_attr("enqueued", max(enqueued, len(points)))
    else:
        for _ in range(enqueued, sweep.n_trials):
            study.enqueue_trial({})
        study.set_user_attr("enqueued", max(enqueued, int(sweep.n_trials)))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if waiting:  # a resumed sweep with work left: its parent runs again until status ends it
        mark_running(study.user_attrs["tracking_uri"], study.user_attrs["parent_run_id"])
    return study


def start_local_workers(study, url: str, n: int, out_dir: Path) -> list[subprocess.Popen]:
    logs = out_dir / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    launch = time.strftime("%Y%m%d-%H%M%S")  # unique per launch: never two live owners
    for i in range(n):
        worker_id = f"local-{launch}-{i}"
        log = open(logs / f"{worker_id}.log", "ab")  # noqa: SIM115 (owned by the child)
        cmd = [sys.executable, "-m", "detlab.sweeps.worker", "--storage", url]
        cmd += ["--study", study.study_name, "--worker-id", worker_id]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        procs.append(
            subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        )
    return procs


def start_slurm_workers(study, url: str, cfg: DictConfig, n: int, out_dir: Path) -> list:
    """A job array of ``n`` workers; each task is a SLURM job with the trial's resources."""
    partition = validate_slurm(cfg.cluster)  # impossible requests fail before submission
    cluster = OmegaConf.merge(cfg.cluster, {"partition": partition})
    executor = build_executor(cluster, out_dir / "slurm", name=f"sweep-{study.study_name}")
    return executor.map_array(
        SweepWorkerJob(url, study.study_name, cluster.max_requeues),
        [f"slurm-{i}" for i in range(n)],
    )


def follow(study: optuna.Study, workers_alive) -> None:
    """Progress bar until no trial is waiting or running and no worker is alive."""
    total = len(study.get_trials(deepcopy=False)) or 1
    bar = Progress(total, f"sweep {study.study_name}", unit="trial")
    try:
        while True:
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in FINISHED for t in trials)
            bar.goto(done, total=sum(t.state != TrialState.FAIL for t in trials))
            active = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
            alive = workers_alive()
            if not active and not alive:
                return
            if not alive and active:
                raise SweepError("all workers ended while trials remain: see the worker logs")
            time.sleep(1.0)
    finally:
        bar.close()


def status(study: optuna.Study, log_plots: bool = True) -> dict:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    out = {"study": study.study_name, "states": dict(counts), "best": None}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        out["best"] = {"trial": best.number, "value": best.value, "params": best.params}
    out["running"] = [
        {"trial": t.number, "params": t.params, "mlflow_run_id": t.user_attrs.get("mlflow_run_id")}
        for t in trials
        if t.state == TrialState.RUNNING
    ]
    if log_plots and len(done) >= 2:
        out["plots"] = log_study_plots(study)
    end_parent(study, out)
    return out


def end_parent(study: optuna.Study, info: dict) -> None:
    """Once no trial waits or runs, the sweep's MLflow parent run ends (FINISHED with the
    best trial's value, number and params; FAILED when no trial completed). A resumed sweep
    reopens it when its workers log again."""
    states = info["states"]
    if states.get("WAITING") or states.get("RUNNING") or "parent_run_id" not in study.user_attrs:
        return
    uri, parent = study.user_attrs["tracking_uri"], study.user_attrs["parent_run_id"]
    best = info["best"]
    if best:
        log_metrics(uri, parent, {"best_value": best["value"]})
        set_tags(uri, parent, {"best_trial": best["trial"],
                               "best_params": json.dumps(best["params"], sort_keys=True)})  # fmt: skip
    end_run(uri, parent, status=RunStatus.FINISHED if best else RunStatus.FAILED)


def end_stale_runs(study: optuna.Study, cluster: DictConfig) -> None:
    """Trial runs left RUNNING by a worker that died (kill -9, OOM) and was not retried end
    KILLED/FAILED with the reason; a retried trial reopens its run."""
    if "tracking_uri" in study.user_attrs:
        reconcile(study.user_attrs["tracking_uri"], cluster, [study.user_attrs["experiment"]])


def log_study_plots(study: optuna.Study) -> list[str]:
    """Optimisation history and parameter importances as PNGs on the parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    from optuna.visualization import matplotlib as ovm

    folder = Path(study.user_attrs["out_dir"]) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        for name, plot in (
            ("optimization_history", ovm.plot_optimization_history),
            ("param_importances", ovm.plot_param_importances),
        ):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError):  # e.g. importances need >1 distinct value
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            written.append(str(path))
    for path in written:
        log_artifact(study.user_attrs["tracking_uri"], study.user_attrs["parent_run_id"], path,
                     "plots")  # fmt: skip
    return written


def print_status(info: dict) -> None:
    print(f"study {info['study']}: " + ", ".join(f"{k} {v}" for k, v in info["states"].items()))
    if info["best"]:
        b = info["best"]
        print(f"best: trial {b['trial']} value {b['value']:.4f} params {json.dumps(b['params'])}")
    for r in info["running"]:
        print(f"running: trial {r['trial']} {r['params']} (MLflow {r['mlflow_run_id']})")


def sweep_command(cfg: DictConfig, sub: str = "run", wait: bool = False, overrides=()) -> int:
    overrides = list(overrides)
    try:
        sweep, base, url = prepare(cfg, overrides)
        if sub == "status":
            try:
                study = optuna.load_study(study_name=sweep.name, storage=open_storage(url))
            except KeyError:  # optuna: "Record does not exist."
                raise SweepError(
                    f"no sweep named {sweep.name!r} in {url}: start it with "
                    f"`detlab sweep sweep={sweep.name}` (same sweep.storage / sweep.out_dir)"
                ) from None
            end_stale_runs(study, cfg.cluster)
            print_status(status(study))
            return 0
        warning = warn_if_unsafe_for_cluster(url, cfg.cluster.name)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        study = create_or_resume(sweep, base, url, overrides)
        end_stale_runs(study, cfg.cluster)
    except SweepError as exc:
        print(f"detlab sweep: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(study.user_attrs["out_dir"])
    left = sum(
        t.state in (TrialState.WAITING, TrialState.RUNNING)
        for t in study.get_trials(deepcopy=False)
    )
    n = min(int(sweep.n_workers), max(left, 1))
    print(f"study {sweep.name} ({url}): {left} trials to run, {n} workers")
    print(
        f"MLflow parent run {study.user_attrs['parent_run_id']} ({study.user_attrs['tracking_uri']})"
    )
    if sub == "worker":
        from detlab.sweeps.worker import work  # lazy: torch (`sweep status` stays torch-free)

        print(work(url, sweep.name, "inline"))
        return 0
    if cfg.cluster.name == "slurm":
        try:
            jobs = start_slurm_workers(study, url, cfg, n, out_dir)
        except LaunchError as exc:
            print(f"detlab sweep: {exc}", file=sys.stderr)
            return 2
        print(f"submitted worker job array: {', '.join(j.job_id for j in jobs)}")
        print(f"  logs: {out_dir / 'slurm'}")

        def alive() -> bool:
            return any(not j.done() for j in jobs)
    else:
        procs = start_local_workers(study, url, n, out_dir)
        print(f"started local workers: pids {[p.pid for p in procs]} (logs {out_dir}/workers)")

        def alive() -> bool:
            return any(p.poll() is None for p in procs)

    print(f"watch: detlab sweep status sweep={sweep.name}")
    if wait:
        follow(study, alive)
        info = status(study)
        print_status(info)
        failed = info["states"].get("WAITING", 0) + info["states"].get("RUNNING", 0)
        return 1 if failed else 0
    return 0

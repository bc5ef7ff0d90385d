"""A sweep worker: claim a trial -> compose its config -> pretrain (kNN reports feed the
pruner) -> evaluate -> tell; until the study's trials are all done.

Every trial is created up front by the driver (enqueued), so workers only ever *claim*
waiting trials (an atomic WAITING -> RUNNING switch in the storage): the budget is exact and
grid points run once however many workers there are. ``study.ask()`` is not used for the
claim because it creates a new trial when the queue is empty (the budget would drift), so
workers switch the state through the public ``BaseStorage`` interface of the storage they
opened, exactly as ``ask()`` does internally.

Workers beat a heartbeat into their running trial from the moment of the claim (written
*before* the RUNNING switch, so no observer ever sees a running trial without a fresh beat);
a trial silent for 3 beats is failed by any other worker and re-enqueued
(``RetryHeartbeatStaleTrialCallback``); its retry trains in the same folder (keyed by the first
trial of the retry chain) and continues the same MLflow run, so it resumes from the last
checkpoint instead of starting over. A worker whose trial was finished by someone else (failed
as stale while the worker was frozen, say) stops training at the next step and moves on to the
next trial: a claim conflict never kills a worker.

``python -m detlab.sweeps.worker --storage URL --study NAME --worker-id ID``

The platform (torch, mlflow) is imported at the top, so that the heavy imports happen
before the first claim, not between a claim and its first beat; the driver imports this
module only when it runs a worker inline (``detlab sweep status`` stays torch-free).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from detlab.platform.compose import to_yaml
from detlab.platform.run import evaluate, pretrain
from detlab.platform.states import TrainStatus
from detlab.platform.tracking import create_run, log_metrics, set_tags
from detlab.sweeps.optuna_setup import build_pruner, build_sampler
from detlab.sweeps.space import compose_trial, merge_overrides, suggest, to_overrides
from detlab.sweeps.storage import open_storage

HEARTBEAT = "detlab_heartbeat"


class TrialLost(Exception):
    """The trial was finished by someone else (failed as stale) while this worker ran it."""


class Heartbeat:
    """Writes a timestamp into the trial's system attrs every ``interval`` seconds and
    notices when the trial stops being RUNNING under this worker (``lost``)."""

    def __init__(self, storage: BaseStorage, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.errors = 0  # beats the storage refused (each logged; the next beat retries)
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())
            except UpdateFinishedTrialError:
                self.lost.set()
                return
            except Exception as e:  # a storage hiccup: counted, logged, retried next beat
                self.errors += 1
                print(f"[heartbeat] trial {self.trial_id}: beat {self.errors} failed "
                      f"({type(e).__name__}: {e}); retrying in {self.interval:g} s",
                      file=sys.stderr, flush=True)  # fmt: skip
            self.stop.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def last_beat(t: optuna.trial.FrozenTrial) -> float:
    """When the trial last showed life: its newest heartbeat, or its claim (a retry inherits
    its failed parent's old heartbeat, which predates the retry's own start)."""
    started = t.datetime_start.timestamp() if t.datetime_start else 0.0
    return max(float(t.system_attrs.get(HEARTBEAT, 0.0)), started)


def fail_stale_trials(
    study: optuna.Study, storage: BaseStorage, grace_s: float, max_retries: int
) -> list[int]:
    """Fail RUNNING trials silent for more than ``grace_s`` and re-enqueue them."""
    failed = []
    retry = RetryHeartbeatStaleTrialCallback(
        max_retry=max_retries, inherit_intermediate_values=True
    )
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if time.time() - last_beat(t) <= grace_s:
            continue
        fresh = storage.get_trial(t._trial_id)  # re-read: it may have beaten meanwhile
        if fresh.state != TrialState.RUNNING or time.time() - last_beat(fresh) <= grace_s:
            continue
        try:
            storage.set_trial_system_attr(t._trial_id, "fail_reason", "no heartbeat")
            won = storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker failed it first
            continue
        if won:
            retry(study, storage.get_trial(t._trial_id))
            failed.append(t.number)
    return failed


@contextlib.contextmanager
def claim_lock(storage_url: str):
    """SQLite ignores SELECT ... FOR UPDATE, so two workers can both flip the same trial
    WAITING -> RUNNING (seen in a test). SQLite lives on one machine: serialise claims with
    a file lock next to it. Journal files (Optuna's own lock) and PostgreSQL (row locks)
    are atomic already."""
    if not storage_url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    path = storage_url[len("sqlite:///") :] + ".claim.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claim(study: optuna.Study, storage: BaseStorage) -> int | None:
    """Atomically take one WAITING trial (WAITING -> RUNNING); None when there is none.

    The heartbeat is written first, so a trial is never seen RUNNING with a stale beat (a
    retry inherits its parent's old one); losing the switch to another worker is harmless."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            storage.set_trial_system_attr(t._trial_id, HEARTBEAT, time.time())
            if storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):
                return t._trial_id
        except UpdateFinishedTrialError:  # finished concurrently (failed, or told)
            continue
    return None


def root_number(storage: BaseStorage, trial_id: int, number: int) -> int:
    """The first trial of a retry chain: retries train in its folder and MLflow run."""
    history = RetryHeartbeatStaleTrialCallback.retry_history(storage.get_trial(trial_id))
    return history[0] if history else number


def objective_value(cfg, result, objective: str) -> tuple[float, dict[str, float]]:
    """The final monitor metric, or a downstream protocol run on the trained backbone."""
    if objective in result.metrics:
        return float(result.metrics[objective]), {}
    protocol = objective.split("_", 1)[0]  # probes at the trial's pretraining resolution
    eval_cfg = OmegaConf.merge(cfg.eval, {"name": protocol})
    metrics = evaluate(eval_cfg, cfg.data, cfg.backbone, result.checkpoint,
                       device=cfg.train.device)  # fmt: skip
    if objective not in metrics:
        raise KeyError(f"sweep.objective={objective} is not among {sorted(metrics)}")
    return float(metrics[objective]), metrics


def run_trial(
    study: optuna.Study,
    storage: BaseStorage,
    trial_id: int,
    worker_id: str,
    beat: Heartbeat,
    publish=None,
    stop_requested=None,
) -> TrialState | None:
    """Train, evaluate and tell one claimed trial; None when the trial was lost (finished by
    another worker meanwhile: this worker stops training and leaves the trial to its retry).

    ``publish(cfg_yaml, port)``: multi-task trials hand the composed config to the other
    ranks (see ``detlab.sweeps.slurm_worker``) before training."""
    number = storage.get_trial(trial_id).number
    try:
        return _run_trial(
            study, storage, trial_id, number, worker_id, beat, publish, stop_requested
        )
    except (UpdateFinishedTrialError, TrialLost):
        print(
            f"[worker {worker_id}] trial {number} was finished by another worker "
            "(failed as stale): left to its retry, claiming the next one",
            flush=True,
        )
        return None


def _run_trial(study, storage, trial_id, number, worker_id, beat, publish, stop_requested):
    attrs = study.user_attrs
    sweep = OmegaConf.create(attrs["definition"])
    out = Path(attrs["out_dir"])
    study.sampler = build_sampler(sweep, number)
    trial = optuna.Trial(study, trial_id)  # what study.ask() builds for a popped trial
    (out / "workers").mkdir(parents=True, exist_ok=True)
    (out / "workers" / f"{worker_id}.json").write_text(json.dumps({"trial_id": trial_id}))
    values = suggest(trial, sweep)
    root = root_number(storage, trial_id, number)
    run_id = trial.user_attrs.get("mlflow_run_id")
    overrides = merge_overrides(
        sweep.base_overrides,
        attrs["overrides"],
        to_overrides(values, sweep),
        [
            f"train.out_dir={out / 'trials' / str(root)}",
            f"tracking.uri={attrs['tracking_uri']}",
            f"tracking.experiment={attrs['experiment']}",
            f"tracking.parent_run_id={attrs['parent_run_id']}",
            f"tracking.run_name=trial-{root}",
            "train.progress=false",
        ],
    )
    cfg = compose_trial(overrides)
    every = sweep.monitor_every or max(1, cfg.train.steps // 4)
    cfg.train.knn_every = every
    if run_id is None:
        tags = {"optuna.trial": str(number), "detlab.sweep": sweep.name}
        run_id = create_run(cfg.tracking, tags)
        trial.set_user_attr("mlflow_run_id", run_id)
    cfg.tracking.run_id = run_id
    uri = cfg.tracking.uri
    set_tags(uri, run_id, {**{f"param.{k}": v for k, v in values.items()},
                           "optuna.trial_number": number})  # fmt: skip
    if publish is not None:  # rank 0 of a multi-task trial: same config, fresh port
        port = 20000 + (hash(worker_id) % 9000) + number % 1000
        os.environ["MASTER_PORT"] = str(port)
        publish(to_yaml(cfg), port)

    def report(step: int, metrics: dict[str, float]) -> str | None:
        if sweep.direction == "maximize" and "knn_top1" in metrics:
            trial.report(metrics["knn_top1"], step)
            if trial.should_prune():  # train() ends the run as "halted" with this reason
                return f"pruned at step {step}: knn_top1={metrics['knn_top1']}"
        return None

    def stop() -> bool:  # preemption (the caller's signal) or the trial lost to a retry
        return beat.lost.is_set() or bool(stop_requested and stop_requested())

    try:
        result = pretrain(cfg, here=True, on_metrics=report, stop_requested=stop)
        if beat.lost.is_set():
            raise TrialLost(number)
        if result.status == TrainStatus.STOPPED:  # preempted: checkpointed, the trial stays RUNNING
            return TrialState.RUNNING
        if result.status == TrainStatus.HALTED:  # pruned by report()
            study.tell(trial, state=TrialState.PRUNED)
            set_tags(uri, run_id, {"optuna.state": "PRUNED"})
            return TrialState.PRUNED
        value, extra = objective_value(cfg, result, sweep.objective)
    except (UpdateFinishedTrialError, TrialLost):
        raise
    except Exception as exc:
        if beat.lost.is_set():
            raise TrialLost(number) from exc
        storage.set_trial_system_attr(trial_id, "fail_reason", f"{exc}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        set_tags(uri, run_id, {"optuna.state": "FAIL"})
        RetryHeartbeatStaleTrialCallback(sweep.max_retries, inherit_intermediate_values=True)(
            study, storage.get_trial(trial_id)
        )
        print(f"[worker {worker_id}] trial {number} failed: {exc}", flush=True)
        return TrialState.FAIL
    log_metrics(uri, run_id, extra)  # downstream metrics of the objective's protocol
    study.tell(trial, value)
    set_tags(uri, run_id, {"optuna.state": "COMPLETE"})
    log_metrics(uri, run_id, {"objective": value})
    update_parent(study)
    print(f"[worker {worker_id}] trial {number} {values} -> {value:.4f}", flush=True)
    return TrialState.COMPLETE


def update_parent(study: optuna.Study) -> None:
    """Best value so far (one point per finished trial) and best params on the parent run."""
    uri, parent = study.user_attrs["tracking_uri"], study.user_attrs["parent_run_id"]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return
    best = study.best_trial
    log_metrics(uri, parent, {"best_value": best.value}, step=len(done))
    set_tags(uri, parent, {"best_params": json.dumps(best.params), "best_trial": best.number})


def work(
    storage_url: str,
    study_name: str,
    worker_id: str,
    poll_s: float = 2.0,
    publish=None,
    stop_requested=None,
) -> dict:
    """The worker loop; returns counts of what this worker did (LOST: trials finished by
    another worker while this one ran them)."""
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    sweep = study.user_attrs["definition"]
    definition = OmegaConf.create(sweep)
    study.sampler = build_sampler(definition)
    study.pruner = build_pruner(definition, int(study.user_attrs["steps"]))
    interval = float(sweep["heartbeat_s"])
    done = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "LOST": 0}
    state_file = Path(study.user_attrs["out_dir"]) / "workers" / f"{worker_id}.json"
    resume = None
    if state_file.exists():  # a requeued worker continues its own running trial
        tid = json.loads(state_file.read_text())["trial_id"]
        if storage.get_trial(tid).state == TrialState.RUNNING:
            resume = tid  # renew its heartbeat first, or this very loop would fail it as stale
            storage.set_trial_system_attr(tid, HEARTBEAT, time.time())
    while True:
        with claim_lock(storage_url):  # stale checks and claims never interleave on SQLite
            fail_stale_trials(study, storage, 3 * interval, int(sweep["max_retries"]))
            trial_id = resume if resume is not None else claim(study, storage)
        resume = None
        if trial_id is not None:
            with Heartbeat(storage, trial_id, interval) as beat:
                state = run_trial(
                    study, storage, trial_id, worker_id, beat, publish, stop_requested
                )
            if state is None:
                done["LOST"] += 1
                continue
            if state == TrialState.RUNNING:  # stopped for a requeue: the job resumes it
                done["STOPPED"] = trial_id
                return done
            done[state.name] += 1
            continue
        if study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            time.sleep(poll_s)  # others may still die and leave retries behind
            continue
        return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--worker-id", required=True)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"[worker {args.worker_id}] done: {work(args.storage, args.study, args.worker_id)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

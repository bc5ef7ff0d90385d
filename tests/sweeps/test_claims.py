"""Trial claims and heartbeats on real Optuna storage, training faked: a stale check never
fails a freshly claimed trial, and a trial lost to another worker never kills a worker."""

from __future__ import annotations

import time
from collections import Counter
from unittest import mock

import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from detlab.platform.compose import compose
from detlab.platform.train import TrainResult
from detlab.sweeps import worker
from detlab.sweeps.driver import create_or_resume, prepare
from detlab.sweeps.storage import open_storage


@pytest.fixture
def grid_study(tmp_path):
    """A 4-point grid study (enqueued, not run) on SQLite; returns (url, study)."""
    overrides = [
        "sweep=mask_quality_grid",
        "sweep.name=c",
        f"sweep.out_dir={tmp_path}/sweep",
        f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
        "backbone=tiny",
        "sweep.heartbeat_s=0.2",
        "sweep.params.masks.choices=[grid,global]",
        "sweep.objective=knn_top1",
    ]
    sweep, base, url = prepare(compose(overrides), overrides)
    return url, create_or_resume(sweep, base, url, overrides)


def test_retry_with_an_old_inherited_beat_is_not_stale(grid_study):
    url, study = grid_study
    storage = open_storage(url)
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    # a retry carries its failed parent's heartbeat, long past
    storage.set_trial_system_attr(waiting._trial_id, worker.HEARTBEAT, time.time() - 3600)
    worker.claim(study, storage)
    assert worker.fail_stale_trials(study, storage, grace_s=60, max_retries=1) == []
    (running,) = study.get_trials(states=(TrialState.RUNNING,))
    assert running.number == waiting.number
    assert time.time() - running.system_attrs[worker.HEARTBEAT] < 60  # beat renewed first


def test_a_silent_trial_is_failed_once_and_retried(grid_study):
    url, study = grid_study
    storage = open_storage(url)
    tid = worker.claim(study, storage)
    time.sleep(0.3)
    assert worker.fail_stale_trials(study, storage, grace_s=0.1, max_retries=1) == [0]
    assert worker.fail_stale_trials(study, storage, grace_s=0.1, max_retries=1) == []
    assert storage.get_trial(tid).state == TrialState.FAIL
    retried = [RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in study.get_trials()]
    assert [n for n in retried if n is not None] == [0]


def test_claims_never_hand_out_a_trial_twice(grid_study):
    url, study = grid_study
    storage = open_storage(url)
    claimed = [worker.claim(study, storage) for _ in range(5)]
    assert claimed[-1] is None and len(set(claimed[:4])) == 4


def test_a_lost_trial_does_not_kill_the_worker(grid_study):
    """While the worker trains trial 0, another worker fails it as stale (a frozen machine,
    say): the worker notices through its heartbeat, stops training, and goes on claiming;
    the grid still ends with exactly one COMPLETE trial per point."""
    url, study = grid_study
    storage = open_storage(url)
    calls = Counter()

    def fake_train(cfg, on_metrics=None, stop_requested=None, **kw):
        calls["train"] += 1
        if calls["train"] == 1:  # someone else declares this trial dead and re-enqueues it
            (t,) = study.get_trials(states=(TrialState.RUNNING,))
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            RetryHeartbeatStaleTrialCallback(1)(study, storage.get_trial(t._trial_id))
            deadline = time.time() + 10
            while not stop_requested() and time.time() < deadline:
                time.sleep(0.05)
            assert stop_requested(), "the heartbeat should notice the lost trial"
            return TrainResult("stopped", 1, cfg.tracking.run_id, {})
        return TrainResult("completed", cfg.train.steps, cfg.tracking.run_id, {"knn_top1": 0.5})

    with mock.patch("detlab.platform.run.train", fake_train):
        done = worker.work(url, "c", "w0", poll_s=0.1)
    assert done == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0, "LOST": 1}
    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    points = sorted((t.params["masks"], t.params["seed"]) for t in complete)
    assert points == [("global", 0), ("global", 1), ("grid", 0), ("grid", 1)]


def test_heartbeat_errors_are_counted_and_logged_then_beats_resume(capsys):
    """A storage that refuses two beats: each failure is counted and logged with its
    cause, the next beat retries, and a later beat lands (no exception is swallowed)."""

    class Flaky:
        def __init__(self):
            self.calls, self.written = 0, []

        def set_trial_system_attr(self, trial_id, key, value):
            self.calls += 1
            if self.calls <= 2:
                raise ConnectionError(f"database is locked ({self.calls})")
            self.written.append((trial_id, key))

    storage = Flaky()
    with worker.Heartbeat(storage, trial_id=5, interval=0.01) as beat:
        deadline = time.time() + 5
        while not storage.written and time.time() < deadline:
            time.sleep(0.01)
    assert beat.errors == 2 and storage.written[0] == (5, worker.HEARTBEAT)
    err = capsys.readouterr().err
    assert "trial 5: beat 1 failed (ConnectionError: database is locked (1))" in err
    assert "beat 2 failed" in err and "beat 3 failed" not in err

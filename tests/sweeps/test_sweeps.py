"""Sweeps end to end on real Optuna storage and MLflow: budget, grid, pruning, faults."""

from __future__ import annotations

import subprocess
import time
from collections import Counter

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from detlab.platform.cli import main as cli
from detlab.sweeps.storage import open_storage


def load(tmp_path, name="t") -> optuna.Study:
    url = f"sqlite:///{tmp_path}/sweeps/{name}/optuna.db"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def children(tmp_path, study) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = study.user_attrs["parent_run_id"]
    exp = client.get_run(parent).info.experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def test_validation_errors_name_the_key(sweep_args, capsys):
    assert (
        cli(["sweep", "sweep=temperature", *sweep_args("sweep.params.temperature.path=method.tmp")])
        == 2
    )
    assert "method.tmp is not a config key" in capsys.readouterr().err
    assert cli(["sweep", "sweep=temperature", *sweep_args("sweep.params.temperature.low=2.0")]) == 2
    assert "needs low < high" in capsys.readouterr().err
    assert cli(["sweep", "sweep=temperature", *sweep_args("sweep.params.temperature.low=0.0")]) == 2
    assert "log scale needs low > 0" in capsys.readouterr().err
    assert cli(["sweep", "sweep=mask_count", *sweep_args("sweep.grid=true")]) == 2
    assert "grid sweeps need categorical" in capsys.readouterr().err
    bad = "sweep.storage=postgresql://nobody@127.0.0.1:9/nothing"
    assert cli(["sweep", "sweep=temperature", *sweep_args(bad)]) == 2
    assert "is not reachable" in capsys.readouterr().err


def test_default_out_dir_resolves_from_the_sweep_name():
    """The README's command sets no sweep.out_dir: the default interpolation must resolve."""
    from detlab.platform.compose import compose
    from detlab.sweeps.space import normalise_params

    sweep = normalise_params(compose(["sweep=detcon"]).sweep)
    assert sweep.out_dir == "outputs/sweeps/detcon"
    renamed = normalise_params(compose(["sweep=detcon", "sweep.name=mine"]).sweep)
    assert renamed.out_dir == "outputs/sweeps/mine"


def test_sqlite_on_nfs_is_refused(monkeypatch, tmp_path):
    from detlab.sweeps import storage
    from detlab.sweeps.space import SweepError

    monkeypatch.setattr(storage, "filesystem_type", lambda path: "nfs4")
    with pytest.raises(SweepError, match="journal:"):
        storage.open_storage(f"sqlite:///{tmp_path}/x.db")


@pytest.mark.slow
def test_six_trials_two_workers(sweep_args, tmp_path):
    args = sweep_args("sweep.n_trials=6", "sweep.n_workers=2", "sweep.pruner=none")
    assert cli(["sweep", "sweep=temperature", *args, "--wait"]) == 0
    study = load(tmp_path)
    trials = study.get_trials()
    assert Counter(t.state for t in trials) == {TrialState.COMPLETE: 6}
    assert len({t.params["temperature"] for t in trials}) == 6  # no trial ran twice
    runs = children(tmp_path, study)
    assert len(runs) == 6
    by_id = {r.info.run_id: r for r in runs}
    for t in trials:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert float(run.data.params["method.temperature"]) == pytest.approx(
            t.params["temperature"]
        )
        assert run.data.metrics["objective"] == pytest.approx(t.value)
        assert run.info.status == "FINISHED"
    # the parent ended with its trials and carries the best one
    parent = MlflowClient(study.user_attrs["tracking_uri"]).get_run(
        study.user_attrs["parent_run_id"]
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    # re-running the command on a finished study starts nothing new
    assert cli(["sweep", "sweep=temperature", *args, "--wait"]) == 0
    assert len(load(tmp_path).get_trials()) == 6


@pytest.mark.slow
def test_grid_runs_every_point_once(sweep_args, tmp_path):
    args = sweep_args(
        "sweep.n_workers=2",
        "~sweep.params.masks",
        "+sweep.params.mq={path: masks, type: categorical, choices: [grid, global]}",
        "sweep.params.seed.choices=[0,1]",
        "sweep.objective=knn_top1",
        name="g",
    )
    assert cli(["sweep", "sweep=mask_quality_grid", *args, "--wait"]) == 0
    trials = load(tmp_path, "g").get_trials()
    points = sorted((t.params["mq"], t.params["seed"]) for t in trials)
    assert points == [("global", 0), ("global", 1), ("grid", 0), ("grid", 1)]
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.slow
def test_bad_trials_are_pruned(sweep_args, tmp_path):
    """Trials whose kNN queries are the memory images themselves score ~1; trials queried
    on the held-out split score far lower: those are pruned at their first report."""
    args = sweep_args(
        "sweep.n_workers=1",
        "sweep.pruner=median",
        "sweep.monitor_every=1",
        "eval.k=1",  # a memory image's nearest neighbour is itself
        "~sweep.params.resolution",
        "~sweep.params.masks",
        "+sweep.params.q={path: data.val_split, type: categorical, choices: [train, val]}",
        "+sweep.params.seed={path: train.seed, type: categorical, choices: [0, 1, 2]}",
        name="p",
        steps=3,
    )
    assert cli(["sweep", "sweep=resolution_grid", *args, "sweep.objective=knn_top1", "--wait"]) == 0
    trials = load(tmp_path, "p").get_trials()
    states = {(t.params["q"], t.params["seed"]): t.state for t in trials}
    assert all(states[("train", s)] == TrialState.COMPLETE for s in range(3)), states
    assert all(states[("val", s)] == TrialState.PRUNED for s in range(3)), states
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(max(t.intermediate_values) == 1 for t in pruned)  # stopped at the first report


@pytest.mark.slurm
def test_slurm_job_array_runs_the_study(sweep_args, tmp_path, slurm_conf):
    args = sweep_args(
        "sweep.n_trials=2", "sweep.n_workers=2", "sweep.pruner=none", "cluster=slurm",
        f"cluster.slurm_conf={slurm_conf}", "cluster.time_min=10", "cluster.cpus_per_task=1",
        name="s",
    )  # fmt: skip
    assert cli(["sweep", "sweep=temperature", *args, "--wait"]) == 0
    study = load(tmp_path, "s")
    assert Counter(t.state for t in study.get_trials()) == {TrialState.COMPLETE: 2}
    logs = " ".join(p.read_text() for p in (tmp_path / "sweeps/s/slurm").rglob("*_log.out"))
    assert logs.count("-> ") == 2  # each finished trial reported by a SLURM worker
    assert len(children(tmp_path, study)) == 2


@pytest.mark.slurm
def test_two_node_trials_on_slurm(sweep_args, tmp_path, slurm_conf):
    """Each trial runs on both nodes: rank 0 talks to Optuna and shares the trial's config."""
    args = sweep_args(
        "sweep.n_trials=2", "sweep.n_workers=1", "sweep.pruner=none", "cluster=slurm",
        "cluster.nodes=2", f"cluster.slurm_conf={slurm_conf}", "cluster.time_min=10",
        "cluster.cpus_per_task=1", name="m",
    )  # fmt: skip
    assert cli(["sweep", "sweep=temperature", *args, "--wait"]) == 0
    study = load(tmp_path, "m")
    assert Counter(t.state for t in study.get_trials()) == {TrialState.COMPLETE: 2}
    runs = children(tmp_path, study)
    assert len(runs) == 2 and all(r.data.tags["world_size"] == "2" for r in runs)


@pytest.mark.slurm
def test_requeued_worker_resumes_its_trial(sweep_args, tmp_path, slurm_conf):
    """`scontrol requeue` of a worker mid-trial: the requeued worker continues the same
    trial from its checkpoint (same MLflow run, no restart from step 0)."""
    args = sweep_args(
        "sweep.n_trials=1", "sweep.n_workers=1", "sweep.pruner=none", "sweep.heartbeat_s=60",
        "cluster=slurm", f"cluster.slurm_conf={slurm_conf}", "cluster.time_min=10",
        "cluster.cpus_per_task=1", "train.checkpoint_every=20", name="r", steps=300,
    )  # fmt: skip
    assert cli(["sweep", "sweep=temperature", *args]) == 0
    study = load(tmp_path, "r")
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")

    def steps_logged() -> list[int]:
        run_id = study.get_trials()[0].user_attrs.get("mlflow_run_id")
        return [m.step for m in client.get_metric_history(run_id, "loss")] if run_id else []

    deadline = time.time() + 300
    while time.time() < deadline and max(steps_logged(), default=0) < 45:
        time.sleep(0.5)
    folders = [d.name for d in (tmp_path / "sweeps/r/slurm").iterdir() if d.name[0].isdigit()]
    job = folders[0].split("_")[0]
    subprocess.run(["scontrol", "requeue", job], check=True)
    deadline = time.time() + 600
    while time.time() < deadline and study.get_trials()[0].state == TrialState.RUNNING:
        time.sleep(2)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE
    steps = steps_logged()
    assert max(steps) == 300 and len(steps) <= 300 + 20  # resumed, not restarted
    (run,) = children(tmp_path, study)
    assert int(run.data.tags["detlab.requeues"]) >= 1  # the trial went through a requeue


def test_status_of_a_sweep_never_started_is_one_line(tmp_path, capsys):
    argv = ["sweep", "status", "sweep=temperature", f"sweep.out_dir={tmp_path}/none"]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"detlab sweep: no sweep named 'temperature' in "
                   f"sqlite:///{tmp_path}/none/optuna.db: start it with `detlab sweep "
                   "sweep=temperature` (same sweep.storage / sweep.out_dir)"]  # fmt: skip

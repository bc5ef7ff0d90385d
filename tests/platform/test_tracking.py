"""The commit recorded with each run: "-dirty" only when a source file differs from HEAD."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from detlab.platform.tracking import git_commit


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    for rel in ("pkg/train.py", "sweeps/conf/method/a.yaml", "dvc.lock", "params.yaml",
                "metrics/cell.json", "requirements.lock"):  # fmt: skip
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("v1\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return tmp_path


def test_files_written_by_dvc_and_runs_do_not_dirty_the_commit(repo):
    clean = git_commit(repo)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    for rel in ("dvc.lock", "params.yaml", "metrics/cell.json"):
        (repo / rel).write_text("v2\n")
    (repo / "pkg/new_untracked.py").write_text("x = 1\n")
    assert git_commit(repo) == clean
    assert git_commit(repo / "pkg") == clean  # from a subfolder too


@pytest.mark.parametrize("rel", ["pkg/train.py", "sweeps/conf/method/a.yaml", "requirements.lock"])
def test_an_edited_source_file_dirties_the_commit(repo, rel):
    clean = git_commit(repo)
    (repo / rel).write_text("v2\n")
    assert git_commit(repo) == clean + "-dirty"


def test_outside_a_repository_the_commit_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


# ---------------------------------------------------------------- stale runs (issue 17.3)


@pytest.fixture
def store(tmp_path):
    from detlab.platform.config import TrackingConfig

    return TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="stale")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_run_whose_local_process_died_is_marked_killed_and_reopening_clears_it(store):
    from mlflow.tracking import MlflowClient

    from detlab.platform.tracking import RunLogger, reconcile

    logger = RunLogger(store, owner=True)  # this process: alive
    client = MlflowClient(store.uri)
    assert reconcile(store.uri) == []
    assert client.get_run(logger.run_id).info.status == "RUNNING"

    pid = dead_pid()
    client.set_tag(logger.run_id, "detlab.pid", str(pid))
    client.set_tag(logger.run_id, "detlab.pid_start", "")
    ended = reconcile(store.uri, experiments=["stale"])
    assert [(r, s) for r, s, _ in ended] == [(logger.run_id, "KILLED")]
    run = client.get_run(logger.run_id)
    assert run.info.status == "KILLED" and f"process {pid}" in run.data.tags["failure_reason"]
    assert reconcile(store.uri) == []  # ended once

    client.set_tag(logger.run_id, "detlab.state", "requeued")
    again = RunLogger(store.__class__(**{**vars(store), "run_id": logger.run_id}), owner=True)
    run = client.get_run(again.run_id)
    assert run.info.status == "RUNNING" and run.data.tags["detlab.pid"] == str(os.getpid())
    assert "failure_reason" not in run.data.tags and "detlab.state" not in run.data.tags
    assert f"process {pid}" in run.data.tags["detlab.interrupted"]
    client.set_tag(again.run_id, "detlab.state", "requeued")
    again.finish("FINISHED")
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED" and "detlab.state" not in run.data.tags


def test_a_reused_pid_is_not_taken_for_the_owner(store):
    from mlflow.tracking import MlflowClient

    from detlab.platform.tracking import RunLogger, reconcile

    logger = RunLogger(store, owner=True)
    MlflowClient(store.uri).set_tag(logger.run_id, "detlab.pid_start", "1")  # not our start
    assert [s for _, s, _ in reconcile(store.uri)] == ["KILLED"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [("FAILED", "FAILED"), ("OUT_OF_MEMORY", "FAILED"), ("CANCELLED", "KILLED"),
     ("TIMEOUT", "FAILED"), ("RUNNING", None), ("PENDING", None), ("REQUEUED", None),
     (None, None)],
)  # fmt: skip
def test_a_slurm_run_is_judged_by_its_job(state, expected):
    from detlab.platform.tracking import stale_verdict

    tags = {"detlab.slurm_job": "42", "detlab.host": socket.gethostname(),
            "detlab.pid": str(dead_pid())}  # fmt: skip
    asked = []

    def job_state(job):
        asked.append(job)
        return state

    verdict = stale_verdict(tags, job_state)
    assert asked == ["42"]
    assert (verdict and verdict[0]) == expected
    if expected:
        assert verdict[1] == f"SLURM job 42 ended {state}"


def test_a_completed_job_that_left_its_run_open_falls_back_to_the_pid():
    from detlab.platform.tracking import stale_verdict

    tags = {"detlab.slurm_job": "7", "detlab.host": socket.gethostname()}
    assert stale_verdict({**tags, "detlab.pid": str(os.getpid())}, lambda j: "COMPLETED") is None
    verdict = stale_verdict({**tags, "detlab.pid": str(dead_pid())}, lambda j: "COMPLETED")
    assert verdict[0] == "KILLED"
    other = {"detlab.host": "another-host", "detlab.pid": str(dead_pid())}
    assert stale_verdict(other, lambda j: None) is None  # cannot tell from here
    assert stale_verdict({}, lambda j: None) is None  # nobody owns it (a parent run)


def test_reconcile_does_not_create_a_missing_store(tmp_path):
    from detlab.platform.tracking import reconcile

    assert reconcile(f"sqlite:///{tmp_path}/none.db") == []
    assert not (tmp_path / "none.db").exists()

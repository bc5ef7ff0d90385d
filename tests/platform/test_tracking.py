"""The commit recorded with each run: "-dirty" only when a source file differs from HEAD."""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detlab.platform.provenance import git_commit
from detlab.platform.tracking import experiment_id, search_runs

REPO = Path(__file__).resolve().parents[2]


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    for rel in ("pkg/train.py", "platform/conf/method/a.yaml", "dvc.lock", "params.yaml",
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


@pytest.mark.parametrize(
    "rel", ["pkg/train.py", "platform/conf/method/a.yaml", "requirements.lock"]
)
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

    from detlab.platform.reconcile import reconcile
    from detlab.platform.tracking import RunLogger

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

    from detlab.platform.reconcile import reconcile
    from detlab.platform.tracking import RunLogger

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
    from detlab.platform.reconcile import stale_verdict

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
    from detlab.platform.reconcile import stale_verdict

    tags = {"detlab.slurm_job": "7", "detlab.host": socket.gethostname()}
    assert stale_verdict({**tags, "detlab.pid": str(os.getpid())}, lambda j: "COMPLETED") is None
    verdict = stale_verdict({**tags, "detlab.pid": str(dead_pid())}, lambda j: "COMPLETED")
    assert verdict[0] == "KILLED"
    other = {"detlab.host": "another-host", "detlab.pid": str(dead_pid())}
    assert stale_verdict(other, lambda j: None) is None  # cannot tell from here
    assert stale_verdict({}, lambda j: None) is None  # nobody owns it (a parent run)


def test_reconcile_does_not_create_a_missing_store(tmp_path):
    from detlab.platform.reconcile import reconcile

    assert reconcile(f"sqlite:///{tmp_path}/none.db") == []
    assert not (tmp_path / "none.db").exists()


# ------------------------------------------- all MLflow access through the tracking module

SOURCE_FOLDERS = ("methods", "platform", "sweeps", "pipelines")
TRACKING_MODULES = {"platform/tracking.py"}  # the only modules that may import mlflow


def called(call: ast.Call) -> str | None:
    """The name a call calls: ``f`` of ``f(...)`` and of ``x.f(...)``."""
    return getattr(call.func, "attr", None) or getattr(call.func, "id", None)


def imports_mlflow(source: str) -> bool:
    """Whether the module imports mlflow anywhere (top level, in a function, in a try)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call) and called(node) in ("import_module", "__import__"):
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
        else:
            continue
        if any(n == "mlflow" or str(n).startswith("mlflow.") for n in names):
            return True
    return False


def mlflow_importers(root: Path = REPO) -> list[str]:
    found = []
    for folder in SOURCE_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel not in TRACKING_MODULES and imports_mlflow(path.read_text()):
                found.append(rel)
    return found


def test_no_module_but_the_tracking_module_imports_mlflow():
    offenders = mlflow_importers()
    assert not offenders, (
        f"{', '.join(offenders)} import(s) mlflow: go through detlab.platform.tracking "
        "(add the function it needs there)"
    )


def test_the_check_finds_an_mlflow_import_at_any_depth(tmp_path):
    planted = {
        "platform/tracking.py": "import mlflow\n",  # allowed
        "platform/ok.py": "from detlab.platform import tracking\nmlflow = 1\n",
        "pipelines/nested.py": "def f():\n    if True:\n        from mlflow.entities import Metric\n",
        "sweeps/aliased.py": "try:\n    import json, mlflow.tracking as t\nexcept ImportError:\n    pass\n",
        "methods/dynamic.py": "import importlib\nimportlib.import_module('mlflow.exceptions')\n",
        "methods/relative.py": "from .mlflow import x\n",  # a local module, not MLflow
    }  # fmt: skip
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert mlflow_importers(tmp_path) == [
        "methods/dynamic.py", "sweeps/aliased.py", "pipelines/nested.py"
    ]  # fmt: skip


# ---------------------------------------------- the run functions, against a real store


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """A SQLite store whose experiment "t" keeps its artifacts in the temporary folder."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("t", artifact_location=(root / "artifacts").as_uri())
    return uri


@pytest.fixture
def run_id(uri) -> str:
    from detlab.platform.config import TrackingConfig
    from detlab.platform.tracking import create_run

    return create_run(TrackingConfig(uri=uri, experiment="t"))


def test_tags_metrics_and_params_are_read_back(uri, run_id):
    from detlab.platform import tracking

    tracking.set_tags(uri, run_id, {"detlab.role": "cell", "n": 3})
    tracking.log_metrics(uri, run_id, {"loss": 0.5, "acc": 2}, step=3)
    tracking.log_metrics(uri, run_id, {"loss": 0.25}, step=4)
    tracking.log_params(uri, run_id, {"lr": 0.1, "long": "x" * 600})
    tracking.log_params(uri, run_id, {"lr": 0.2, "new": True})  # lr is written once
    run = tracking.get_run(uri, run_id)
    assert run.run_id == run_id and run.status == "RUNNING"
    assert run.experiment_id == tracking.experiment_id(uri, "t")
    assert run.tags["detlab.role"] == "cell" and run.tags["n"] == "3"
    assert run.metrics == {"loss": 0.25, "acc": 2.0}  # each metric's latest value
    assert tracking.metric_history(uri, run_id, "loss") == [(3, 0.5), (4, 0.25)]
    assert tracking.metric_history(uri, run_id, "never") == []
    assert run.params == {"lr": "0.1", "long": "x" * tracking.MAX_PARAM_LEN, "new": "True"}
    tracking.set_tags(uri, run_id, {"detlab.role": "superseded"})
    assert tracking.get_run(uri, run_id).tags["detlab.role"] == "superseded"


def test_more_metrics_than_one_request_takes_are_all_logged(uri, run_id):
    from detlab.platform import tracking

    metrics = {f"m{i}": float(i) for i in range(1201)}  # MLflow: 1000 per batch at most
    tracking.log_metrics(uri, run_id, metrics)
    assert tracking.get_run(uri, run_id).metrics == metrics
    assert tracking.metric_history(uri, run_id, "m1200") == [(0, 1200.0)]


def test_a_run_is_ended_with_its_reason_and_reopened(uri, run_id):
    from detlab.platform import tracking

    tracking.end_run(uri, run_id, "KILLED", reason="its process ended mid-run")
    run = tracking.get_run(uri, run_id)
    assert run.status == "KILLED"
    assert run.tags[tracking.STALE_REASON] == "its process ended mid-run"
    tracking.mark_running(uri, run_id)
    assert tracking.get_run(uri, run_id).status == "RUNNING"
    tracking.end_run(uri, run_id)
    assert tracking.get_run(uri, run_id).status == "FINISHED"


def test_search_runs_filters_an_experiments_runs(uri):
    from detlab.platform import tracking
    from detlab.platform.config import TrackingConfig

    cfg = TrackingConfig(uri=uri, experiment="search")
    cell = tracking.create_run(cfg, {"detlab.role": "cell"})
    parent = tracking.create_run(cfg, {"detlab.role": "parent"})
    exp = tracking.experiment_id(uri, "search")
    tracking.end_run(uri, parent)
    found = tracking.search_runs(uri, [exp], "tags.`detlab.role` = 'cell'")
    assert [r.run_id for r in found] == [cell]
    assert found[0].tags["detlab.role"] == "cell" and found[0].experiment_id == exp
    assert {r.run_id for r in tracking.search_runs(uri, [exp])} == {cell, parent}
    running = tracking.search_runs(uri, [exp], "attributes.status = 'RUNNING'")
    assert [r.run_id for r in running] == [cell]


def test_an_experiment_is_created_once_and_keeps_its_tags(uri):
    from detlab.platform import tracking

    exp = tracking.experiment_id(uri, "tagged")
    assert tracking.experiment_id(uri, "tagged") == exp
    assert "view" not in tracking.experiment_tags(uri, exp)
    tracking.set_experiment_tag(uri, exp, "view", '{"a": 1}')
    assert tracking.experiment_tags(uri, exp)["view"] == '{"a": 1}'


def test_an_artifact_is_copied_into_the_run(uri, run_id, tmp_path):
    from mlflow.tracking import MlflowClient

    from detlab.platform import tracking

    (tmp_path / "note.md").write_text("# report\n")
    tracking.log_artifact(uri, run_id, tmp_path / "note.md", "report")
    tracking.log_artifact(uri, run_id, str(tmp_path / "note.md"))
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/note.md"]
    assert [a.path for a in client.list_artifacts(run_id) if not a.is_dir] == ["note.md"]
    copy = client.download_artifacts(run_id, "report/note.md", str(tmp_path / "back"))
    assert Path(copy).read_text() == "# report\n"


def test_the_stores_refusals_raise_tracking_error(uri):
    from mlflow.exceptions import MlflowException

    from detlab.platform import tracking

    with pytest.raises(tracking.TrackingError, match="0123") as missing:
        tracking.get_run(uri, "0123" * 8)
    assert isinstance(missing.value.__cause__, MlflowException)
    exp = tracking.experiment_id(uri, "t")
    with pytest.raises(tracking.TrackingError):
        tracking.search_runs(uri, [exp], "this is not a filter")
    with pytest.raises(tracking.TrackingError):
        tracking.set_tags(uri, "0123" * 8, {"a": "b"})


RACE = """
import sys, time
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.005)
from detlab.platform.config import TrackingConfig
from detlab.platform.tracking import create_run
print(create_run(TrackingConfig(uri=f"sqlite:///{sys.argv[1]}", experiment="race")))
"""


@pytest.mark.slow
def test_a_new_sqlite_store_opened_by_four_processes_at_once_works_for_all(tmp_path):
    """MLflow creates a new store's tables on first open; four processes doing it in the
    same instant (without the lock, 2-3 of 3-4 fail: "duplicate column", "table already
    exists") all get their run."""
    db, script = tmp_path / "new" / "mlflow.db", tmp_path / "race.py"
    script.write_text(RACE)
    start = str(time.time() + 8)  # every interpreter started and waiting by then
    procs = [subprocess.Popen([sys.executable, str(script), str(db), start],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-300:] for _, err in outs]
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    uri = f"sqlite:///{db}"
    runs = search_runs(uri, [experiment_id(uri, "race")])
    assert len(ids) == 4 and {r.run_id for r in runs} == ids

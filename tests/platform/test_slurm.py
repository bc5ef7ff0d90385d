"""Pretraining on a real two-node SLURM cluster on localhost (platform/slurm/cluster.sh,
started by the `slurm_conf` fixture), logging to a real `mlflow server` started here."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from detlab.platform.compose import compose
from detlab.platform.launch import LaunchError, follow, pretrain_command, sacct_state, submit

pytestmark = pytest.mark.slurm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server (SQLite backend) on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{root}/mlflow.db", "--default-artifact-root", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not come up")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


@pytest.fixture
def slurm_cfg(tiny_overrides, tmp_path, mlflow_server, slurm_conf, monkeypatch):
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path / "home"))

    def make(*extra, method="byol", steps=6, nodes=1):
        overrides = tiny_overrides(tmp_path, method=method, steps=steps)
        overrides = [o for o in overrides if not o.startswith("tracking.uri")]
        return compose([*overrides, "cluster=slurm", f"cluster.nodes={nodes}",
                        "cluster.time_min=10", "cluster.cpus_per_task=1",
                        f"cluster.slurm_conf={slurm_conf}", f"cluster.log_dir={tmp_path}/logs",
                        f"tracking.uri={mlflow_server}", *extra])  # fmt: skip

    return make


def runs(uri: str, run_id: str):
    client = MlflowClient(uri)
    exp = client.get_run(run_id).info.experiment_id
    return client, client.search_runs([exp])


def test_two_node_job_logs_one_run(slurm_cfg, tmp_path, capsys):
    cfg = slurm_cfg(method="detcon_b", nodes=2)
    t0 = time.time()
    assert pretrain_command(cfg, wait=True) == 0
    out = capsys.readouterr().out
    run_id = out.split("MLflow: run ")[1].split()[0]
    client, all_runs = runs(cfg.tracking.uri, run_id)
    assert [r.info.run_id for r in all_runs] == [run_id]  # one run, not one per rank
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(1, 7))
    logs = sorted((tmp_path / "logs").rglob("*_log.out"))
    text = " ".join(p.read_text() for p in logs)
    assert "rank 0/2 on node1" in text and "rank 1/2 on node2" in text
    print(f"2-node job: {time.time() - t0:.1f} s from command to completion")


def test_scontrol_requeue_resumes_the_same_run(slurm_cfg):
    cfg = slurm_cfg("train.checkpoint_every=5", steps=60)
    job, run_id = submit(cfg)
    client = MlflowClient(cfg.tracking.uri)
    deadline = time.time() + 180
    while time.time() < deadline:  # wait until a checkpoint exists and training moved on
        steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        if max(steps, default=0) >= 12:
            break
        time.sleep(0.5)
    subprocess.run(["scontrol", "requeue", str(job.job_id)], check=True)
    assert follow(job, run_id, cfg) == "COMPLETED"
    history = client.get_metric_history(run_id, "loss")
    steps = [m.step for m in history]
    assert sorted(set(steps)) == list(range(1, 61))  # continued, nothing missing
    assert len(steps) - 60 <= 5  # steps redone: at most one checkpoint interval
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["detlab.requeues"]) >= 1
    print(f"requeue: {len(steps) - 60} steps redone")


def test_failing_job_is_failed_in_sacct_and_mlflow(slurm_cfg):
    cfg = slurm_cfg("optim.lr=1e30", method="simclr")
    job, run_id = submit(cfg)
    assert follow(job, run_id, cfg) == "FAILED"
    assert sacct_state(job.job_id, cfg.cluster) == "FAILED"
    run = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["failure_reason"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["cluster.partition=gpu"], "cluster.partition=gpu does not exist"),
        (["cluster.nodes=3"], "cluster.nodes=3 but partition debug has 2 nodes"),
        (["cluster.time_min=100000"], "cluster.time_min=100000 exceeds"),
    ],
)
def test_impossible_requests_are_refused_before_submission(slurm_cfg, extra, message):
    with pytest.raises(LaunchError, match=message):
        submit(slurm_cfg(*extra))


def test_time_limit_signal_checkpoints_requeues_and_completes(slurm_cfg):
    """The time-limit warning (USR2, sent by SLURM `cluster.signal_delay_s` before the
    limit; sent here by hand with `scancel --signal=USR2` so the test does not depend on
    machine speed): the job stops at a step boundary, requeues itself and the next run
    continues from that step."""
    cfg = slurm_cfg("train.checkpoint_every=1000", "cluster.max_requeues=3", steps=150)
    job, run_id = submit(cfg)
    client = MlflowClient(cfg.tracking.uri)
    deadline = time.time() + 300
    while time.time() < deadline:
        if max((m.step for m in client.get_metric_history(run_id, "loss")), default=0) >= 10:
            break
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", str(job.job_id)], check=True)
    assert follow(job, run_id, cfg) == "COMPLETED"
    client = MlflowClient(cfg.tracking.uri)
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 151))
    assert len(steps) == 150  # checkpointed exactly where it stopped: no step redone
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and int(run.data.tags["detlab.requeues"]) >= 1
    print(f"time limit: {run.data.tags['detlab.requeues']} requeue(s), 0 steps redone")

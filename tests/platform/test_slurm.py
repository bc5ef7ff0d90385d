"""Pretraining on a real two-node SLURM cluster on localhost (platform/slurm/cluster.sh,
started by the `slurm_conf` fixture), logging to a real `mlflow server` started here."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient

from detlab.platform.launch import LaunchError, follow, pretrain_command, sacct_state, submit

pytestmark = pytest.mark.slurm


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

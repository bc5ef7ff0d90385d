"""Pre-submit validation against captured `scontrol show partition -o` output (no cluster)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from detlab.platform.config import ClusterConfig
from detlab.platform.slurm_query import LaunchError, check_request, minutes, parse_partitions

SCONTROL = (
    "PartitionName=debug AllowGroups=ALL Default=YES MaxNodes=UNLIMITED MaxTime=00:30:00 "
    "Nodes=node[1-2] State=UP TotalCPUs=4 TotalNodes=2\n"
    "PartitionName=long Default=NO MaxTime=2-00:00:00 Nodes=node1 State=UP TotalNodes=1\n"
)


def cluster(**kw):
    return OmegaConf.structured(ClusterConfig(name="slurm", **{"time_min": 20, **kw}))


def test_parse_partitions_and_time_limits():
    parts = parse_partitions(SCONTROL)
    assert set(parts) == {"debug", "long"} and parts["debug"]["TotalNodes"] == "2"
    assert minutes("00:30:00") == 30 and minutes("2-00:00:00") == 2880
    assert minutes("45") == 45 and minutes("UNLIMITED") == float("inf")


def test_default_partition_is_chosen():
    assert check_request(cluster(nodes=2), parse_partitions(SCONTROL), {}) == "debug"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"partition": "gpu"}, "cluster.partition=gpu does not exist"),
        ({"nodes": 3}, "cluster.nodes=3 but partition debug has 2 nodes"),
        ({"time_min": 31}, "cluster.time_min=31 exceeds partition debug's MaxTime"),
        ({"gpus_per_node": 1}, "cluster.gpus_per_node=1 but the nodes of debug have at most 0"),
        ({"partition": "long", "nodes": 2}, "partition long has 1 nodes"),
    ],
)
def test_impossible_requests_name_the_key(kw, message):
    with pytest.raises(LaunchError, match=message):
        check_request(cluster(**kw), parse_partitions(SCONTROL), {"node1": 0, "node2": 0})


def test_runs_get_their_own_folders_and_a_foreign_checkpoint_is_refused(
    tiny_overrides, tmp_path, monkeypatch, capsys
):
    """Two `detlab pretrain` in a row (different methods, no out_dir) both train from step 0
    into their own folders and MLflow runs; pointing a run at another run's folder is refused
    in one line naming what differs, before any step."""
    from mlflow.tracking import MlflowClient

    from detlab.platform.cli import main

    monkeypatch.chdir(tmp_path)
    args = [o for o in tiny_overrides(tmp_path, steps=2) if not o.startswith("train.out_dir")]
    assert main(["pretrain", *args, "method=byol"]) == 0
    assert main(["pretrain", *args, "method=simclr"]) == 0
    out = capsys.readouterr().out
    assert out.count("completed at step 2") == 2
    runs = sorted((tmp_path / "outputs").glob("*/*/checkpoint.pt"))
    assert [p.parts[-3] for p in runs] == ["byol", "simclr"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    found = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(found) == 2 and all(r.data.metrics.get("loss") is not None for r in found)
    names = sorted(r.info.run_name for r in found)  # meaningful, not MLflow's random names
    assert names == ["byol-global-r32-s0", "simclr-global-r32-s0"], names

    byol_dir = runs[0].parent
    assert main(["pretrain", *args, "method=simclr", f"train.out_dir={byol_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.name=byol there, simclr here" in err[0]
    assert main(["pretrain", *args, "method=byol", f"train.out_dir={byol_dir}"]) == 0  # resumes
    assert "completed at step 2" in capsys.readouterr().out


def test_jobs_lists_past_a_tracking_server_that_is_gone(tmp_path, monkeypatch, capsys):
    """A job registered against an MLflow server that no longer runs: `detlab jobs` says so
    in one line and lists the job (run status unknown) instead of failing."""
    import socket

    from detlab.platform.compose import compose
    from detlab.platform.launch import jobs_command, register

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path))
    dead = f"http://127.0.0.1:{port}"
    register({"job_id": "4242", "run_id": "r" * 32, "uri": dead, "log": "x.out",
              "out_dir": str(tmp_path), "method": "byol", "submitted": 0.0})  # fmt: skip
    assert jobs_command(compose([f"tracking.uri=sqlite:///{tmp_path}/m.db"])) == 0
    out, err = capsys.readouterr()
    assert f"MLflow store {dead} does not answer" in err
    (row,) = [line for line in out.splitlines() if line.strip().startswith("4242")]
    assert "byol" in row and " ? " in row


def test_more_cpus_than_a_node_has_is_refused():
    parts, gpus = parse_partitions(SCONTROL), {"node1": 0, "node2": 0}
    cpus = {"node1": 2, "node2": 2}
    assert check_request(cluster(cpus_per_task=2), parts, gpus, cpus) == "debug"
    with pytest.raises(LaunchError, match="cluster.cpus_per_task=4 but the nodes of debug have"):
        check_request(cluster(cpus_per_task=4), parts, gpus, cpus)
    with pytest.raises(LaunchError, match="cpus_per_task=2 x 2 tasks per node but"):
        check_request(cluster(cpus_per_task=2, tasks_per_node=2), parts, gpus, cpus)


def test_array_states_expand_folded_tasks_and_prefer_final_records(monkeypatch):
    """squeue (-r) lists what is queued, sacct folds pending tasks into one line and keeps
    what ended; a task cancelled while pending is in neither."""
    from detlab.platform import slurm_query as launch

    answers = {
        "squeue": "12_1|RUNNING\n12_2|PENDING\n12_3|PENDING\n12_0|COMPLETING\n",
        "sacct": "12_0|COMPLETED\n12_1|RUNNING\n12_[2-3%2]|PENDING\n12_4|CANCELLED by 0\n",
    }
    monkeypatch.setattr(launch, "_run", lambda cmd, cluster: answers[cmd[0]])
    assert launch.array_states("12", None) == {
        "12_0": "COMPLETED", "12_1": "RUNNING", "12_2": "PENDING", "12_3": "PENDING",
        "12_4": "CANCELLED",
    }  # fmt: skip
    assert launch.sacct_state("12_4", None) == "CANCELLED"

    def gone(cmd, cluster):
        if cmd[0] == "squeue":
            raise LaunchError(
                "`squeue ...` failed: slurm_load_jobs error: Invalid job id specified"
            )
        return ""

    monkeypatch.setattr(launch, "_run", gone)
    assert launch.array_states("12", None) == {}


def test_a_failing_slurm_command_is_one_line_naming_it():
    from detlab.platform import slurm_query as launch

    cmd = ["sh", "-c", "echo 'x: error: no DNS' >&2; echo 'x: fatal: no config' >&2; exit 1"]
    with pytest.raises(LaunchError) as caught:
        launch._run(cmd, cluster())
    assert str(caught.value) == f"`{' '.join(cmd)}` failed: x: fatal: no config"

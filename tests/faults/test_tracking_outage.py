"""The tracking server goes down mid-run: training keeps its pace, and every record lands.

A real `mlflow server` (SQLite behind it) is SIGKILLed while a local `detlab pretrain` logs
to it, and started again on the same port and store. A 60 s outage inside the run: the steps
logged while it was down come at the rate of those before, the run catches up when the
server is back, and ends with one FINISHED run holding every step's metrics. An outage that
outlasts the run: the records left wait on disk and `detlab jobs` writes them afterwards."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from detlab.platform.cli import main as cli

OUTAGE_S = 60


@pytest.fixture
def server(restartable_mlflow_server):
    return restartable_mlflow_server


def start_run(tiny_overrides, tmp_path, server, steps, *extra):
    args = tiny_overrides(tmp_path, "tracking.experiment=outage", f"tracking.uri={server.url}",
                          "train.checkpoint_every=100000", "train.threads=1", *extra,
                          method="byol", steps=steps)  # fmt: skip
    args = [a for a in args if not a.startswith("tracking.uri=sqlite")]
    err = open(tmp_path / "stderr.txt", "w")  # noqa: SIM115 (closed by the process's end)
    return subprocess.Popen([sys.executable, "-m", "detlab.platform.cli", "pretrain", *args],
                            stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def the_run(server) -> tuple[MlflowClient, object]:
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name("outage")
    runs = client.search_runs([exp.experiment_id]) if exp else []
    assert len(runs) <= 1, "one run expected"
    return client, (runs[0] if runs else None)


def wait_for_step(server, proc, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended early"
        client, run = the_run(server)
        if run and any(m.step >= step for m in client.get_metric_history(run.info.run_id, "loss")):
            return
        time.sleep(0.5)
    pytest.fail(f"no step {step} within {timeout} s")


@pytest.mark.slow
def test_a_60_s_tracking_outage_costs_no_training_step(
    tiny_overrides, tmp_path, server, monkeypatch
):
    monkeypatch.setenv("DETLAB_HOME", str(tmp_path / "home"))
    steps = 4000  # ~3 min of tiny steps on an idle core (~0.05 s each): the outage falls inside
    proc = start_run(tiny_overrides, tmp_path, server, steps)
    wait_for_step(server, proc, 30)
    t_down = time.time()
    server.stop(signal.SIGKILL)
    time.sleep(OUTAGE_S)
    assert proc.poll() is None, "the run ended during the outage: give it more steps"
    t_up = time.time()
    server.start()
    assert proc.wait(timeout=1800) == 0
    client, run = the_run(server)
    assert run.info.status == "FINISHED"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in loss) == list(range(1, steps + 1))  # every step, once
    assert {m.step for m in client.get_metric_history(run.info.run_id, "lr")} == set(
        range(1, steps + 1)
    )

    stamps = sorted(m.timestamp / 1000 for m in loss)
    before = [t for t in stamps if t < t_down]
    during = [t for t in stamps if t_down <= t < t_up]
    rate_before = (len(before) - 10) / (before[-1] - before[9])  # past the first steps' warm-up
    rate_during = len(during) / (t_up - t_down)
    widest = max(b - a for a, b in zip(during, during[1:], strict=False))
    print(f"\ntracking outage {t_up - t_down:.0f} s: {rate_before:.1f} steps/s before, "
          f"{rate_during:.1f} during; widest gap between steps while down {widest:.2f} s; "
          f"{len(during)} steps logged while down, all {steps} landed")  # fmt: skip
    # a run that waited on the store would log ~no step while it was down (the widest gap
    # would span the outage)
    assert rate_during > 0.5 * rate_before and widest < OUTAGE_S / 4
    err = (tmp_path / "stderr.txt").read_text()
    print("".join(x for x in err.splitlines(keepends=True) if "detlab tracking" in x))
    assert err.count("store not answering") == 1 and err.count("caught up") == 1, err[-2000:]


@pytest.mark.slow
def test_records_an_outage_leaves_at_the_end_wait_on_disk_for_detlab_jobs(
    tiny_overrides, tmp_path, server, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("DETLAB_HOME", str(home))
    steps = 60
    proc = start_run(tiny_overrides, tmp_path, server, steps, "tracking.flush_timeout_s=2")
    wait_for_step(server, proc, 5)
    server.stop(signal.SIGKILL)
    assert proc.wait(timeout=600) == 0  # the run ends while the server is down
    err = (tmp_path / "stderr.txt").read_text()
    assert "did not reach" in err and "detlab jobs" in err, err[-2000:]
    (spill,) = (home / "spill").glob("*.jsonl")

    server.start()
    client, run = the_run(server)
    assert run.info.status == "RUNNING"  # its end is among the records on disk
    assert cli(["jobs", f"tracking.uri={server.url}"]) == 0
    client, run = the_run(server)
    assert run.info.status == "FINISHED" and spill.stem == run.info.run_id
    assert not spill.exists()
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in loss}) == list(range(1, steps + 1))

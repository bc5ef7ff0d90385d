"""Two gloo processes (torchrun) and one process with the same global batch and seed give
the same loss curve: contiguous batch split, synced BN, gathered negatives, DDP averaging.

Step 1 must agree to float precision (same data, same statistics, same negatives). Later
steps agree to float tolerance only: a tiny BN network amplifies reduction-order noise
(one process with 1 vs 2 threads drifts by ~0.3% after 3 steps at this learning rate).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir) -> dict[int, float]:
    client = MlflowClient(f"sqlite:///{run_dir}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    return {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}


def run(overrides, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "detlab.platform.train", *overrides]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}",
            "-m", "detlab.platform.train", *overrides,
        ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["detcon_b", "simclr"])
def test_two_processes_match_one(method, tiny_overrides, tiny_mask_sets, tmp_path):
    extra = ["masks=fh", f"masks.path={tiny_mask_sets['fh']}"] if method == "detcon_b" else []
    one, two = tmp_path / "one", tmp_path / "two"
    extra.append("optim.lr=0.002")
    run(tiny_overrides(one, *extra, method=method, steps=4), nproc=1)
    run(tiny_overrides(two, *extra, method=method, steps=4), nproc=2)
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert b[1] == pytest.approx(a[1], rel=1e-5), (a, b)
    for step in (2, 3, 4):
        assert b[step] == pytest.approx(a[step], rel=5e-3), (step, a, b)

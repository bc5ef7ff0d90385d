"""platform/slurm/cluster.sh outside a running cluster: what `stop` leaves behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "platform" / "slurm" / "cluster.sh"


@pytest.mark.skipif(os.geteuid() != 0, reason="cluster.sh needs root (as in CI)")
def test_stop_removes_the_hosts_line_start_added_and_keeps_the_rest(tmp_path):
    hosts = tmp_path / "hosts"
    others = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n10.0.0.5 node1.example\n"
    hosts.write_text(others + "127.0.0.1 node1 node2  # detlab local slurm\n")
    env = os.environ | {"DETLAB_SLURM_DIR": str(tmp_path / "state"),  # no daemons there
                        "DETLAB_HOSTS_FILE": str(hosts)}  # fmt: skip
    for _ in range(2):  # a second stop finds nothing to remove and changes nothing
        done = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert hosts.read_text() == others

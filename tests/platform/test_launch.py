"""Pre-submit validation against captured `scontrol show partition -o` output (no cluster)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from detlab.platform.config import ClusterConfig
from detlab.platform.launch import LaunchError, check_request, minutes, parse_partitions

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

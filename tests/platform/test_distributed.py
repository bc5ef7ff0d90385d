"""GlooSyncBatchNorm over 2 real gloo processes equals plain BatchNorm on the whole batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from detlab.platform.distributed import GlooSyncBatchNorm, convert_sync_batchnorm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, x: torch.Tensor, w: torch.Tensor, out_dir: str):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    assert isinstance(bn, GlooSyncBatchNorm)
    xs = x.chunk(2)[rank].clone().requires_grad_(True)
    y = bn(xs)
    (y * w.chunk(2)[rank]).sum().backward()
    torch.save(
        {
            "y": y.detach(),
            "gx": xs.grad,
            "gw": bn.weight.grad,
            "rm": bn.running_mean,
            "rv": bn.running_var,
        },
        f"{out_dir}/r{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.slow
def test_gloo_sync_bn_matches_full_batch(tmp_path):
    torch.manual_seed(1)
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    w = torch.randn(8, 3, 4, 4)
    mp.start_processes(
        _worker, args=(free_port(), x, w, str(tmp_path)), nprocs=2, start_method="fork"
    )
    r0, r1 = torch.load(tmp_path / "r0.pt"), torch.load(tmp_path / "r1.pt")
    ref = nn.BatchNorm2d(3)
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r0["gx"], r1["gx"]]), xr.grad, atol=1e-4, rtol=1e-4)
    # each rank's weight grad is its share; their sum is the full-batch grad
    torch.testing.assert_close(r0["gw"] + r1["gw"], ref.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(r0["rm"], ref.running_mean)
    torch.testing.assert_close(r0["rv"], ref.running_var)


def test_eval_mode_uses_running_stats():
    bn = GlooSyncBatchNorm(3).eval()
    bn.running_mean.fill_(1.0)
    x = torch.ones(2, 3, 2, 2)
    assert torch.allclose(bn(x), torch.zeros_like(x), atol=1e-3)

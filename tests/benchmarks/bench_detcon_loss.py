"""detcon_loss forward+backward at B=256, M=16, D=256: time and peak memory, side by side
with lightly's DetConBLoss (a published PyTorch port of the official loss).

lightly is installed for this benchmark only (``pip install --no-deps --target``, into a
temporary folder); detlab never imports it.

    python tests/benchmarks/bench_detcon_loss.py [--batch 256 --masks 16 --dim 256 --reps 5]
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time

import torch

from detlab.methods.losses import detcon_loss


def lightly_loss():
    try:
        return importlib.import_module("lightly.loss").DetConBLoss
    except ImportError:
        target = tempfile.mkdtemp(prefix="lightly-bench-")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target,
             "lightly==1.6.0"],
            check=True,
        )  # fmt: skip
        sys.path.insert(0, target)  # benchmark-only install, never on detlab's path
        return importlib.import_module("lightly.loss").DetConBLoss


def measure(fn, inputs, reps: int) -> tuple[float, float, float]:
    """(median seconds over ``reps`` runs, peak MB of live tensors from the profiler, loss)."""
    times = []
    for _ in range(reps + 1):
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        t0 = time.perf_counter()
        loss = fn(*xs)
        loss.backward()
        times.append(time.perf_counter() - t0)
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = fn(*xs)
        loss.backward()
    peak = peak_memory(prof)
    return sorted(times[1:])[len(times[1:]) // 2], peak, float(loss)


def peak_memory(prof) -> float:
    """Peak of live CPU tensor memory (MB) over the profiled forward + backward."""
    events = sorted(
        (e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start
    )
    live = peak = 0
    for e in events:
        live += e.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--masks", type=int, default=16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    b, m, d = a.batch, a.masks, a.dim
    tensors = [torch.randn(b, m, d, generator=g) for _ in range(4)]
    ids = torch.randint(0, 8, (b, m), generator=g)
    inputs = [*tensors, ids, ids.clone()]
    theirs = lightly_loss()(temperature=0.1, gather_distributed=False)

    def ours(pa, pb, ta, tb, ia, ib):
        return detcon_loss(pa, pb, ta, tb, ia, ib, temperature=0.1)

    print(f"detcon_loss fwd+bwd, B={b} M={m} D={d}, CPU threads={torch.get_num_threads()}")
    print(f"{'implementation':<24}{'median s':>10}{'peak MB':>10}{'loss':>12}")
    results = {}
    for name, fn in (("detlab detcon_loss", ours), ("lightly DetConBLoss", theirs)):
        t, mem, loss = measure(fn, inputs, a.reps)
        results[name] = (t, mem, loss)
        print(f"{name:<24}{t:>10.3f}{mem:>10.1f}{loss:>12.5f}")
    (t0, m0, l0), (t1, m1, l1) = results.values()
    print(f"time ratio detlab/lightly {t0 / t1:.2f}, memory ratio {m0 / m1:.2f}")
    print(f"same loss value: {abs(l0 - l1) <= 1e-4 * abs(l1)} ({l0:.6f} vs {l1:.6f})")


if __name__ == "__main__":
    main()

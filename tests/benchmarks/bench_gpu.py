"""The GPU path, measured: step throughput of a real-size method (fp32 vs bf16 autocast +
channels_last), peak memory, and the host syncs a training step makes.

    python tests/benchmarks/bench_gpu.py                       # ResNet-50, 224 px, batch 64
    python tests/benchmarks/bench_gpu.py --methods detcon_b byol --batch 128
    python tests/benchmarks/bench_gpu.py --device cpu --backbone tiny --resolution 32 --batch 8

1. Throughput: the method's own step (forward, loss, backward, optimiser, EMA update) on
   synthetic views and FH-like block masks, timed with the device synchronised around
   ``--reps`` steps after ``--warmup`` steps. Printed per precision: ms/step, images/s
   (two views of ``--batch`` images each count as ``--batch`` images), peak memory.
2. Host syncs (CUDA only): ``torch.cuda.set_sync_debug_mode("warn")`` turns every
   synchronising call (``.item()``, ``bool(tensor)``, a device-to-host copy) into a warning;
   counted for the method's step alone and for the whole ``train()`` loop on a tiny
   generated dataset, as (syncs at 2n steps - syncs at n steps) / n, so set-up and the final
   checkpoint cancel out. A GPU step that waits on the host stalls the pipeline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from detlab.methods.registry import build_method
from detlab.platform.compose import compose
from detlab.platform.optim import build_optimizer
from detlab.platform.train import autocast_for


def synthetic_batch(b: int, r: int, device, grid: int = 8) -> dict:
    cells = torch.randint(0, 16, (b, grid, grid))
    masks = cells.repeat_interleave(r // grid, 1).repeat_interleave(r // grid, 2)
    return {"view1": torch.randn(b, 3, r, r, device=device),
            "view2": torch.randn(b, 3, r, r, device=device),
            "mask1": masks.to(device), "mask2": masks.flip(2).to(device),
            "index": torch.arange(b, device=device), "step": 0, "seed": 0}  # fmt: skip


def synthetic_box_batch(b: int, r: int, device, k: int = 4) -> dict:
    """SoCo's input: V1, V2 at r px, V3 = V2 at r/2, K proposals per image (xyxy px)."""

    def boxes(size: int) -> torch.Tensor:
        xy = torch.rand(b, k, 2) * size / 2
        wh = size / 8 + torch.rand(b, k, 2) * size / 2
        return torch.cat([xy, (xy + wh).clamp(max=size)], -1).to(device)

    b2 = boxes(r)
    return {"v1": torch.randn(b, 3, r, r, device=device), "boxes1": boxes(r),
            "v2": torch.randn(b, 3, r, r, device=device), "boxes2": b2,
            "v3": torch.randn(b, 3, r // 2, r // 2, device=device), "boxes3": b2 / 2,
            "box_valid": torch.ones(b, k, dtype=torch.bool, device=device),
            "index": torch.arange(b, device=device), "step": 0, "seed": 0}  # fmt: skip


def batch_for(method, b: int, r: int, device, channels_last: bool) -> dict:
    make = synthetic_box_batch if method.input_kind == "boxes" else synthetic_batch
    batch = make(b, r, device)
    if channels_last:
        for key, value in batch.items():
            if torch.is_tensor(value) and value.ndim == 4:
                batch[key] = value.contiguous(memory_format=torch.channels_last)
    return batch


def build(method_name: str, a, device, channels_last: bool):
    cfg = compose([f"method={method_name}", f"backbone={a.backbone}",
                   f"aug.resolution={a.resolution}", f"train.batch_size={a.batch}"])  # fmt: skip
    torch.manual_seed(0)
    method = build_method(cfg.method, cfg.backbone, cfg.aug).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return cfg, method, build_optimizer(cfg.optim, method, a.batch)


def step_fn(method, opt, batch, amp):
    def step():
        method.train()
        with amp:
            out = method(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.update_target(0, 100)
        return out

    return step


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(method_name: str, a, device) -> None:
    for precision in ("fp32", "bf16"):
        channels_last = precision == "bf16" and device.type == "cuda"
        cfg, method, opt = build(method_name, a, device, channels_last)
        batch = batch_for(method, a.batch, a.resolution, device, channels_last)
        step = step_fn(method, opt, batch, autocast_for(precision, device))
        for _ in range(a.warmup):
            step()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        for _ in range(a.reps):
            step()
        sync(device)
        dt = (time.perf_counter() - t0) / a.reps
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0
        print(f"{method_name:<9} {a.backbone} {a.resolution}px B={a.batch} {precision:<4}"
              f"{' +channels_last' if channels_last else '':<15} {dt * 1e3:8.1f} ms/step "
              f"{a.batch / dt:8.0f} img/s  peak {mem:5.1f} GiB", flush=True)  # fmt: skip
        del method, opt, batch


def count_syncs(fn) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def syncs_per_step(method_name: str, a, device) -> None:
    _, method, opt = build(method_name, a, device, True)
    batch = batch_for(method, a.batch, a.resolution, device, True)
    step = step_fn(method, opt, batch, autocast_for("bf16", device))
    step()
    n = 5
    one, two = (
        count_syncs(lambda: [step() for _ in range(n)]),
        count_syncs(lambda: [step() for _ in range(2 * n)]),
    )
    print(f"{method_name:<9} method step alone: {(two - one) / n:.1f} host syncs per step")

    from detlab.methods.datasets.shapes import generate_shapes
    from detlab.pipelines.masks import generate
    from detlab.platform.train import train

    root = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    data = generate_shapes(
        root / "shapes", seed=0, num_train=64, num_val=16, image_size=64, max_objects=3
    )
    source = "ss" if method.input_kind == "boxes" else "gt"  # SoCo: selective-search boxes
    masks = generate(source, data, root / source, workers=1, progress=False)

    def run(steps: int, tag: str) -> None:
        cfg = compose([f"method={method_name}", "backbone=small", "aug.resolution=64",
                       f"data.root={data}", f"masks={source}", f"masks.path={masks}",
                       "train.batch_size=16",
                       f"train.steps={steps}", "train.log_every=1000", "train.knn_every=0",
                       "train.checkpoint_every=1000", "train.progress=false",
                       f"train.out_dir={root}/{tag}", f"tracking.uri=sqlite:///{root}/ml.db",
                       "train.device=cuda"])  # fmt: skip
        train(cfg)

    run(2, "warm")
    one, two = count_syncs(lambda: run(n, "a")), count_syncs(lambda: run(2 * n, "b"))
    print(f"{method_name:<9} train() loop: {(two - one) / n:.1f} host syncs per step "
          f"({one} in a {n}-step run, {two} in a {2 * n}-step run)", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["detcon_b", "byol", "simclr"])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    for m in a.methods:
        throughput(m, a, device)
    if device.type == "cuda":
        for m in a.methods:
            syncs_per_step(m, a, device)


if __name__ == "__main__":
    main()

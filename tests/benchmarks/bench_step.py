"""Training-step overhead of DetCon-B (tiny CPU config): full step time divided by the
backbone's own forward+backward on the same images.

A DetCon-B step also runs the EMA target backbone forward on both views; the figure is
reported against the online backbone alone and against online + target backbone work.

    python tests/benchmarks/bench_step.py [--batch 64 --resolution 64 --reps 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from detlab.methods.registry import build_method
from detlab.platform.compose import compose
from detlab.platform.optim import build_optimizer


def median_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[reps // 2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--method", default="detcon_b")
    a = p.parse_args()
    cfg = compose(
        [f"method={a.method}", "backbone=tiny", f"aug.resolution={a.resolution}",
         "method.proj_hidden=512", "method.proj_out=128", "method.pred_hidden=512"]
    )  # fmt: skip
    torch.manual_seed(0)
    method = build_method(cfg.method, cfg.backbone, cfg.aug)
    opt = build_optimizer(cfg.optim, method, a.batch)
    b, r = a.batch, a.resolution
    masks = (
        torch.randint(0, 12, (b, r // 8, r // 8)).repeat_interleave(8, 1).repeat_interleave(8, 2)
    )
    batch = {"view1": torch.randn(b, 3, r, r), "view2": torch.randn(b, 3, r, r),
             "mask1": masks, "mask2": masks.flip(2), "index": torch.arange(b), "step": 0}  # fmt: skip

    def step():
        out = method(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        method.update_target(0, 100)

    views = torch.cat([batch["view1"], batch["view2"]])

    def online():
        method.backbone.zero_grad(set_to_none=True)
        method.backbone(views).sum().backward()

    def target():
        with torch.no_grad():
            for v in (batch["view1"], batch["view2"]):
                method.target_encoder(v)

    t_step, t_online = median_time(step, a.reps), median_time(online, a.reps)
    t_target = median_time(target, a.reps) if hasattr(method, "target_encoder") else 0.0
    print(f"{a.method} tiny, B={b}, {r} px, threads={torch.get_num_threads()}")
    print(f"full step            {t_step * 1e3:8.1f} ms")
    print(f"backbone fwd+bwd     {t_online * 1e3:8.1f} ms  (online, both views)")
    print(f"target backbone fwd  {t_target * 1e3:8.1f} ms")
    print(f"overhead vs online backbone          {t_step / t_online:.2f}")
    print(f"overhead vs online + target backbone {t_step / (t_online + t_target):.2f}")


if __name__ == "__main__":
    main()

"""Transfer to real data, offline: random init vs SSL pretraining on Fashion-MNIST, under kNN
and the linear probe on the 10k test set (README table).

    python tests/benchmarks/bench_fashion_mnist.py                      # the README's budget
    python tests/benchmarks/bench_fashion_mnist.py --steps 200 --methods simclr

Exports Fashion-MNIST at 32 px from Debian's dataset-fashion-mnist (once, to --data), makes
FH masks for DetCon (once), pretrains each method for --steps steps (the studies' small
backbone: ResNet-18 at 1/4 width, 3x3 stem) into a temporary MLflow store, then probes
every row's frozen features on all 60k train / 10k test images. Prints one row per method
with its pretraining wall time, so the budget stands next to the numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from detlab.platform.compose import compose

COMMON = ["backbone=small", "aug.resolution=32", "aug.crop_scale=[0.2,1.0]", "optim=adamw",
          "optim.lr=0.004", "optim.weight_decay=0.05", "optim.warmup_steps=50",
          "train.batch_size=128", "train.log_every=50", "train.knn_every=0",
          "train.progress=true", "method.proj_hidden=512", "method.proj_out=128"]  # fmt: skip
MASKS = {"detcon_s": "masks=fh"}


def probe(backbone, cfg, data: Path) -> dict[str, float]:
    from detlab.methods.eval import run_eval

    out = {}
    for name in ("knn", "linear"):
        ecfg = compose([f"eval={name}", "eval.resolution=32", "eval.batch_size=256",
                        "data=fashion_mnist", f"data.root={data}"])  # fmt: skip
        out.update(run_eval(ecfg.eval, backbone, ecfg.data, torch.device("cpu")))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/fashion_mnist")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--methods", nargs="+", default=["random", "simclr", "byol", "vicreg",
                                                    "detcon_s"])  # fmt: skip
    args = p.parse_args()
    torch.set_num_threads(2)
    data = Path(args.data)
    if not data.is_dir():
        from detlab.methods.datasets.fashion_mnist import DEBIAN_DIR, export

        export(DEBIAN_DIR, data, size=32)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fmnist-"))
    masks = data.parent / f"{data.name}_masks_fh"
    if "detcon_s" in args.methods and not (masks / "meta.json").exists():
        from detlab.pipelines.masks.run import generate

        t0 = time.time()
        generate("fh", data, masks, workers=2)  # official params, min_size scaled to 32 px
        print(f"FH masks: {time.time() - t0:.0f} s")
    from detlab.methods.backbones import build_backbone
    from detlab.platform.checkpoint import load_backbone
    from detlab.platform.cli import main as cli

    rows = []
    for method in args.methods:
        cfg = compose(["data=fashion_mnist", f"data.root={data}", *COMMON])
        t0 = time.time()
        if method == "random":
            torch.manual_seed(0)
            backbone, minutes = build_backbone(cfg.backbone), 0.0
        else:
            out = tmp / method
            masks_args = [MASKS[method], f"masks.path={masks}"] if method in MASKS else \
                ["masks=global"]  # fmt: skip
            argv = ["pretrain", f"method={method}", "data=fashion_mnist", f"data.root={data}",
                    *COMMON, *masks_args, f"train.steps={args.steps}",
                    f"train.checkpoint_every={args.steps}", f"train.out_dir={out}",
                    f"tracking.uri=sqlite:///{tmp}/mlflow.db"]  # fmt: skip
            assert cli(argv) == 0, f"pretraining {method} failed"
            minutes = (time.time() - t0) / 60
            backbone = load_backbone(str(out), cfg.backbone)
        metrics = probe(backbone.eval(), cfg, data)
        rows.append((method, minutes, metrics))
        print(f"{method}: {minutes:.1f} min, {metrics}", flush=True)
    print(f"\nFashion-MNIST, 32 px, ResNet-18 at 1/4 width; {args.steps} steps of batch 128 on "
          f"{torch.get_num_threads()} CPU threads; probes on 60k train / 10k test")  # fmt: skip
    print(f"{'method':<10}{'pretrain':>10}{'kNN top-1':>11}{'linear top-1':>14}")
    for method, minutes, m in rows:
        print(f"{method:<10}{minutes:>8.1f} m{m['knn_top1']:>11.4f}{m['linear_top1']:>14.4f}")


if __name__ == "__main__":
    main()

"""Which part of a seed makes a study run low: the network's initialisation, or the data
order, augmentations and mask samples? Trains a study cell with its initialisation drawn
from ``--init-seed`` and everything else from ``--seed``, and prints the probe scores.

    python tests/benchmarks/bench_seed_split.py --method detcon_b --pairs 100:101 101:100

``train.seed`` drives both in the platform. Here the method is built under its own RNG
seed (the global RNG state is saved before and restored after, so every later draw is the
one a plain run of ``--seed`` makes), so a pair (s, i) differs from the plain run of s only
in the initial weights. Runs the real study code (``detlab.pipelines.study_cells.run_cell``) on the
data and masks ``dvc repro`` built, into a temporary folder and MLflow store.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml


def patch_init(init_seed: int) -> None:
    import detlab.platform.train as train  # train() calls the build_method it imported

    build = train.build_method

    def seeded_build(*args, **kwargs):
        state = torch.random.get_rng_state()
        torch.manual_seed(init_seed)
        try:
            return build(*args, **kwargs)
        finally:
            torch.random.set_rng_state(state)

    train.build_method = seeded_build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="detcon_b")
    p.add_argument("--mask", default="gt")
    p.add_argument("--pairs", nargs="+", default=["100:101", "101:100"],
                   help="train seed:init seed")  # fmt: skip
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    from detlab.pipelines.study_cells import run_cell

    params = yaml.safe_load(Path(args.params).read_text())
    params["studies"]["method"] = args.method
    root = Path(tempfile.mkdtemp(prefix="bench-seed-split-"))
    params["studies"]["tracking_uri"] = f"sqlite:///{root}/mlflow.db"
    for pair in args.pairs:
        seed, init = (int(x) for x in pair.split(":"))
        patch_init(init)
        where = root / f"s{seed}-i{init}"  # its own checkpoint folder: nothing resumed
        rec = run_cell(params, "mask_quality", args.mask, seed, None, where / "metrics",
                       where / "out")  # fmt: skip
        m = rec["metrics"]
        print(f"train seed {seed}, init seed {init}: seg mIoU (objects) "
              f"{m['seg_miou_objects']:.4f}, background IoU {m['seg_iou_background']:.3f}, "
              f"final loss {m.get('final_loss', float('nan')):.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

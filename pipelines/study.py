"""The DVC stage running every study cell, and single cells or references by hand.

    python -m detlab.pipelines.study run [--jobs N]        # every cell (the `studies` stage)
    python -m detlab.pipelines.study run --studies methods --metrics metrics/ablations/methods \
        --reuse metrics/studies                           # a named stage (ablations/dvc.yaml)
    python -m detlab.pipelines.study mask_quality --mask fh --seed 0
    python -m detlab.pipelines.study resolution --mask gt --resolution 32 --seed 0
    python -m detlab.pipelines.study reference --kind random --seed 0

A cell's settings come from ``params.yaml`` (key ``studies``): overrides shared by every
cell, the study's own, and the cell's (``studies.<study>.cells.<mask>``). Pretraining runs
where ``studies.cluster`` says (local in-process by default; ``slurm`` submits and waits).
One cell (its key, pretraining, probes, record): pipelines/study_cells.py; every cell at
once: pipelines/study_runner.py; the references that give the probes a scale (random init,
supervised): pipelines/study_reference.py. Output: ``metrics/studies/<study>/<cell>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from detlab.platform.lifecycle import end_with_dvc


def main(argv: list[str] | None = None) -> int:
    # Lazy on purpose: the runner's spawned pool workers import this module (as
    # __mp_main__) before their initializer makes them end with this process; kept light,
    # they watch it within seconds of starting (test_dvc.py: kill -9 of dvc repro).
    from detlab.pipelines.study_cells import DEFAULT_STUDIES, STUDIES, run_cell, study_params
    from detlab.pipelines.study_reference import REFERENCES, run_reference
    from detlab.pipelines.study_runner import StudyFailure, run_studies

    p = argparse.ArgumentParser(
        description="Run every study cell (`run`, the DVC stage) or one cell or reference."
    )
    p.add_argument("study", choices=["run", *STUDIES, "reference"])
    p.add_argument("--jobs", type=int, default=None, help="run: cells at a time (studies.jobs)")
    p.add_argument(
        "--studies",
        nargs="+",
        choices=STUDIES,
        default=list(DEFAULT_STUDIES),
        help="run: the studies of this stage (default: the `studies` stage's)",
    )
    p.add_argument("--reuse", nargs="*", type=Path, default=[],
                   help="run: metrics folders of other stages whose records of the same key "
                   "are copied instead of retrained")  # fmt: skip
    p.add_argument("--mask", help="mask source (studies)")
    p.add_argument("--kind", choices=REFERENCES, help="reference kind (reference)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", default="metrics/studies")
    p.add_argument("--outputs", default="outputs/studies")
    args = p.parse_args(argv)
    params = yaml.safe_load(Path(args.params).read_text())
    if args.study == "run":
        end_with_dvc("studies")  # `kill -9 dvc repro` ends this stage (and so its workers)

        try:
            run_studies(params, Path(args.metrics), Path(args.outputs), args.jobs,
                        studies=tuple(args.studies), reuse=args.reuse)  # fmt: skip
        except StudyFailure as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.study == "reference":
        if not args.kind:
            p.error("reference needs --kind random|supervised")
        rec = run_reference(params, args.kind, args.seed, Path(args.metrics))
        print(json.dumps({k: rec[k] for k in ("cell", "metrics", "train_seconds")}))
        return 0
    if not args.mask:
        p.error(f"{args.study} needs --mask")
    rec = run_cell(
        study_params(params, (args.study,)),
        args.study,
        args.mask,
        args.seed,
        args.resolution,
        Path(args.metrics),
        Path(args.outputs),
    )
    print(json.dumps({k: rec[k] for k in ("cell", "abo", "metrics", "pretrain_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

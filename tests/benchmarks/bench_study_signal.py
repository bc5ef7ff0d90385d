"""Does the study protocol still learn? Random init vs pretrained probe scores, and the
effect-to-noise ratios the study's acceptance rests on, for a few cells and seeds.

    python tests/benchmarks/bench_study_signal.py                 # train: seeds 100-102
    python tests/benchmarks/bench_study_signal.py --seeds 100 101 --masks gt global
    python tests/benchmarks/bench_study_signal.py --metrics metrics/studies   # read only
    python tests/benchmarks/bench_study_signal.py --set train.steps=1000   # a bigger budget
    python tests/benchmarks/bench_study_signal.py --method detcon_b         # its table row
    python tests/benchmarks/bench_study_signal.py --method soco --masks ss  # Fashion-MNIST
    python tests/benchmarks/bench_study_signal.py --method soco --masks ss --reference-seeds 500 501
    python tests/benchmarks/bench_study_signal.py --study mask_quality --method vicreg
    python tests/benchmarks/bench_study_signal.py --study methods_fmnist --method byol soco
    python tests/benchmarks/bench_study_signal.py --study soco_proposals_fmnist --masks ss object_box

Training runs the real study code (``detlab.pipelines.study``) with ``params.yaml``'s protocol
on the dataset and masks that ``dvc repro`` built (``data/``), into a temporary folder and a
temporary MLflow store. The default seeds (>= 100) are the protocol's tuning seeds, apart
from the reported ones (0..2). Prints per row mean ± std over seeds of the headline metric
(object-class mIoU of the frozen linear segmentation probe) and, for each pretrained row,
the gain over random init and gt - global with their effect size d (the difference over the
seed std pooled over the two rows): the study asks for >= 3 and >= 2.

``--method`` alone trains the method's row of the method table where the README shows it
learning, at that row's budget and settings, against random init: ``methods`` (the shapes;
DetCon on gt masks), or ``methods_fmnist`` (Fashion-MNIST, built by ``dvc repro
ablations/dvc.yaml:fashion_mnist_masks``) for BYOL and SoCo, which do not learn on the shapes
at their budgets there (``ROW_STUDY``). ``--masks`` (one set) replaces an object-level row's
mask set.
Each method gets its own keys and schedule from ``studies.method_overrides.<method>``;
``--set method.<key>=...`` adds to those, other ``--set`` keys to ``studies.common`` (a row's
own cell settings come after them: change a row's budget with ``--params``).

``--study`` names the study: a study of rows (``methods``, ``methods_fmnist``), where
``--method`` names its rows (default: every row), each trained with its row's masks and its
own cell settings, on the study's data and probes, the headline being the study's (linear
top-1 on Fashion-MNIST); or a study of mask sets (default ``mask_quality``, when no
``--method`` is given), where ``--method`` trains on ``--masks`` (default gt and global, the
global cell being its image-level twin; an image-level method: global only).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from detlab.methods.registry import IMAGE_BASELINE
from detlab.pipelines.stats import pooled_std

# --method alone: the method table whose row shows the method learning (README, "Every
# method"); BYOL and SoCo stay near random init on the shapes at those rows' budgets.
ROW_STUDY = {"byol": "methods_fmnist", "soco": "methods_fmnist"}


def train_records(params: dict, study: str, cells: list[str], seeds: list[int],
                  root: Path, reference_seeds: list[int] = ()) -> list[dict]:  # fmt: skip
    """Random init and ``cells`` (mask sets, or rows of a study of rows) of ``study`` on
    ``seeds``; random init alone on ``reference_seeds``."""
    from detlab.methods.data import mask_build_command
    from detlab.pipelines.study_cells import cell_row, run_cell, study_params
    from detlab.pipelines.study_reference import run_reference

    params["studies"]["tracking_uri"] = f"sqlite:///{root}/mlflow.db"
    params.setdefault("quality_dir", "metrics/mask_quality")
    params = study_params(params, (study,))
    for cell in cells:  # a mask set not built is named before random init trains
        mask = cell_row(params, study, cell)[1]
        folder = Path(params["masks"]["out"]) / mask
        if mask != "global" and not folder.exists():
            command = mask_build_command(mask, params["prepare"]["out"], folder)
            raise SystemExit(f"error: mask set {mask!r} of {study} {cell} is not built at "
                             f"{folder}: `{command}`")  # fmt: skip
    records = []
    for seed in seeds:
        t0 = time.time()
        records.append(run_reference(params, "random", seed, root / "metrics"))
        for cell in cells:
            records.append(
                run_cell(params, study, cell, seed, None, root / "metrics", root / "out")
            )
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    if reference_seeds:  # random init alone: the reference's spread
        t0 = time.time()
        for seed in reference_seeds:
            records.append(run_reference(params, "random", seed, root / "metrics"))
        print(f"random init on {len(reference_seeds)} more seeds: {time.time() - t0:.0f} s")
    return records


def read_records(folder: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for sub in sorted(q for q in folder.iterdir() if q.is_dir())
        for p in sorted(sub.glob("*.json"))
    ]


def row_of(record: dict) -> str:
    return record.get("kind") or record["mask"]


def paired_line(row: str, vals: dict[int, float], random: dict[int, float]) -> str:
    """How many of ``row``'s seeds beat random init of the same seed (the same initial
    weights), with the range of those gains; where random init's own spread sets the pooled
    std (Fashion-MNIST), d can miss a gain every seed shows."""
    seeds = sorted(set(vals) & set(random))
    if not seeds:
        return f"{row}: no random init of the same seeds"
    gains = [vals[s] - random[s] for s in seeds]
    above = sum(g > 0 for g in gains)
    return (f"{row}: above its seed's random init on {above} of {len(seeds)} seeds "
            f"(gains {min(gains):+.4f} to {max(gains):+.4f})")  # fmt: skip


def rank_line(row: str, vals: dict[int, float], random: dict[int, float]) -> str:
    """Where ``row``'s seeds fall among random init's, all its seeds (``--reference-seeds``
    measures the reference's spread beyond the row's own seeds): how many lie above its best,
    and the exact one-sided Mann-Whitney p of "the row is higher". Needs no normal spread or
    equal variances, which d assumes and Fashion-MNIST's random init (0.64-0.77) does not
    give."""
    from scipy.stats import mannwhitneyu

    a, b = list(vals.values()), list(random.values())
    if len(a) < 2 or len(b) < 2:
        return f"{row}: too few seeds to rank against random init ({len(a)} and {len(b)})"
    above = sum(x > max(b) for x in a)
    p = mannwhitneyu(a, b, alternative="greater", method="exact").pvalue
    return (f"{row}: {above} of {len(a)} seeds above random init's best of {len(b)} seeds "
            f"({max(b):.4f}); Mann-Whitney exact one-sided p = {p:.2g}")  # fmt: skip


def report(records: list[dict]) -> None:
    from detlab.pipelines.report import diff_finding
    from detlab.pipelines.report_terms import headline_of

    headline = headline_of(sorted({k for r in records for k in r["metrics"]}))
    by_row: dict[str, dict[int, float]] = {}
    for r in records:
        if headline in r["metrics"]:
            by_row.setdefault(row_of(r), {})[int(r["seed"])] = r["metrics"][headline]
    pretrained = [k for k in by_row if k not in ("random", "supervised")]
    noise = pooled_std([list(by_row[k].values()) for k in pretrained])
    print(f"\n{headline}; seed std pooled over pretrained rows = {noise:.4f}")
    print(f"{'row':<12}{'mean':>8}{'std':>8}{'n':>3}   Δ vs random [95% CI]        d   Δ/all-std")
    random = by_row.get("random", {})

    def sizes(a: dict, b: dict) -> str:
        f = diff_finding("x", "x", headline, a, b, noise)
        d = float("nan") if f["d"] is None else f["d"]
        ratio = float("nan") if f["ratio"] is None else f["ratio"]
        return f"{f['diff']:+.4f} [{f['lo']:+.4f}, {f['hi']:+.4f}]  {d:+5.1f}  {ratio:+5.1f}"

    for row, vals in by_row.items():
        v = np.array(list(vals.values()))
        line = f"{row:<12}{v.mean():8.4f}{v.std(ddof=1) if len(v) > 1 else 0:8.4f}{len(v):3d}"
        if random and row != "random":
            line += "   " + sizes(vals, random)
        print(line)
    if "gt" in by_row and "global" in by_row:
        print(f"gt - global: {sizes(by_row['gt'], by_row['global'])}")
    for row in pretrained:
        print(paired_line(row, by_row[row], random))
        print(rank_line(row, by_row[row], random))
    print(
        "d = Δ / seed std pooled over the two rows (targets: gt - random >= 3, "
        "gt - global >= 2); Δ/all-std: over every pretrained row"
    )


def pick_cells(
    p: argparse.ArgumentParser, args: argparse.Namespace, params: dict
) -> tuple[str, list[str]]:
    """Narrow ``params`` to what ``args`` asks to train: the study and its cells (rows or
    mask sets)."""
    st = params["studies"]
    study = args.study
    if study is None and args.method:
        homes = {ROW_STUDY.get(m, "methods") for m in args.method}
        if len(homes) > 1:
            p.error(f"--method {' '.join(args.method)}: rows of {sorted(homes)}; name --study")
        study = homes.pop()
    study = study or "mask_quality"
    if study not in st:
        p.error(f"params.yaml has no studies.{study}")
    rows = st[study].get("rows")
    if rows is None and args.method and len(args.method) > 1:
        p.error(f"--study {study} trains one method (rows: --study methods ...)")
    methods = args.method or ([*rows] if rows else [st["method"]])
    if rows is not None:
        unknown = sorted(set(methods) - set(rows))
        if unknown:
            p.error(f"studies.{study}.rows has no {unknown}; rows: {sorted(rows)}")
        st[study]["rows"] = {m: dict(rows[m]) for m in methods}
        if args.masks:
            image = [m for m in methods if rows[m]["method"] not in IMAGE_BASELINE]
            if len(args.masks) > 1 or (image and args.masks != ["global"]):
                p.error(f"--masks: a row trains one mask set (image-level rows: global); "
                        f"got {args.masks} for {methods}")  # fmt: skip
            for m in methods:
                st[study]["rows"][m]["mask"] = args.masks[0]
        cells = methods
    else:
        st["method"] = methods[0]
        twin = methods[0] in IMAGE_BASELINE
        cells = args.masks or (["gt", "global"] if twin else ["global"])
    own = [o for o in args.set if o.startswith("method.")]
    st["common"] += [o for o in args.set if o not in own]
    for method in {rows[m]["method"] for m in methods} if rows else methods:
        if isinstance(st.get("method_overrides"), dict):
            st["method_overrides"][method] = [*st["method_overrides"].get(method, []), *own]
        else:
            st["method_overrides"] = [*st.get("method_overrides", []), *own]
    return study, cells


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[100, 101, 102])
    p.add_argument(
        "--masks",
        nargs="+",
        default=None,
        help="default: a row's own; gt global (object-level methods), global (image-level)",
    )
    p.add_argument("--reference-seeds", type=int, nargs="+", default=[],
                   help="more seeds for random init alone (~35 s each on Fashion-MNIST): its "
                   "spread measured beyond --seeds, for d and the rank line")  # fmt: skip
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--metrics", type=Path, help="read these study records instead of training")
    p.add_argument("--study", help="a study of params.yaml (default: --method's table, "
                   "else mask_quality)")  # fmt: skip
    p.add_argument("--method", nargs="+", help="a method (its row of a method table), "
                   "or rows of --study (default: all)")  # fmt: skip
    p.add_argument("--set", nargs="*", default=[], help="overrides added to studies.common")
    return p


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    if args.metrics:
        records = read_records(args.metrics)
        if not any(r.get("metrics") for r in records):
            p.error(f"--metrics {args.metrics}: no study records there "
                    "(<folder>/<study>/<cell>.json; a bench run's are in its metrics/)")  # fmt: skip
    else:
        params = yaml.safe_load(Path(args.params).read_text())
        study, cells = pick_cells(p, args, params)
        root = Path(tempfile.mkdtemp(prefix="bench-study-signal-"))
        print(f"studies.{study}: {' '.join(cells)} on seeds {args.seeds} -> {root}")
        records = train_records(params, study, cells, args.seeds, root, args.reference_seeds)
    report(records)


if __name__ == "__main__":
    main()

"""DVC stage `report`: the study cells as tables, plots and findings with honest statistics.

    python -m detlab.pipelines.report --metrics metrics/studies --out reports

Reads ``<metrics>/{mask_quality,resolution,references}/*.json`` (one record per cell, from
``detlab.pipelines.study``); writes ``reports/mask_quality.{md,png}``,
``reports/resolution.{md,png}``, ``reports/studies.json`` (summaries and raw cells) and the flat
per-cell tables ``reports/plots/*.json`` for ``dvc plots``. Whatever is missing (a study, the
references) is left out, but every file is written.

How to read it: cells are mean ± sample std over seeds (n). The headline is seg_miou_objects,
the object-class mIoU of a frozen linear segmentation probe; it only means something next to
the reference rows (random init: the same backbone never trained; supervised: trained on the
labels, its steps in its label; chance). Every difference has a 95% bootstrap CI over seeds,
paired by seed where possible, and "reproduced" needs the whole CI on the paper's side of 0
([-inf, +inf] with one seed a side: no claim). ⚠ marks a pretraining row within noise of random
init. Rank correlations use exact permutation p over every (x, seed) point. Plots:
``detlab.pipelines.report_plots``; text: ``detlab.pipelines.report_markdown``; the metric and
row names and statistical levels they share: ``detlab.pipelines.report_terms``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from detlab.methods.registry import title
from detlab.pipelines.report_markdown import mask_quality_markdown, resolution_markdown
from detlab.pipelines.report_mlflow import log_report
from detlab.pipelines.report_plots import plot_mask_quality, plot_resolution
from detlab.pipelines.report_terms import (
    ALPHA,
    FINDING_METRICS,
    FLAG_STD,
    GLOBAL,
    GT,
    HEADLINE,
    LEVEL,
    METRIC_NAMES,
    REFERENCES,
    main_metrics,
    reference_label,
    steps_in,
)
from detlab.pipelines.stats import (
    combine_verdicts,
    describe,
    interval_verdict,
    paired_diff_ci,
    pooled_std,
    rank_verdict,
    rho_bootstrap_ci,
    seedwise_mean,
    spearman_exact,
)

COMPARISONS = (  # (id, label, row a, row b, acceptance target in pooled seed std)
    ("gt_minus_random", "DetCon (gt masks) − random init", GT, "random", 3.0),
    ("gt_minus_global", "DetCon (gt masks) − global ({baseline})", GT, GLOBAL, 2.0),
)


# ---------------------------------------------------------------- records and rows
def load_cells(root: Path, study: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / study).glob("*.json"))]


def ref_kind(record: dict) -> str:
    """'random' or 'supervised': the record's ``kind``, else its cell name's prefix."""
    return record.get("kind") or record["cell"].rsplit("-s", 1)[0]


def seed_values(records: list[dict], key: str) -> dict[int, float]:
    found = {int(r["seed"]): r.get("metrics", {}).get(key) for r in records}
    return {s: float(v) for s, v in sorted(found.items()) if v is not None}


def metric_keys(records: list[dict]) -> list[str]:
    present = {k for r in records for k in r.get("metrics", {})}
    return [k for k in METRIC_NAMES if k in present]


def class_keys(records: list[dict]) -> list[str]:
    """Background then ``seg_iou_<class>`` per class (the records' ``classes``, else found)."""
    present = {k for r in records for k in r.get("metrics", {})}
    named = [f"seg_iou_{c}" for r in records for c in r.get("classes") or []]
    found = dict.fromkeys(["seg_iou_background", *(named or sorted(present))])
    return [k for k in found if k in present and k.startswith("seg_iou_")]


def make_row(name: str, label: str, kind: str, records: list[dict], keys: list[str]) -> dict:
    first = records[0] if records else {}
    seeds = sorted({int(r["seed"]) for r in records})
    row = dict(row=name, label=label, kind=kind, abo=first.get("abo"), method=first.get("method"))
    return row | dict(seeds=seeds, metrics={k: describe(seed_values(records, k)) for k in keys})


def vals(row: dict | None, key: str) -> dict[int, float]:
    """seed -> value of ``key`` in a summary row ({} when the row or metric is missing)."""
    return (row or {}).get("metrics", {}).get(key, {}).get("values", {})


def reference_rows(refs: list[dict], keys: list[str]) -> dict[str, dict]:
    groups = {k: [r for r in refs if ref_kind(r) == k] for k in REFERENCES}
    rows = {}
    for kind, group in groups.items():
        if group:
            steps = steps_in(group[0].get("overrides") or []) if kind == "supervised" else None
            label = reference_label(kind, steps)
            rows[kind] = make_row(kind, label, "reference", group, keys) | {"steps": steps}
    return rows


def chance_of(records: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in records:
        for k, v in (r.get("chance") or {}).items():
            out.setdefault(k, v)
    return out


# ---------------------------------------------------------------- findings
def diff_finding(fid, label, metric, a, b, pooled=0.0, target=None) -> dict:
    """mean(a) - mean(b) with its bootstrap CI and verdict, and its size: ``d`` in the seed
    std pooled over the two rows compared (Cohen's d; the acceptance target applies to it)
    and ``ratio`` in the std pooled over every pretraining row (stricter when one row is
    noisier than these two)."""
    ci = paired_diff_ci(a, b, LEVEL)
    finite = math.isfinite(ci["diff"])
    pair = pooled_std([list(a.values()), list(b.values())])
    d = ci["diff"] / pair if pair > 0 and finite else None
    ratio = ci["diff"] / pooled if pooled > 0 and finite else None
    met = None if target is None or d is None else bool(d >= target)
    out = dict(id=fid, label=label, metric=metric, verdict=interval_verdict(ci["lo"], ci["hi"]))
    out |= dict(pair_std=pair, d=d, pooled_std=pooled, ratio=ratio)
    return out | ci | dict(target=target, meets_target=met)


def order_finding(rows: list[dict], metric: str) -> dict:
    """Better masks -> better transfer: Spearman rho(abo, metric). rho is reported on the
    per-source means; the test runs over every (abo, per-seed value) point, exchangeable
    under the null of no relation, so a few sources with several seeds can be significant
    (over 4 means alone the smallest attainable p is 1/12)."""
    xs, per = [r["abo"] for r in rows], [list(vals(r, metric).values()) for r in rows]
    rho = spearman_exact(xs, [np.mean(v) for v in per])[0]
    px, py = zip(*((x, v) for x, vs in zip(xs, per, strict=True) for v in vs), strict=True)
    rho_points, p = spearman_exact(px, py)
    lo, hi = rho_bootstrap_ci(xs, per, LEVEL)
    out = dict(id="abo_order", label="better masks -> better transfer", metric=metric, rho=rho)
    out |= dict(p=p, lo=lo, hi=hi, n_sources=len(rows), sources=[r["row"] for r in rows])
    out |= dict(rho_points=rho_points, n_points=len(px))
    return out | dict(verdict=rank_verdict(rho, p, lo, hi, ALPHA))


def mask_findings(rows: dict[str, dict], metric: str, pooled: float) -> list[dict]:
    out = []
    baseline = title(row_method(rows.get(GLOBAL)))
    for fid, label, a, b, target in COMPARISONS:
        va, vb = vals(rows.get(a), metric), vals(rows.get(b), metric)
        if va and vb:
            label = label.format(baseline=baseline)
            out.append(diff_finding(fid, label, metric, va, vb, pooled, target))
    detcon = [r for r in rows.values() if r["kind"] == "pretrain" and r["row"] != GLOBAL]
    detcon = [r for r in detcon if vals(r, metric)]
    if len(ordered := [r for r in detcon if r["abo"] is not None]) >= 3:
        out.append(order_finding(ordered, metric))
    if detcon and (glob := vals(rows.get(GLOBAL), metric)):
        label = f"DetCon averaged over {len(detcon)} mask sources − global ({baseline})"
        avg = seedwise_mean([vals(r, metric) for r in detcon])
        out.append(diff_finding("detcon_avg_minus_global", label, metric, avg, glob, pooled))
    return out


def summarise_mask_quality(cells: list[dict], refs: list[dict]) -> dict:
    records = cells + refs
    keys, classes = metric_keys(records), class_keys(records)
    by_mask: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        by_mask[c["mask"]].append(c)
    label = {m: f"global ({title(cs[0].get('method'))})" if m == GLOBAL else m
             for m, cs in by_mask.items()}  # fmt: skip
    pre = [make_row(m, label[m], "pretrain", cs, keys + classes) for m, cs in by_mask.items()]
    pre.sort(key=lambda r: (r["abo"] is not None, r["abo"] or 0.0, r["row"]))
    rows = {r["row"]: r for r in pre} | reference_rows(refs, keys + classes)
    pooled = {k: pooled_std([list(vals(r, k).values()) for r in pre]) for k in keys}
    if random := vals(rows.get("random"), HEADLINE):
        for r in pre:
            ci = paired_diff_ci(vals(r, HEADLINE), random, LEVEL)
            noise = not (ci["lo"] > 0 or ci["hi"] < 0) or ci["diff"] < FLAG_STD * pooled[HEADLINE]
            r["vs_random"] = ci | dict(flag=bool(noise))
    found = [f for k in FINDING_METRICS if k in keys for f in mask_findings(rows, k, pooled[k])]
    probe = sorted({r["probe_resolution"] for r in records if r.get("probe_resolution")})
    seeds = sorted({int(r["seed"]) for r in records})
    s = dict(rows=rows, metrics=keys, classes=classes, chance=chance_of(records), seeds=seeds)
    s |= dict(method=methods_title(cells), baseline=title(row_method(rows.get(GLOBAL))))
    return s | dict(pooled_std=pooled, probe_resolutions=probe, findings=found)


def methods_title(cells: list[dict]) -> str:
    """The object-level method(s) the study's non-global cells trained, for its prose."""
    return " / ".join(sorted({title(c.get("method")) for c in cells if c["mask"] != GLOBAL}))


def row_method(row: dict | None) -> str | None:
    return (row or {}).get("method")


def resolution_points(res_cells: list[dict], mq_cells: list[dict]) -> list[dict]:
    """The resolution study's cells plus the mask-quality cells of the same mask sources
    (they supply that study's resolution); on a clash the resolution study's cell wins."""
    masks = {c["mask"] for c in res_cells}
    merged = {(c["mask"], int(c["resolution"]), int(c["seed"])): c for c in mq_cells}
    merged |= {(c["mask"], int(c["resolution"]), int(c["seed"])): c for c in res_cells}
    return [merged[k] for k in sorted(merged) if k[0] in masks]


def gt_gains_most(by_mask: dict[str, dict[int, dict]], metric: str) -> dict:
    """gt's per-seed gain (highest - lowest shared resolution) minus each other mask's."""
    comparisons = {}
    for mask in (m for m in by_mask if m != GT):
        if len(shared := sorted(set(by_mask[GT]) & set(by_mask[mask]))) < 2:
            continue
        lo, hi = shared[0], shared[-1]
        gain = {}
        for m in (GT, mask):
            v = by_mask[m]
            gain[m] = {s: v[hi][s] - v[lo][s] for s in sorted(set(v[hi]) & set(v[lo]))}
        ci = paired_diff_ci(gain[GT], gain[mask], LEVEL)
        comparisons[mask] = ci | dict(
            lo_px=lo, hi_px=hi, verdict=interval_verdict(ci["lo"], ci["hi"])
        )
    verdict = combine_verdicts([c["verdict"] for c in comparisons.values()])
    return dict(id="gt_gains_most", metric=metric, comparisons=comparisons, verdict=verdict)


def resolution_findings(table: dict[str, dict[int, dict]], metric: str) -> list[dict]:
    out, by_mask = [], {}
    for mask, by_res in table.items():
        v = by_mask[mask] = {r: vals(row, metric) for r, row in by_res.items() if vals(row, metric)}
        if len(v) < 2:
            continue
        xs, ys = zip(*((r, x) for r in v for x in v[r].values()), strict=True)
        rho, p = spearman_exact(xs, ys)
        lo, hi = min(v), max(v)
        f = diff_finding(
            f"{mask}_high_minus_low", f"{mask}: {hi} px − {lo} px", metric, v[hi], v[lo]
        )
        out.append(f | dict(mask=mask, rho=rho, p=p, n_points=len(xs)))
    if GT in by_mask and len(by_mask) > 1:
        out.append(gt_gains_most(by_mask, metric))
    return out


def studies(cells: list[dict]) -> str:
    return " + ".join(sorted({c["study"] for c in cells}))


def summarise_resolution(res_cells: list[dict], mq_cells: list[dict], refs: list[dict]) -> dict:
    cells = resolution_points(res_cells, mq_cells)
    keys = main_metrics(metric_keys(cells + refs))
    groups: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for c in cells:
        groups[c["mask"]][int(c["resolution"])].append(c)
    table = {
        m: {
            r: make_row(f"{m}@{r}", f"{r} px", studies(cs), cs, keys) for r, cs in sorted(g.items())
        }
        for m, g in sorted(groups.items())
    }
    found = [f for k in keys for f in resolution_findings(table, k)]
    s = dict(table=table, metrics=keys, references=reference_rows(refs, keys))
    s |= dict(method=methods_title(cells))
    return s | dict(chance=chance_of(cells + refs), findings=found)


# ---------------------------------------------------------------- output
def flat_rows(cells: list[dict], refs: list[dict]) -> list[dict]:
    """One row per cell and reference run; ``row`` = mask name, "random" or "supervised"."""
    named = [(c["mask"], c) for c in cells] + [(ref_kind(r), r) for r in refs]
    keep = ("mask", "seed", "abo", "resolution")
    return [
        {"row": name, **{k: c.get(k) for k in keep}, **c.get("metrics", {})} for name, c in named
    ]


def mean_rows(summary_rows: dict[str, dict], x: str, metric: str) -> list[dict]:
    """The ``dvc plots`` data of a study (template ``plots/study_means.json``): one point
    per (series, x) with the seed mean and mean ± std, and one row per reference (a rule)."""
    out = []
    for r in summary_rows:
        m = r["metrics"].get(metric) or {}
        if m.get("mean") is None:
            continue
        std = m.get("std") or 0.0
        out.append(dict(series=r["series"], kind=r["kind"], **{x: r.get(x)}, mean=m["mean"],
                        std=std, lo=m["mean"] - std, hi=m["mean"] + std, n=m["n"]))  # fmt: skip
    return out


def plot_tables(mq_s: dict, res_s: dict) -> dict[str, list[dict]]:
    """``mask_quality``: x = ABO, one point per mask source; ``resolution``: x = px, one
    line per mask source; both with the references as rules."""
    refs = [r | dict(series=r["label"], kind="reference") for r in res_s["references"].values()]
    mq = [r | dict(series=r["label"], kind="cell" if r["kind"] == "pretrain" else "reference")
          for r in mq_s["rows"].values()]  # fmt: skip
    res = [r | dict(series=m, kind="cell", resolution=int(k))
           for m, g in res_s["table"].items() for k, r in g.items()]  # fmt: skip
    return {
        "mask_quality": mean_rows(mq, "abo", HEADLINE),
        "resolution": mean_rows(res + refs, "resolution", HEADLINE),
    }


def finite(o):
    """JSON-safe copy: non-finite floats (an unknown CI bound, an undefined rho) -> null."""
    if isinstance(o, dict):
        return {str(k): finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [finite(v) for v in o]
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    return o.item() if isinstance(o, np.generic) else o


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(finite(obj), indent=1, allow_nan=False))


def write_report(metrics_root: Path, out: Path) -> dict:
    """Write every report file from whatever records exist; return the studies.json content."""
    (out / "plots").mkdir(parents=True, exist_ok=True)
    mq, res, refs = (
        load_cells(metrics_root, s) for s in ("mask_quality", "resolution", "references")
    )
    mq_s, res_s = summarise_mask_quality(mq, refs), summarise_resolution(res, mq, refs)
    (out / "mask_quality.md").write_text(mask_quality_markdown(mq_s))
    (out / "resolution.md").write_text(resolution_markdown(res_s))
    plot_mask_quality(mq_s, out / "mask_quality.png")
    plot_resolution(res_s, out / "resolution.png")
    points = resolution_points(res, mq)
    write_json(out / "plots" / "mask_quality.json", flat_rows(mq, refs))
    write_json(out / "plots" / "resolution.json", flat_rows(points, refs))
    for name, table in plot_tables(mq_s, res_s).items():
        write_json(out / "plots" / f"{name}_means.json", table)
    ref_rows = reference_rows(refs, mq_s["metrics"] + mq_s["classes"])
    result = {
        "mask_quality": {"summary": mq_s, "cells": mq},
        "resolution": {"summary": res_s, "cells": points},
        "references": {"rows": ref_rows, "cells": refs},
    }
    write_json(out / "studies.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="metrics/studies")
    p.add_argument("--out", default="reports")
    p.add_argument("--tracking-uri", default=None,
                   help="also log each study's report to its MLflow parent run")  # fmt: skip
    args = p.parse_args(argv)
    result = write_report(Path(args.metrics), Path(args.out))
    if args.tracking_uri:
        runs = log_report(result, Path(args.out), args.tracking_uri)
        print(f"report logged to MLflow parent run(s) {', '.join(runs) or '(none found)'}")
    for name in ("mask_quality.md", "resolution.md"):
        print((Path(args.out) / name).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

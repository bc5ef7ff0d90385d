"""The ablations' reports (named stages of ``ablations/dvc.yaml``): one table each, every
row beside the references (random init, supervised, chance), every claim with its CI.

    python -m detlab.pipelines.report_ablations mask_count --metrics metrics/ablations/mask_count \
        --out reports/ablations [--tracking-uri sqlite:///mlflow.db]

- ``mask_count``: mask quality at a fixed region count (a ladder of warped ground truth) and
  region count at a fixed purity (ground truth split into parts); each ladder's slope with
  a Student-t CI over the per-seed slopes and an exact within-seed permutation p.
- ``soco_proposals``: SoCo with selective-search, ground-truth and random boxes;
  ``soco_proposals_fmnist`` the same on Fashion-MNIST (the object's box as ground truth).
- ``methods``: every method against random init; "learns" needs the CI of its gain above 0
  and d >= 3 (the gain over the seed std pooled over the method's and random init's rows).

Writes ``<out>/<study>.md``, ``<out>/<study>.png`` and ``<out>/<study>.json``.
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from detlab.methods.registry import title
from detlab.pipelines.report import (
    chance_of,
    diff_finding,
    load_cells,
    make_row,
    metric_keys,
    reference_rows,
    vals,
    write_json,
)
from detlab.pipelines.report_markdown import fci, fnum, fstat, table
from detlab.pipelines.report_mlflow import row_metrics
from detlab.pipelines.report_plots import draw_references, finish, panels
from detlab.pipelines.report_terms import (
    ABLATIONS,
    HEADLINE,
    LEVEL,
    METRIC_NAMES,
    REFERENCES,
    headline_of,
    steps_in,
)
from detlab.pipelines.stats import ladder_slope, pooled_std

LEARNS_D = 3.0  # a method "learns" when its gain over random init is >= this many pooled std
SHOWN = (HEADLINE, "seg_iou_background", "linear_top1", "knn_top1")
QUALITY_STEP = 0.1  # the quality slope is read per +0.1 ABO


# ---------------------------------------------------------------- summaries
def rows_of(cells: list[dict], keys: list[str], order: list[str] | None = None) -> dict[str, dict]:
    """One summary row per cell row name (the mask set, or the method table's row), with
    the quality of the mask set it trained on and its wall time per run."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        groups[c["mask"]].append(c)
    names = [n for n in (order or []) if n in groups] + sorted(set(groups) - set(order or []))
    rows = {}
    for name in names:
        cs = groups[name]
        row = make_row(name, name, "pretrain", cs, keys)
        first = cs[0]
        row |= {k: first.get(k) for k in ("masks", "purity", "masks_per_image")}
        wall = [c["pretrain_seconds"] for c in cs if c.get("pretrain_seconds") is not None]
        row["pretrain_seconds"] = float(np.mean(wall)) if wall else None
        row["steps"] = steps_in(first.get("overrides", []))
        rows[name] = row
    return rows


def gains(rows: dict[str, dict], refs: dict[str, dict], metric: str = HEADLINE) -> None:
    """Each row's gain over random init: CI, d and whether it learns (in place)."""
    random = vals(refs.get("random"), metric)
    for r in rows.values():
        if random and (v := vals(r, metric)):
            f = diff_finding(f"{r['row']}_minus_random", r["label"], metric, v, random)
            learns = f["lo"] > 0 and f["d"] is not None and f["d"] >= LEARNS_D
            r["vs_random"] = f | dict(learns=bool(learns))


def base_summary(study: str, cells: list[dict], refs: list[dict], order=None) -> dict:
    keys = metric_keys(cells + refs)
    headline = headline_of(keys)
    rows, ref_rows = rows_of(cells, keys, order), reference_rows(refs, keys)
    gains(rows, ref_rows, headline)
    seeds = sorted({int(c["seed"]) for c in cells})
    pooled = pooled_std([list(vals(r, headline).values()) for r in rows.values()])
    return dict(study=study, rows=rows, references=ref_rows, metrics=keys, seeds=seeds,
                chance=chance_of(cells + refs), pooled_std=pooled, findings=[],
                headline=headline)  # fmt: skip


def ladder_finding(fid: str, label: str, rows: dict[str, dict], names: list[str], x: str,
                   transform=None, scale: float = 1.0, unit: str = "") -> dict | None:  # fmt: skip
    """The slope of the headline over a ladder's rows (x: a row field, optionally
    transformed), scaled to ``unit`` (e.g. per +0.1 ABO)."""
    present = [rows[n] for n in names if n in rows and rows[n].get(x) is not None]
    if len(present) < 2:
        return None
    xs = [transform(r[x]) if transform else r[x] for r in present]
    f = ladder_slope(xs, [vals(r, HEADLINE) for r in present], LEVEL)
    for k in ("slope", "lo", "hi"):
        f[k] *= scale
    f["per_seed"] = {s: v * scale for s, v in f["per_seed"].items()}
    verdict = "inconclusive (the CI contains 0 or p ≥ 0.05)"
    if f["p"] < 0.05 and (f["lo"] > 0 or f["hi"] < 0):
        verdict = "positive" if f["slope"] > 0 else "negative"
    return f | dict(id=fid, label=label, unit=unit, rows=[r["row"] for r in present],
                    xs=xs, verdict=verdict, metric=HEADLINE)  # fmt: skip


def summarise(study: str, cells: list[dict], refs: list[dict], params: dict | None = None) -> dict:
    spec = ((params or {}).get("studies") or {}).get(study) or {}
    if study == "mask_count":
        ladders = spec.get("ladders") or {}
        order = list(dict.fromkeys([*ladders.get("quality", []), *ladders.get("count", [])]))
        s = base_summary(study, cells, refs, order)
        q = ladder_finding("quality_slope", "mask quality at a fixed region count", s["rows"],
                           ladders.get("quality", []), "abo", scale=QUALITY_STEP,
                           unit="per +0.1 ABO")  # fmt: skip
        c = ladder_finding("count_slope", "region count at a fixed purity", s["rows"],
                           ladders.get("count", []), "masks_per_image", transform=math.log2,
                           unit="per doubling of the regions")  # fmt: skip
        s["findings"] = [f for f in (q, c) if f]
        s["ladders"] = ladders
        return s
    s = base_summary(study, cells, refs, list(spec.get("rows") or spec.get("masks") or []))
    methods = [("detcon_b", "byol"), ("detcon_s", "simclr"), ("soco", "byol")]
    pairs = {
        "soco_proposals": [("gt_boxes", "random_boxes"), ("ss", "random_boxes"),
                           ("gt_boxes", "ss")],
        "soco_proposals_fmnist": [("object_box", "random_boxes"), ("ss", "random_boxes"),
                                  ("object_box", "ss")],
        "methods": methods,
        "methods_fmnist": methods,
    }.get(study, [])  # fmt: skip
    h = s["headline"]
    for a, b in pairs:
        if (va := vals(s["rows"].get(a), h)) and (vb := vals(s["rows"].get(b), h)):
            label = f"{row_title(s['rows'][a])} − {row_title(s['rows'][b])}"
            s["findings"].append(diff_finding(f"{a}_minus_{b}", label, h, va, vb,
                                              s["pooled_std"]))  # fmt: skip
    return s


def row_title(row: dict) -> str:
    method = title(row.get("method"))
    masks = row.get("masks")
    return method if masks in (None, "global") else f"{method} ({masks})"


# ---------------------------------------------------------------- markdown
INTRO = {
    "mask_count": (
        "Does DetCon gain from better masks, or from more of them? The mask-quality study "
        "varies both at once (grid: 16 regions of ABO 0.39; ground truth: 3.5 of ABO 1). Here "
        "one factor moves at a time. **Quality ladder**: the ground truth with its boundaries "
        "warped by a smooth random field of 4, 12 and 32 px (same regions, same count, ABO "
        "falls). **Count ladder**: every ground-truth region (background included) cut into "
        "2 and 4 parts of equal area (every mask inside one object: purity stays 1, the count "
        "doubles). Slopes: per seed, least squares over the ladder (the seed's offset "
        "removed); mean over seeds with a Student-t CI; exact p of a within-seed permutation "
        "test (the level does not matter)."
    ),
    "soco_proposals": (
        "SoCo's proposals: selective-search boxes (its published source), the ground-truth "
        "object boxes, and random boxes of SoCo's filtered sizes (the paper: random boxes "
        "diverge at ImageNet scale). Box ABO: best box IoU per object."
    ),
    "soco_proposals_fmnist": (
        "SoCo's proposals on Fashion-MNIST (60k train images, 32 px, linear probe on frozen "
        "features), where SoCo learns (on the shapes it stays at random init): selective-search "
        "boxes, the object's own box (the tight box of its pixels on the black background: "
        "one box per image, the ground truth), and random boxes of SoCo's filtered sizes. Box "
        "ABO: best box IoU with the object's box."
    ),
    "methods": (
        "Every method at the same data, backbone, budget and probe, against random init. A "
        f"row **learns** when its gain over random init has a CI above 0 and d ≥ {LEARNS_D:.0f} "
        "(d: the gain over the seed std pooled over its row and random init's)."
    ),
    "methods_fmnist": (
        "The method table on real images: Fashion-MNIST (Zalando's product photos, from "
        "Debian's dataset-fashion-mnist; 60k train / 10k test, 10 classes, 32 px), "
        "pretrained on the train split without labels, probed by a linear classifier on frozen pooled features (all 60k / 10k). "
        "DetCon trains on FH masks, SoCo on selective-search boxes (no annotations here: box "
        "ABO against each image's object box, no mask quality for FH). A row **learns** when its gain over random init has a CI above 0 "
        f"and d ≥ {LEARNS_D:.0f}."
    ),
}


def fcount(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def ladder_line(f: dict) -> str:
    how = "exact" if f["exact"] else "Monte-Carlo"
    pts = ", ".join(f"{r} ({x:.2f})" for r, x in zip(f["rows"], f["xs"], strict=True))
    return (
        f"- **{f['label']}**: slope {f['slope']:+.4f} seg mIoU {f['unit']} "
        f"[{f['lo']:+.4f}, {f['hi']:+.4f}] ({LEVEL:.0%} CI, {f['n_seeds']} seeds), {how} "
        f"p = {f['p']:.4f} over {f['n_levels']} levels ({pts}): **{f['verdict']}**."
    )


def diff_line(f: dict) -> str:
    d = "" if f.get("d") is None else f"; d = {f['d']:+.1f}"
    return f"- **{f['label']}**: {fci(f)} ({LEVEL:.0%} CI, paired by seed){d}: **{f['verdict']}**."


def markdown(s: dict) -> str:
    study, rows = s["study"], s["rows"]
    shown = [k for k in SHOWN if k in s["metrics"]]
    lines = [f"# Ablation: {study}", "", INTRO[study], ""]
    header = ["row", "method", "masks", "regions / image", "ABO", "purity"]
    header += [METRIC_NAMES[k] for k in shown]
    header += [f"Δ vs random init [{LEVEL:.0%} CI]", "d", "learns", "s / run", "steps"]
    body = []
    for r in rows.values():
        vs = r.get("vs_random")
        body.append([r["row"], title(r["method"]), r.get("masks") or "-",
                     fcount(r.get("masks_per_image")), fnum(r.get("abo")),
                     fnum(r.get("purity")), *(fstat(r["metrics"].get(k)) for k in shown),
                     fci(vs) if vs else "-", "-" if not vs or vs["d"] is None else f"{vs['d']:.1f}",
                     ("yes" if vs["learns"] else "**no**") if vs else "-",
                     "-" if r["pretrain_seconds"] is None else f"{r['pretrain_seconds']:.0f}",
                     str(r.get("steps") or "-")])  # fmt: skip
    for k, ref in s["references"].items():
        body.append([ref.get("label") or REFERENCES[k], "-", "-", "-", "-", "-",
                     *(fstat(ref["metrics"].get(m)) for m in shown)]
                    + ["-"] * 4 + [str(ref.get("steps") or "-")])  # fmt: skip
    body.append(["chance", *["-"] * 5, *(fnum(s["chance"].get(k)) for k in shown)] + ["-"] * 5)
    lines += table(header, body)
    lines += [f"Mean ± sample std over seeds (n); seeds {s['seeds']}; seed std pooled over the "
              f"rows: {s['pooled_std']:.4f}. s / run: pretraining wall time of one run (one "
              "CPU thread).", "", "## Findings", ""]  # fmt: skip
    for f in s["findings"]:
        lines.append(ladder_line(f) if "slope" in f else diff_line(f))
    if not s["findings"]:
        lines.append("- (not enough rows or seeds for a finding)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plot
def plot(s: dict, out: Path) -> None:
    caption = "points: seeds; bars: mean ± 1 std over seeds; grey: random init ± 1 std"
    h = s["headline"]
    name = METRIC_NAMES[h]
    if s["study"] == "mask_count":
        specs = [("quality", "abo", "mask quality (ABO), region count fixed"),
                 ("count", "masks_per_image", "regions per image (log scale), purity 1")]  # fmt: skip
        plt, fig, axes = panels([k for k, _, _ in specs], "Mask quality or mask count?", caption)
        for ax, (ladder, x, xlabel) in zip(axes, specs, strict=True):
            for r in (s["rows"][n] for n in s.get("ladders", {}).get(ladder, []) if n in s["rows"]):
                v, m = vals(r, HEADLINE), r["metrics"][HEADLINE]
                ax.scatter([r[x]] * len(v), list(v.values()), s=12, alpha=0.5)
                ax.errorbar(r[x], m["mean"], yerr=m["std"] or 0.0, fmt="o", capsize=3,
                            label=r["row"])  # fmt: skip
            if ladder == "quality":  # rows on no ladder (e.g. grid2), at their ABO
                on = {n for names in s.get("ladders", {}).values() for n in names}
                for r in (r for n, r in s["rows"].items() if n not in on and r.get(x)):
                    m = r["metrics"][HEADLINE]
                    ax.errorbar(r[x], m["mean"], yerr=m["std"] or 0.0, fmt="s", mfc="none",
                                capsize=3, label=f"{r['row']} ({r['masks_per_image']:.0f} "
                                "regions, off the ladder)")  # fmt: skip
            draw_references(ax, s["references"], s["chance"], HEADLINE)
            ax.set(xlabel=xlabel, ylabel=name, title=f"{ladder} ladder")
            if x == "masks_per_image":
                ax.set_xscale("log", base=2)
        finish(plt, fig, axes, out)
        return
    plt, fig, axes = panels([h], f"{s['study']}: {name} per row", caption)
    ax = axes[0]
    for i, r in enumerate(s["rows"].values()):
        v, m = vals(r, h), r["metrics"][h]
        ax.bar(i, m["mean"], yerr=m["std"] or 0.0, capsize=3, alpha=0.7)
        ax.scatter([i] * len(v), list(v.values()), color="black", s=10, zorder=3)
    ax.set_xticks(range(len(s["rows"])), [row_title(r) for r in s["rows"].values()],
                  rotation=30, ha="right")  # fmt: skip
    draw_references(ax, s["references"], s["chance"], h)
    ax.set(ylabel=name)
    finish(plt, fig, axes, out)


# ---------------------------------------------------------------- output
def write(study: str, metrics_root: Path, out: Path, params: dict | None = None) -> dict:
    cells, refs = load_cells(metrics_root, study), load_cells(metrics_root, "references")
    s = summarise(study, cells, refs, params)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{study}.md").write_text(markdown(s))
    if s["rows"]:
        plot(s, out / f"{study}.png")
    write_json(out / f"{study}.json", {"summary": s, "cells": cells, "references": refs})
    return s


def log_to_parent(s: dict, cells_root: Path, out: Path, uri: str) -> list[str]:
    """The report onto the study's MLflow parent run: description, files, row metrics."""
    # lazy: mlflow (~2 s) loads only when --tracking-uri asks for it
    from detlab.platform.tracking import log_artifact, log_metrics, set_tags

    study = s["study"]
    parents = {c.get("mlflow_parent_run_id") for c in load_cells(cells_root, study)} - {None}
    metrics = row_metrics(s["rows"] | s["references"])
    for f in s["findings"]:
        metrics |= {f"{f['id']}.{k}": float(f[k]) for k in ("slope", "diff", "lo", "hi", "p")
                    if isinstance(f.get(k), float) and math.isfinite(f[k])}  # fmt: skip
    for run_id in sorted(parents):
        set_tags(uri, run_id, {"mlflow.note.content": (out / f"{study}.md").read_text()})
        for suffix in ("md", "png", "json"):
            if (out / f"{study}.{suffix}").exists():
                log_artifact(uri, run_id, out / f"{study}.{suffix}", "report")
        log_metrics(uri, run_id, metrics, step=0)
    return sorted(parents)


def main(argv: list[str] | None = None) -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=ABLATIONS)
    p.add_argument("--metrics", type=Path, required=True, help="the stage's metrics folder")
    p.add_argument("--out", type=Path, default=Path("reports/ablations"))
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--tracking-uri", default=None, help="also log the report to MLflow")
    a = p.parse_args(argv)
    params = yaml.safe_load(a.params.read_text()) if a.params.exists() else {}
    s = write(a.study, a.metrics, a.out, params)
    if a.tracking_uri:
        runs = log_to_parent(s, a.metrics, a.out, a.tracking_uri)
        print(f"report logged to MLflow parent run(s) {', '.join(runs) or '(none found)'}")
    print((a.out / f"{a.study}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

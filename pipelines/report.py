"""DVC stage `report`: aggregate the study cells into tables, plots and plain findings.

Reads ``metrics/studies/<study>/<cell>.json`` (written by ``detlab.pipelines.study``) and
writes ``reports/mask_quality.{md,png}``, ``reports/resolution.{md,png}``,
``reports/studies.json`` and the flat tables ``reports/plots/*.json`` that ``dvc plots``
renders. The findings are computed from whatever the runs produced; nothing is tuned here.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

METRIC_NAMES = {
    "seg_miou": "seg-probe mIoU",
    "linear_top1": "linear-probe top-1",
    "knn_top1": "kNN top-1",
    "det_ap_bb": "detection AP-bb",
}
GLOBAL = "global"  # the image-level baseline (one mask): BYOL


def load_cells(root: Path, study: str) -> list[dict]:
    folder = root / study
    return (
        [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
    )


def metric_keys(cells: list[dict]) -> list[str]:
    keys = {k for c in cells for k in c["metrics"]}
    return [k for k in METRIC_NAMES if k in keys]


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise_mask_quality(cells: list[dict]) -> dict:
    by_mask: dict[str, list[dict]] = defaultdict(list)
    for c in cells:
        by_mask[c["mask"]].append(c)
    keys = metric_keys(cells)
    rows = {}
    for mask, cs in sorted(by_mask.items(), key=lambda kv: kv[1][0].get("abo", 0)):
        rows[mask] = {"abo": cs[0].get("abo"), "seeds": len(cs)}
        for k in keys:
            m, s = mean_std([c["metrics"][k] for c in cs if k in c["metrics"]])
            rows[mask][k] = {"mean": m, "std": s}
    findings = {}
    detcon = [m for m in rows if m != GLOBAL and rows[m]["abo"] is not None]
    for k in keys:
        if len(detcon) >= 3:
            rho, p = spearmanr(
                [rows[m]["abo"] for m in detcon], [rows[m][k]["mean"] for m in detcon]
            )
            findings[f"spearman_abo_{k}"] = {"rho": float(rho), "p": float(p), "n": len(detcon)}
        if GLOBAL in rows and detcon:
            best = max(detcon, key=lambda m: rows[m][k]["mean"])
            findings[f"detcon_minus_global_{k}"] = {
                "best_mask": best,
                "delta_best": rows[best][k]["mean"] - rows[GLOBAL][k]["mean"],
                "delta_mean": float(np.mean([rows[m][k]["mean"] for m in detcon]))
                - rows[GLOBAL][k]["mean"],
            }
    return {"rows": rows, "metrics": keys, "findings": findings}


def summarise_resolution(cells: list[dict]) -> dict:
    keys = metric_keys(cells)
    table: dict[str, dict[int, dict]] = defaultdict(dict)
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["mask"], int(c["resolution"]))].append(c)
    for (mask, res), cs in sorted(groups.items()):
        table[mask][res] = {k: mean_std([c["metrics"][k] for c in cs])[0] for k in keys}
    findings = {}
    for k in keys:
        for mask, by_res in table.items():
            rs = sorted(by_res)
            if len(rs) >= 2:
                vals = [by_res[r][k] for r in rs]
                rho = spearmanr(rs, vals)[0] if len(rs) >= 3 else np.sign(vals[-1] - vals[0])
                findings[f"{mask}_{k}"] = {
                    "low_to_high": vals[-1] - vals[0],
                    "trend_rho": float(rho),
                    "best_resolution": rs[int(np.argmax(vals))],
                }
    return {
        "table": {m: dict(sorted(v.items())) for m, v in table.items()},
        "metrics": keys,
        "findings": findings,
    }


def verdict(ok: bool | None) -> str:
    return {True: "reproduced", False: "NOT reproduced", None: "not measured"}[ok]


def graded(effect: float, noise: float) -> str:
    """An effect in the paper's direction counts only when it exceeds the noise."""
    if abs(effect) <= noise:
        return "inconclusive (within the seed spread)"
    return verdict(effect > 0)


def correlation_verdict(
    rho: float, p: float, spread: float = float("inf"), noise: float = 0.0, alpha: float = 0.1
) -> str:
    """A rank correlation counts when significant AND the metric's range across mask
    sources exceeds the seed-to-seed noise (a perfect ranking of noise-sized gaps is not
    evidence)."""
    if p >= alpha or rho != rho:  # not significant, or undefined (constant metric)
        return f"inconclusive (not significant at p < {alpha})"
    if spread <= noise:
        return "inconclusive (range across mask sources within the seed spread)"
    return verdict(rho > 0)


def seed_noise(s: dict, key: str) -> float:
    """Mean seed standard deviation of ``key`` over the mask-quality rows."""
    return float(np.mean([row[key]["std"] for row in s["rows"].values()]))


def mask_quality_markdown(s: dict) -> str:
    keys = s["metrics"]
    lines = [
        "# Mask-quality study",
        "",
        "DetCon-B pretrained with each mask source (and the global-mask baseline, BYOL); "
        "mean ± std over seeds. abo = average best overlap of the masks with ground-truth "
        "objects.",
        "",
        "| masks | abo | seeds | " + " | ".join(METRIC_NAMES[k] for k in keys) + " |",
        "|---|---|---|" + "---|" * len(keys),
    ]
    for mask, row in s["rows"].items():
        abo = "-" if row["abo"] is None else f"{row['abo']:.3f}"
        vals = " | ".join(f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in keys)
        lines.append(f"| {mask} | {abo} | {row['seeds']} | {vals} |")
    lines += [
        "",
        "## Findings (paper: better masks -> better transfer; DetCon > global baseline)",
        "",
    ]
    for k in keys:
        sp = s["findings"].get(f"spearman_abo_{k}")
        if sp:
            means = [row[k]["mean"] for m, row in s["rows"].items() if m != GLOBAL]
            spread, noise = max(means) - min(means), seed_noise(s, k)
            lines.append(
                f"- Better masks -> better {METRIC_NAMES[k]}: Spearman rho(abo, metric) = "
                f"{sp['rho']:.2f} over {sp['n']} mask sources (p = {sp['p']:.2f}; range "
                f"{spread:.4f} vs mean seed std {noise:.4f}): "
                f"**{correlation_verdict(sp['rho'], sp['p'], spread, noise)}**."
            )
        dg = s["findings"].get(f"detcon_minus_global_{k}")
        if dg:
            noise = seed_noise(s, k)
            lines.append(
                f"- DetCon over the global baseline on {METRIC_NAMES[k]}: best mask source "
                f"({dg['best_mask']}) {dg['delta_best']:+.4f}, average over mask sources "
                f"{dg['delta_mean']:+.4f} (mean seed std {noise:.4f}): "
                f"**{graded(dg['delta_mean'], noise)}**."
            )
    return "\n".join(lines) + "\n"


def resolution_markdown(s: dict, noise: dict[str, float] | None = None) -> str:
    """``noise``: per-metric seed std (from the mask-quality study) to judge the gains."""
    keys = s["metrics"]
    lines = [
        "# Resolution study",
        "",
        "DetCon-B pretrained at each resolution per mask source (mean over seeds).",
        "",
    ]
    for k in keys:
        res = sorted({r for by_res in s["table"].values() for r in by_res})
        lines += [
            f"## {METRIC_NAMES[k]}",
            "",
            "| masks | " + " | ".join(f"{r} px" for r in res) + " |",
            "|---|" + "---|" * len(res),
        ]
        for mask, by_res in s["table"].items():
            lines.append(
                f"| {mask} | "
                + " | ".join(f"{by_res[r][k]:.4f}" if r in by_res else "-" for r in res)
                + " |"
            )
        lines.append("")
    lines += [
        "## Findings (paper: higher resolution helps every mask type; the highest helps "
        "ground-truth masks most)",
        "",
    ]
    for k in keys:
        gains = {
            m: s["findings"][f"{m}_{k}"]["low_to_high"]
            for m in s["table"]
            if f"{m}_{k}" in s["findings"]
        }
        if not gains:
            continue
        eps = (noise or {}).get(k, 0.0)
        helps = graded(min(gains.values()), eps) if eps else verdict(min(gains.values()) > 0)
        gt_most = "not measured"
        if "gt" in gains and len(gains) > 1:
            margin = gains["gt"] - max(g for m, g in gains.items() if m != "gt")
            gt_most = graded(min(margin, gains["gt"]), eps) if eps else verdict(margin > 0)
        desc = ", ".join(f"{m} {g:+.4f}" for m, g in gains.items())
        lines.append(
            f"- {METRIC_NAMES[k]}, lowest -> highest resolution: {desc} (seed std "
            f"{eps:.4f}). Higher resolution helps every mask source: **{helps}**; gt masks "
            f"gain most: **{gt_most}**."
        )
    return "\n".join(lines) + "\n"


def plot_mask_quality(s: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = s["metrics"]
    fig, axes = plt.subplots(
        1, max(1, len(keys)), figsize=(4.2 * max(1, len(keys)), 3.6), squeeze=False
    )
    for ax, k in zip(axes[0], keys, strict=False):
        for mask, row in s["rows"].items():
            x = row["abo"] if row["abo"] is not None else 0.0
            ax.errorbar(x, row[k]["mean"], yerr=row[k]["std"], fmt="o", capsize=3, label=mask)
            ax.annotate(mask, (x, row[k]["mean"]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("mask quality (abo)")
        ax.set_ylabel(METRIC_NAMES[k])
        ax.grid(alpha=0.3)
    fig.suptitle("Downstream quality vs pretraining mask quality")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_resolution(s: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = s["metrics"]
    fig, axes = plt.subplots(
        1, max(1, len(keys)), figsize=(4.2 * max(1, len(keys)), 3.6), squeeze=False
    )
    for ax, k in zip(axes[0], keys, strict=False):
        for mask, by_res in s["table"].items():
            rs = sorted(by_res)
            ax.plot(rs, [by_res[r][k] for r in rs], "o-", label=mask)
        ax.set_xlabel("pretraining resolution (px)")
        ax.set_ylabel(METRIC_NAMES[k])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Downstream quality vs pretraining resolution")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def write_report(metrics_root: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    result = {}
    mq_cells = load_cells(metrics_root, "mask_quality")
    if mq_cells:
        s = summarise_mask_quality(mq_cells)
        (out / "mask_quality.md").write_text(mask_quality_markdown(s))
        plot_mask_quality(s, out / "mask_quality.png")
        flat = [
            {"mask": c["mask"], "seed": c["seed"], "abo": c.get("abo"), **c["metrics"]}
            for c in mq_cells
        ]
        (out / "plots" / "mask_quality.json").write_text(json.dumps(flat, indent=1))
        result["mask_quality"] = {"summary": s, "cells": mq_cells}
    res_cells = load_cells(metrics_root, "resolution")
    if res_cells:
        s = summarise_resolution(res_cells)
        noise = {}
        if mq_cells:
            mq = summarise_mask_quality(mq_cells)
            noise = {k: seed_noise(mq, k) for k in mq["metrics"]}
        (out / "resolution.md").write_text(resolution_markdown(s, noise))
        plot_resolution(s, out / "resolution.png")
        flat = [
            {"mask": c["mask"], "seed": c["seed"], "resolution": c["resolution"], **c["metrics"]}
            for c in res_cells
        ]
        (out / "plots" / "resolution.json").write_text(json.dumps(flat, indent=1))
        result["resolution"] = {"summary": s, "cells": res_cells}
    (out / "studies.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--metrics", default="metrics/studies")
    p.add_argument("--out", default="reports")
    args = p.parse_args(argv)
    result = write_report(Path(args.metrics), Path(args.out))
    for study in result:
        print((Path(args.out) / f"{study}.md").read_text())
    if not result:
        print(f"no study cells under {args.metrics}: nothing to report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

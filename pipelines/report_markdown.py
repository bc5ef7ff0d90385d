"""The study report's markdown: tables (probes with their references and chance, per-class
IoU, learning health) and the findings, each with its interval and verdict."""

from __future__ import annotations

import math

from detlab.pipelines.report_terms import (
    ALPHA,
    FINDING_METRICS,
    FLAG_STD,
    HEADLINE,
    HEALTH_METRICS,
    LEVEL,
    METRIC_NAMES,
    PROBE_METRICS,
)
from detlab.pipelines.stats import EXACT_MAX_N

CAPTION = f"""\
Cells: mean ± sample std over seeds (n seeds). Δ and findings: mean difference with its \
{LEVEL:.0%} percentile-bootstrap CI over seeds (10000 resamples), paired by seed where both sides \
share seeds; [-∞, +∞] = fewer than 2 seeds on a side, no claim possible. With few seeds the \
bootstrap CI is optimistic (2 seeds: exactly the range of the two differences).
"""
MQ_INTRO = """\
# Mask-quality study

{method} pretrained with each mask source (global: the image-level {baseline} baseline), then
frozen and probed. abo = average best overlap of the masks with the ground-truth objects. Seeds: {seeds};
probe resolution (px): {probe}. The headline metric is seg mIoU (objects): object-class mIoU of
the frozen linear segmentation probe.
"""
FLAG_NOTE = """\
⚠ = probes within noise of random init: no gain clearly above the seed noise (the CI of
row − random init contains 0, or the gain is below {k:.0f} pooled seed std = {v:.4f}).
"""
HEALTH_NOTE = "rep. std = std of the normalised embeddings (near 0: collapse); mean ± std (n)."
MQ_FINDINGS = """\
## Findings

Paper: DetCon beats random init and the global baseline; better masks transfer better.
Seeds: {n}. Effect size d = difference / seed std pooled over the two rows compared (Cohen's
d; the acceptance targets apply to it); also shown in units of the std pooled over all
pretraining rows (the heading's). Better-masks ordering: significant only when exact
p < {alpha} and the bootstrap CI of rho excludes 0. Verdicts come from the intervals.
"""
RES_INTRO = """\
# Resolution study

{method} pretrained at each resolution per mask source; the mask-quality study's cells supply its
resolution (column "study"). References are probed at the same probe resolution as every cell.
"""
RES_FINDINGS = """\
## Findings

Paper: higher resolution helps every mask type, ground-truth masks most. Trend: Spearman over all
(resolution, per-seed value) points with its exact / permutation p.
"""


def fnum(x, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "+∞" if x > 0 else "-∞"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def fstat(d: dict | None) -> str:
    if not d or not d.get("n"):
        return "-"
    std = "" if d["std"] is None else f" ± {d['std']:.4f}"
    return f"{d['mean']:.4f}{std} ({d['n']})"


def fci(f: dict) -> str:
    return f"{fnum(f['diff'], True)} [{fnum(f['lo'], True)}, {fnum(f['hi'], True)}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(r) + " |" for r in rows), ""]


def pairing(f: dict) -> str:
    how = "paired by seed" if f["paired"] else "unpaired"
    return f"{how}, n = {f['n_a']} vs {f['n_b']} seeds"


def finding_line(f: dict) -> str:
    if f["id"] == "abo_order":
        ci = f"[{fnum(f['lo'], True)}, {fnum(f['hi'], True)}]"
        how = "exact" if f["n_points"] <= EXACT_MAX_N else "permutation"
        return (
            f"- **Better masks → better transfer**: Spearman rho(abo, mean) = {f['rho']:.2f} "
            f"over {f['n_sources']} DetCon mask sources ({', '.join(f['sources'])}); over "
            f"all {f['n_points']} (abo, seed) points rho = {f['rho_points']:.2f}, {how} "
            f"p = {f['p']:.3f}; rho {LEVEL:.0%} bootstrap CI {ci}: **{f['verdict']}**."
        )
    size = ""
    if f.get("d") is not None:
        size = f"; d = {f['d']:+.1f} (std of these two rows {f['pair_std']:.4f}"
        if f.get("ratio") is not None:
            size += f"; {f['ratio']:+.1f} × the std pooled over all pretraining rows"
        size += ")"
    if f["target"] is not None:
        met = {True: "met", False: "NOT met", None: "not measurable"}[f["meets_target"]]
        size += f", target d ≥ {f['target']:.0f}: {met}"
    return f"- **{f['label']}**: {fci(f)} ({pairing(f)}){size}: **{f['verdict']}**."


def probe_table(s: dict) -> list[str]:
    cols = [k for k in PROBE_METRICS if k in s["metrics"]]
    delta = any("vs_random" in r for r in s["rows"].values())
    header = ["row", "method", "abo", *(METRIC_NAMES[k] for k in cols)]
    header += [f"Δ {METRIC_NAMES[HEADLINE]} vs random init [{LEVEL:.0%} CI]"] if delta else []
    body = []
    for r in s["rows"].values():
        vs = r.get("vs_random")
        label = r["label"] + (" ⚠" if vs and vs["flag"] else "")
        cells = [label, r["method"] or "-", fnum(r["abo"]), *(fstat(r["metrics"][k]) for k in cols)]
        body.append(cells + ([fci(vs) if vs else "-"] if delta else []))
    chance = ["chance", "-", "-", *(fnum(s["chance"].get(k)) for k in cols)]
    lines = ["## Downstream probes", "", *table(header, [*body, chance + ["-"] * delta]), CAPTION]
    flag = FLAG_NOTE.format(k=FLAG_STD, v=FLAG_STD * s["pooled_std"].get(HEADLINE, 0.0))
    return lines + ([flag] if delta else [])


def mask_quality_markdown(s: dict) -> str:
    probe = ", ".join(map(str, s["probe_resolutions"])) or "not recorded"
    seeds = ", ".join(map(str, s["seeds"])) or "none"
    lines = [MQ_INTRO.format(seeds=seeds, probe=probe, method=s["method"], baseline=s["baseline"])]
    if len(s["probe_resolutions"]) > 1:
        lines += ["⚠ the records were probed at different resolutions: not comparable.", ""]
    if not s["rows"]:
        return "\n".join([*lines, "No records yet: nothing to report.", "", "## Findings", ""])
    lines += probe_table(s)
    if cls := s["classes"]:
        per = [
            [r["label"], *(fnum(r["metrics"][k]["mean"]) for k in cls)] for r in s["rows"].values()
        ]
        header = ["row", *(k.removeprefix("seg_iou_") for k in cls)]
        lines += ["## Per-class IoU (seg probe, mean over seeds)", "", *table(header, per)]
    if health := [k for k in HEALTH_METRICS if k in s["metrics"]]:
        pre = [r for r in s["rows"].values() if r["kind"] == "pretrain"]
        body = [[r["label"], *(fstat(r["metrics"][k]) for k in health)] for r in pre]
        header = ["row", *(METRIC_NAMES[k] for k in health)]
        lines += ["## Learning health (pretraining)", "", HEALTH_NOTE, "", *table(header, body)]
    lines.append(MQ_FINDINGS.format(n=len(s["seeds"]), alpha=ALPHA))
    for k in FINDING_METRICS:
        if fs := [f for f in s["findings"] if f["metric"] == k]:
            lines += [f"### {METRIC_NAMES[k]} (pooled seed std {s['pooled_std'][k]:.4f})", ""]
            lines += [*(finding_line(f) for f in fs), ""]
    return "\n".join(lines) + "\n"


def resolution_finding_line(f: dict) -> str:
    if f["id"] != "gt_gains_most":
        trend = f"trend rho = {fnum(f['rho'])} over {f['n_points']} points, p = {f['p']:.3f}"
        return f"- **{f['label']}**: {fci(f)} ({pairing(f)}): **{f['verdict']}**; {trend}."
    parts = "; ".join(
        f"vs {m} ({c['lo_px']}→{c['hi_px']} px): {fci(c)} ({pairing(c)}), {c['verdict']}"
        for m, c in f["comparisons"].items()
    )
    return (
        f"- **gt gains most** (gt's gain − the other mask's): {parts or '-'}: **{f['verdict']}**."
    )


def resolution_markdown(s: dict) -> str:
    lines = [RES_INTRO.format(method=s["method"]), CAPTION]
    if not s["table"]:
        return "\n".join([*lines, "No resolution-study cells yet: nothing to compare.", ""])
    keys = s["metrics"]
    refs = [
        [r["label"], "reference", *(fstat(r["metrics"][k]) for k in keys)]
        for r in s["references"].values()
    ]
    refs.append(["chance", "-", *(fnum(s["chance"].get(k)) for k in keys)])
    header = ["resolution", "study", *(METRIC_NAMES[k] for k in keys)]
    for mask, by_res in s["table"].items():
        body = [
            [r["label"], r["kind"], *(fstat(r["metrics"][k]) for k in keys)]
            for r in by_res.values()
        ]
        lines += [f"## {mask}", "", *table(header, body + refs)]
    lines.append(RES_FINDINGS)
    for k in keys:
        lines += [f"### {METRIC_NAMES[k]}", ""]
        lines += [resolution_finding_line(f) for f in s["findings"] if f["metric"] == k] + [""]
    return "\n".join(lines) + "\n"

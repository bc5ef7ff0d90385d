"""The study report on synthetic records: reference rows, the ⚠ flag, findings with CIs and
verdicts, the exact p of a 4-source ordering, the merged resolution table, partial inputs."""

from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest

from detlab.pipelines.report import main, write_report

CLASSES = ["circle", "square"]
CHANCE = {"linear_top1": 1 / 6, "linear_top5": 5 / 6}
SEEDS = (0, 1, 2)
# mask -> (abo, headline mean); 4 DetCon sources perfectly ordered by abo, plus the baseline
MASKS = {
    "global": (None, 0.20),
    "grid": (0.40, 0.30),
    "fh": (0.70, 0.35),
    "slic": (0.80, 0.40),
    "gt": (1.00, 0.50),
}
REFS = {"random": 0.10, "supervised": 0.70}
RESOLUTION = {"fh": {32: 0.25, 48: 0.30}, "gt": {32: 0.30, 48: 0.40}}  # 64 px: from MASKS


def noise(seed: int, cell: str) -> float:
    """A per-seed offset shared by every row (pairing cancels it) plus per-cell jitter."""
    return 0.004 * (seed - 1) + 0.002 * random.Random(cell).uniform(-1, 1)


def expected(mean: float, kind: str, seeds=SEEDS) -> str:
    """The md cell 'mean ± std (n)' of a row written by ``write_records``."""
    v = [mean + noise(s, f"{kind}-s{s}") for s in seeds]
    return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f} ({len(v)})"


def record(study: str, cell: str, seed: int, headline: float, res: int = 64, **extra) -> dict:
    metrics = {
        "seg_miou_objects": headline,
        "seg_miou": headline * 0.8 + 0.1,
        "seg_iou_background": 0.8,
        "seg_iou_circle": headline + 0.01,
        "seg_iou_square": headline - 0.01,
        "linear_top1": headline / 2 + 0.1,
        "linear_top5": 0.9,
    }
    if study != "references":
        metrics |= {"final_loss": 1.0 - headline, "rep_std": 0.1, "knn_top1": headline / 2}
    return {
        "study": study,
        "cell": cell,
        "seed": seed,
        "resolution": res,
        "probe_resolution": 64,
        "metrics": metrics,
        "chance": CHANCE,
        "classes": CLASSES,
        **extra,
    }


def write_records(root, masks=MASKS, refs=REFS, resolution=RESOLUTION, seeds=SEEDS):
    """Records as ``detlab.pipelines.study`` writes them: <root>/<study>/<cell>.json."""
    recs = []
    for mask, (abo, m) in masks.items():
        method = "simclr" if mask == "global" else "detcon_s"
        for s in seeds:
            recs.append(
                record(
                    "mask_quality",
                    f"{mask}-s{s}",
                    s,
                    m + noise(s, f"{mask}-s{s}"),
                    mask=mask,
                    abo=abo,
                    method=method,
                )
            )
    for kind, m in refs.items():
        recs += [
            record(
                "references",
                f"{kind}-s{s}",
                s,
                m + noise(s, f"{kind}-s{s}"),
                kind=kind,
                mask=None,
                overrides=[
                    "train.steps=600",
                    *(["train.steps=900"] if kind == "supervised" else []),
                ],
            )
            for s in seeds
        ]
    for mask, by_res in resolution.items():
        for r, m in by_res.items():
            recs += [
                record(
                    "resolution",
                    f"{mask}-r{r}-s{s}",
                    s,
                    m + noise(s, f"{mask}-r{r}-s{s}"),
                    res=r,
                    mask=mask,
                    abo=masks.get(mask, (None,))[0],
                    method="detcon_b",
                )
                for s in seeds
            ]
    for rec in recs:
        (root / rec["study"]).mkdir(parents=True, exist_ok=True)
        (root / rec["study"] / f"{rec['cell']}.json").write_text(json.dumps(rec))
    return root


def report(tmp_path, **kw):
    out = tmp_path / "reports"
    result = write_report(write_records(tmp_path / "metrics", **kw), out)
    studies = json.loads((out / "studies.json").read_text())
    return result, studies, out


def md_row(md: str, label: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {label} "))


def finding(summary: dict, fid: str, metric: str = "seg_miou_objects") -> dict:
    return next(f for f in summary["findings"] if f["id"] == fid and f["metric"] == metric)


def test_reference_rows_and_chance_in_table_and_json(tmp_path):
    _, studies, out = report(tmp_path)
    md = (out / "mask_quality.md").read_text()
    rnd = md_row(md, "random init (no pretraining)")
    assert expected(REFS["random"], "random") in rnd  # mean ± sample std (n seeds)
    assert md_row(md, "supervised (labels, 900 steps)").count("± ") >= 5
    chance = md_row(md, "chance").split(" | ")
    assert "0.1667" in chance and "-" in chance  # linear top-1 defined, seg metrics not
    rows = studies["mask_quality"]["summary"]["rows"]
    assert rows["random"]["metrics"]["seg_miou_objects"]["mean"] == pytest.approx(0.10, abs=3e-3)
    assert set(studies["references"]["rows"]) == {"random", "supervised"}
    assert studies["mask_quality"]["summary"]["chance"]["linear_top1"] == pytest.approx(1 / 6)
    order = [line.split(" | ")[0][2:] for line in md.splitlines() if line.startswith("| ")]
    # rows and prose name the methods the records trained
    assert "DetCon-S pretrained with each mask source (global: the image-level SimCLR" in md
    assert "**DetCon (gt masks) − global (SimCLR)**" in md
    assert order[1:8] == [
        "global (SimCLR)",
        "grid",
        "fh",
        "slic",
        "gt",
        "random init (no pretraining)",
        "supervised (labels, 900 steps)",
    ]
    assert "Per-class IoU" in md and "circle" in md and "Learning health" in md


def test_flag_marks_rows_within_noise_of_random_init(tmp_path):
    masks = {**MASKS, "grid": (0.40, REFS["random"] + 0.0005)}  # random init plus tiny noise
    _, studies, out = report(tmp_path, masks=masks)
    md = (out / "mask_quality.md").read_text()
    assert md_row(md, "grid ⚠")
    assert "⚠" not in md_row(md, "gt") and "⚠" not in md_row(md, "slic")
    assert "no gain clearly above the seed noise" in md
    rows = studies["mask_quality"]["summary"]["rows"]
    assert rows["grid"]["vs_random"]["flag"] and not rows["gt"]["vs_random"]["flag"]
    assert rows["gt"]["vs_random"]["lo"] > 0.3


def test_gt_minus_random_finding_sign_ci_and_verdict(tmp_path):
    _, studies, out = report(tmp_path)
    f = finding(studies["mask_quality"]["summary"], "gt_minus_random")
    assert f["diff"] == pytest.approx(0.40, abs=5e-3) and f["paired"]
    assert 0 < f["lo"] <= f["diff"] <= f["hi"] and f["verdict"] == "reproduced"
    assert f["meets_target"] and f["target"] == 3.0
    # d: the difference over the seed std pooled over the two rows compared (Cohen's d)
    rows = studies["mask_quality"]["summary"]["rows"]
    a, b = (
        np.array(list(rows[k]["metrics"][f["metric"]]["values"].values())) for k in ("gt", "random")
    )
    pair = np.sqrt(
        ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2)
    )
    assert f["d"] == pytest.approx((a.mean() - b.mean()) / pair)
    md = (out / "mask_quality.md").read_text()
    assert f"DetCon (gt masks) − random init**: {f['diff']:+.4f} [{f['lo']:+.4f}, " in md
    # the other way round: random init better than gt -> reversed, not reproduced
    _, studies, _ = report(tmp_path / "rev", refs={"random": 0.9, "supervised": 0.95})
    f = finding(studies["mask_quality"]["summary"], "gt_minus_random")
    assert f["diff"] < 0 and f["hi"] < 0 and f["verdict"] == "reversed"


def test_one_seed_gives_no_claim(tmp_path):
    _, studies, out = report(tmp_path, seeds=(0,))
    f = finding(studies["mask_quality"]["summary"], "gt_minus_random")
    assert f["lo"] is None and f["hi"] is None  # -inf/+inf, written as null in JSON
    assert f["verdict"].startswith("inconclusive")
    assert "[-∞, +∞]" in (out / "mask_quality.md").read_text()


def test_four_perfectly_ordered_sources_with_one_seed_are_inconclusive(tmp_path):
    _, studies, out = report(tmp_path, seeds=[0])
    f = finding(studies["mask_quality"]["summary"], "abo_order")
    assert f["rho"] == pytest.approx(1.0) and f["p"] == pytest.approx(1 / 12)  # exact, n = 4
    assert f["sources"] == ["grid", "fh", "slic", "gt"]  # the global baseline is excluded
    assert f["verdict"].startswith("inconclusive")
    line = next(x for x in (out / "mask_quality.md").read_text().splitlines() if "rho(abo" in x)
    assert "exact p = 0.083" in line and "**inconclusive" in line


def test_ordered_sources_over_seeds_are_tested_on_every_point(tmp_path):
    _, studies, _ = report(tmp_path)
    f = finding(studies["mask_quality"]["summary"], "abo_order")
    n_seeds = len(SEEDS)
    assert f["n_points"] == 4 * n_seeds and f["rho_points"] > 0.8
    assert f["p"] < 0.01 and f["lo"] > 0 and f["verdict"] == "reproduced"


def test_detcon_average_minus_global(tmp_path):
    _, studies, _ = report(tmp_path)
    f = finding(studies["mask_quality"]["summary"], "detcon_avg_minus_global")
    assert f["diff"] == pytest.approx((0.30 + 0.35 + 0.40 + 0.50) / 4 - 0.20, abs=5e-3)
    assert f["verdict"] == "reproduced"
    g = finding(studies["mask_quality"]["summary"], "gt_minus_global", "linear_top1")
    assert g["diff"] == pytest.approx(0.15, abs=5e-3)


def test_resolution_table_merges_the_mask_quality_column(tmp_path):
    _, studies, out = report(tmp_path)
    s = studies["resolution"]["summary"]
    assert set(s["table"]) == {"fh", "gt"} and list(s["table"]["gt"]) == ["32", "48", "64"]
    assert s["table"]["gt"]["64"]["kind"] == "mask_quality"
    md = (out / "resolution.md").read_text()
    assert f"| 64 px | mask_quality | {expected(MASKS['gt'][1], 'gt')} |" in md
    assert md.count("random init (no pretraining)") == 2  # a reference row per mask table
    gt = finding(s, "gt_high_minus_low")
    assert gt["diff"] == pytest.approx(0.20, abs=5e-3) and gt["verdict"] == "reproduced"
    assert gt["rho"] > 0.8 and gt["n_points"] == 9 and gt["p"] < 0.01
    most = finding(s, "gt_gains_most")
    assert most["comparisons"]["fh"]["diff"] == pytest.approx(0.20 - 0.10, abs=5e-3)
    assert most["verdict"] == "reproduced"
    rows = json.loads((out / "plots" / "resolution.json").read_text())
    assert {r["resolution"] for r in rows if r["row"] == "gt"} == {32, 48, 64}
    assert {"random", "supervised"} <= {r["row"] for r in rows}


def test_partial_inputs_still_write_every_file(tmp_path):
    names = [
        "mask_quality.md",
        "mask_quality.png",
        "resolution.md",
        "resolution.png",
        "studies.json",
        "plots/mask_quality.json",
        "plots/resolution.json",
    ]
    _, _, out = report(tmp_path / "refs", masks={}, resolution={})
    assert all((out / n).exists() for n in names)
    assert "random init (no pretraining)" in (out / "mask_quality.md").read_text()
    assert "No resolution-study cells" in (out / "resolution.md").read_text()
    _, studies, out = report(tmp_path / "mq", refs={}, resolution={})
    assert all((out / n).exists() for n in names)
    assert "vs_random" not in studies["mask_quality"]["summary"]["rows"]["gt"]
    _, _, out = report(tmp_path / "res", masks={}, refs={})
    assert "| 48 px | resolution |" in (out / "resolution.md").read_text()
    assert main(["--metrics", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 0
    assert "No records yet" in (tmp_path / "r" / "mask_quality.md").read_text()


def test_plots_are_pngs_and_flat_rows_name_their_row(tmp_path):
    _, _, out = report(tmp_path)
    for name in ("mask_quality.png", "resolution.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rows = json.loads((out / "plots" / "mask_quality.json").read_text())
    assert {r["row"] for r in rows} == {*MASKS, "random", "supervised"}
    assert all({"seg_miou_objects", "abo", "seed"} <= set(r) for r in rows)


def test_old_records_without_headline_or_chance(tmp_path):
    """Records from before the reference runs: no headline metric, no chance, no classes."""
    root = write_records(tmp_path / "m", refs={}, resolution={})
    for p in (root / "mask_quality").glob("*.json"):
        rec = json.loads(p.read_text())
        rec["metrics"].pop("seg_miou_objects")
        for key in ("chance", "classes", "probe_resolution"):
            rec.pop(key)
        p.write_text(json.dumps(rec))
    write_report(root, tmp_path / "r")
    md = (tmp_path / "r" / "mask_quality.md").read_text()
    header = md_row(md, "row")
    assert "linear top-1" in header and "seg mIoU (objects)" not in header and "Δ" not in header
    assert "### linear top-1" in md and "seg_iou_circle" not in md and "circle" in md

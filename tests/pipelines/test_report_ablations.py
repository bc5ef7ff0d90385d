"""The ablations' reports on synthetic records: each ladder's slope against a hand
computation, "learns" only with a CI above 0 and d >= 3, the pairwise findings, the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detlab.pipelines.report_ablations import LEARNS_D, main, write

SEEDS = (0, 1, 2)
OFFSET = {0: -0.004, 1: 0.0, 2: 0.006}  # a per-seed offset shared by every row


def rec(study, row, seed, value, **extra) -> dict:
    metrics = {"seg_miou_objects": value, "seg_iou_background": 0.7, "linear_top1": 0.2}
    return {"study": study, "cell": f"{row}-s{seed}", "mask": row, "seed": seed,
            "resolution": 64, "metrics": metrics, "chance": {"linear_top1": 1 / 6},
            "pretrain_seconds": 100.0 + seed, "overrides": ["train.steps=600"], **extra}  # fmt: skip


def write_all(root, study: str, rows: dict[str, tuple[float, dict, dict]], random=0.05):
    """rows: name -> (mean, per-seed jitter, extra record fields)."""
    for name, (mean, jitter, extra) in rows.items():
        for s in SEEDS:
            r = rec(study, name, s, mean + OFFSET[s] + jitter.get(s, 0.0), **extra)
            (root / study).mkdir(parents=True, exist_ok=True)
            (root / study / f"{name}-s{s}.json").write_text(json.dumps(r))
    for s in SEEDS:
        r = rec("references", "random", s, random + OFFSET[s] + 0.001 * s, kind="random")
        (root / "references").mkdir(parents=True, exist_ok=True)
        (root / "references" / f"random-s{s}.json").write_text(json.dumps(r))


def test_mask_count_slopes_match_a_hand_computation(tmp_path):
    quality = {"gt": 1.0, "w4": 0.85, "w12": 0.63, "w32": 0.35}
    count = {"gt": 3.5, "s2": 7.0, "s4": 14.0}
    rows = {n: (0.05 + 0.04 * a, {1: 0.002 * i}, dict(abo=a, masks_per_image=3.5, purity=0.9))
            for i, (n, a) in enumerate(quality.items())}  # fmt: skip
    rows |= {n: (0.09 - 0.01 * np.log2(c / 3.5), {}, dict(abo=0.5, masks_per_image=c, purity=1.0))
             for n, c in count.items() if n != "gt"}  # fmt: skip
    write_all(tmp_path / "m", "mask_count", rows)
    params = {"studies": {"mask_count": {"ladders": {"quality": list(quality),
                                                     "count": list(count)}}}}  # fmt: skip
    s = write("mask_count", tmp_path / "m", tmp_path / "out", params)
    q, c = (
        next(f for f in s["findings"] if f["id"] == k) for k in ("quality_slope", "count_slope")
    )
    # by hand: per seed, least squares of value on ABO (x 0.1 for "per +0.1 ABO")
    xs = np.array(list(quality.values()))
    slopes = []
    for seed in SEEDS:
        ys = np.array([0.05 + 0.04 * a + OFFSET[seed] + (0.002 * i if seed == 1 else 0)
                       for i, a in enumerate(quality.values())])  # fmt: skip
        slopes.append(np.polyfit(xs, ys, 1)[0] * 0.1)
    assert q["slope"] == pytest.approx(np.mean(slopes)) and q["verdict"] == "positive"
    assert q["lo"] < q["slope"] < q["hi"] and q["p"] == pytest.approx(3 / 24**3, abs=1e-3)
    assert c["slope"] == pytest.approx(-0.01) and c["verdict"] == "negative"  # per doubling
    md = (tmp_path / "out" / "mask_count.md").read_text()
    assert "mask quality at a fixed region count" in md and "random init" in md
    assert (tmp_path / "out" / "mask_count.png").read_bytes()[:4] == b"\x89PNG"


def test_a_method_learns_only_with_a_ci_above_zero_and_d_at_least_3(tmp_path):
    rows = {
        "strong": (0.09, {0: 0.001, 2: -0.001}, dict(method="simclr", masks="global")),
        "noisy": (0.07, {0: -0.02, 1: 0.02}, dict(method="byol", masks="global")),
        "none": (0.05, {}, dict(method="vicreg", masks="global")),
    }
    write_all(tmp_path / "m", "methods", rows)
    for seed in SEEDS:  # a supervised reference with a budget of its own (supervised_steps)
        r = rec("references", "supervised", seed, 0.2, kind="supervised",
                overrides=["train.steps=600", "train.steps=4800"])  # fmt: skip
        (tmp_path / "m/references" / f"supervised-s{seed}.json").write_text(json.dumps(r))
    s = write("methods", tmp_path / "m", tmp_path / "out", {})
    vs = {k: r["vs_random"] for k, r in s["rows"].items()}
    assert vs["strong"]["learns"] and vs["strong"]["d"] >= LEARNS_D
    assert not vs["noisy"]["learns"] and vs["noisy"]["d"] < LEARNS_D  # large gain, large spread
    assert not vs["none"]["learns"]
    assert s["rows"]["strong"]["pretrain_seconds"] == pytest.approx(101.0)
    assert s["rows"]["strong"]["steps"] == 600
    md = (tmp_path / "out" / "methods.md").read_text()
    assert "| none | VICReg |" in md and "**no**" in md and "random init (no pretraining)" in md
    supervised = next(line for line in md.splitlines() if line.startswith("| supervised"))
    assert supervised.startswith("| supervised (labels, 4800 steps) |")
    assert supervised.endswith("| 4800 |")  # the steps column


def test_soco_proposal_findings_and_the_cli(tmp_path, capsys):
    rows = {n: (m, {}, dict(method="soco", masks=n, abo=a))
            for n, m, a in (("ss", 0.08, 0.79), ("gt_boxes", 0.09, 1.0),
                            ("random_boxes", 0.06, 0.35))}  # fmt: skip
    write_all(tmp_path / "m", "soco_proposals", rows)
    assert main(["soco_proposals", "--metrics", str(tmp_path / "m"), "--out",
                 str(tmp_path / "out"), "--params", str(tmp_path / "none.yaml")]) == 0  # fmt: skip
    s = json.loads((tmp_path / "out" / "soco_proposals.json").read_text())["summary"]
    f = {x["id"]: x for x in s["findings"]}
    assert f["gt_boxes_minus_random_boxes"]["diff"] == pytest.approx(0.03)
    assert f["gt_boxes_minus_random_boxes"]["verdict"] == "reproduced"
    assert "SoCo (gt_boxes) − SoCo (random_boxes)" in capsys.readouterr().out

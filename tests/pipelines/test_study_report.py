import json

import pytest

from detlab.pipelines.report import summarise_mask_quality, summarise_resolution, write_report


def cell(study, mask, seed, abo, miou, res=64):
    return {
        "study": study,
        "cell": f"{mask}-r{res}-s{seed}",
        "mask": mask,
        "seed": seed,
        "resolution": res,
        "abo": abo,
        "metrics": {"seg_miou": miou, "linear_top1": miou / 2},
    }


def write_cells(root, cells):
    for c in cells:
        d = root / c["study"]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{c['cell']}.json").write_text(json.dumps(c))


def test_mask_quality_summary_and_findings():
    cells = [
        cell("mask_quality", m, s, abo, miou + 0.01 * s)
        for m, abo, miou in [
            ("grid", 0.3, 0.20),
            ("slic", 0.5, 0.25),
            ("fh", 0.6, 0.30),
            ("gt", 1.0, 0.40),
            ("global", 0.1, 0.15),
        ]
        for s in (0, 1)
    ]
    s = summarise_mask_quality(cells)
    assert s["rows"]["fh"]["seg_miou"]["mean"] == pytest.approx(0.305)
    assert s["rows"]["fh"]["seg_miou"]["std"] == pytest.approx(0.00707, abs=1e-4)
    assert s["findings"]["spearman_abo_seg_miou"]["rho"] == pytest.approx(1.0)
    dg = s["findings"]["detcon_minus_global_seg_miou"]
    assert dg["best_mask"] == "gt" and dg["delta_best"] == pytest.approx(0.25)
    # the global baseline is excluded from the correlation (it is another method)
    assert s["findings"]["spearman_abo_seg_miou"]["n"] == 4


def test_report_says_not_reproduced_when_data_disagrees(tmp_path):
    cells = [
        cell("mask_quality", m, 0, abo, miou)
        for m, abo, miou in [
            ("grid", 0.3, 0.40),
            ("fh", 0.6, 0.30),
            ("gt", 1.0, 0.20),
            ("global", 0.1, 0.50),
        ]
    ]
    cells[0]["metrics"]["seg_miou"] = 0.4
    write_cells(tmp_path / "m", cells)
    write_report(tmp_path / "m", tmp_path / "r")
    md = (tmp_path / "r" / "mask_quality.md").read_text()
    assert "NOT reproduced" in md and "rho(abo, metric) = -1.00" in md
    assert (tmp_path / "r" / "mask_quality.png").stat().st_size > 1000
    data = json.loads((tmp_path / "r" / "studies.json").read_text())
    assert len(data["mask_quality"]["cells"]) == 4


def test_resolution_trend(tmp_path):
    cells = [
        cell("resolution", m, 0, None, base + 0.01 * i * gain, res=r)
        for m, base, gain in [("fh", 0.2, 1.0), ("gt", 0.3, 2.0)]
        for i, r in enumerate((32, 48, 64))
    ]
    s = summarise_resolution(cells)
    assert s["findings"]["gt_seg_miou"]["low_to_high"] == pytest.approx(0.04)
    assert s["findings"]["fh_seg_miou"]["best_resolution"] == 64
    write_cells(tmp_path / "m", cells)
    write_report(tmp_path / "m", tmp_path / "r")
    md = (tmp_path / "r" / "resolution.md").read_text()
    assert "helps every mask source: **reproduced**" in md
    assert "gt masks gain most: **reproduced**" in md
    assert (
        json.loads((tmp_path / "r" / "plots" / "resolution.json").read_text())[0]["resolution"]
        == 32
    )


def test_verdicts_need_effects_beyond_the_noise():
    from detlab.pipelines.report import correlation_verdict, graded

    assert graded(0.05, 0.01) == "reproduced"
    assert graded(-0.05, 0.01) == "NOT reproduced"
    assert graded(0.005, 0.01).startswith("inconclusive")
    assert correlation_verdict(0.9, 0.01) == "reproduced"
    assert correlation_verdict(-0.9, 0.01) == "NOT reproduced"
    assert correlation_verdict(0.9, 0.3).startswith("inconclusive")

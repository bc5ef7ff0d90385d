"""`dvc repro` end to end in a temporary copy of the repository with tiny params: the
dataset, every mask set, mask quality, a reduced mask-quality and resolution study, the
report; a second repro is a no-op; changing one cell's params retrains only that cell."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", "pipelines", "methods", "platform", "plots",
        "ablations"]  # fmt: skip

pytestmark = [pytest.mark.dvc, pytest.mark.slow]


def repro(cwd: Path, *targets: str) -> tuple[set[str], str]:
    out = subprocess.run(["dvc", "repro", *targets], cwd=cwd, capture_output=True, text=True,
                         timeout=1200)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return set(re.findall(r"Running stage '([^']+)'", out.stdout)), out.stdout


def scratch_repo(tmp_path: Path, tiny_params) -> tuple[Path, dict]:
    """A DVC project laid out like the repository, with the tiny params (returned)."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, work / name)
    params = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=work, check=True)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=work, check=True)
    return work, params


def test_dvc_repro_end_to_end(tmp_path, tiny_params):
    work, params = scratch_repo(tmp_path, tiny_params)

    ran, _ = repro(work)
    assert {"prepare", "masks@fh", "mask_quality@gt", "studies", "report"} <= ran
    assert not any(stage.startswith("ablations/") for stage in ran)  # named stages only
    quality = json.loads((work / "metrics/mask_quality/gt.json").read_text())
    assert quality["abo"] == 1.0
    cell = json.loads((work / "metrics/studies/mask_quality/grid-s0.json").read_text())
    assert {"linear_top1", "seg_miou_objects", "final_loss", "rep_std"} <= set(cell["metrics"])
    assert cell["abo"] < 1.0 and cell["probe_resolution"] == 32
    for kind in ("random", "supervised"):
        ref = json.loads((work / f"metrics/studies/references/{kind}-s0.json").read_text())
        assert ref["kind"] == kind and "seg_miou_objects" in ref["metrics"]
    for name in ("mask_quality.md", "mask_quality.png", "resolution.md", "resolution.png",
                 "studies.json"):  # fmt: skip
        assert (work / "reports" / name).stat().st_size > 100, name
    report = (work / "reports/mask_quality.md").read_text()
    assert "random init" in report and "supervised" in report  # the reference rows
    findings = report.split("## Findings")[1]
    assert re.search(r"\*\*(reproduced|reversed|inconclusive[^*]*)\*\*", findings)

    # MLflow: each study's parent run ended with its cells and carries the report
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    for study in ("mask_quality", "resolution"):
        exp = client.get_experiment_by_name(f"study-{study}")
        runs = client.search_runs([exp.experiment_id])
        assert {r.info.status for r in runs} == {"FINISHED"}  # no RUNNING run left
        (parent,) = [r for r in runs if r.data.tags.get("detlab.role") == "parent"]
        report = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
        assert f"report/{study}.md" in report and "report/studies.json" in report
        assert "random.seg_miou_objects.mean" in parent.data.metrics
        assert parent.data.tags["mlflow.note.content"].startswith("#")
        assert "seg_miou_objects" in exp.tags["mlflow.note.content"] or study == "resolution"
    mq_parent = client.search_runs(
        [client.get_experiment_by_name("study-mask_quality").experiment_id],
        "tags.`detlab.role` = 'parent'",
    )[0]
    assert mq_parent.data.metrics["gt.seg_miou_objects.mean"] == pytest.approx(
        statistics.mean(
            json.loads((work / f"metrics/studies/mask_quality/gt-s{s}.json").read_text())[
                "metrics"
            ]["seg_miou_objects"]
            for s in (0, 1)
        )
    )

    # `dvc plots show`: per mask source, mean and spread against ABO; references as rules
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=work, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    plots = json.loads(shown.stdout)["data"]
    data = plots["reports/plots/mask_quality_means.json"][0]["content"]["data"]["values"]
    series = {row["series"] for row in data}
    assert {"grid", "gt", "global (SimCLR)", "random init (no pretraining)"} <= series
    assert all(row["lo"] <= row["mean"] <= row["hi"] for row in data)

    ran, out = repro(work)
    assert ran == set() and "up to date" in out  # nothing reruns

    def keys() -> dict[str, str]:
        found = sorted((work / "metrics/studies").glob("*/*.json"))
        return {f"{f.parent.name}/{f.stem}": json.loads(f.read_text())["key"] for f in found}

    before = keys()
    assert len(before) == 3 * 2 + 1 + 2  # mask quality 3 x 2 seeds, resolution, references
    params["studies"]["mask_quality"]["cells"]["gt"] = ["train.steps=4"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran, out = repro(work)
    assert ran == {"studies", "report"}
    assert "2 of 9 cells to run (7 up to date)" in out
    after = keys()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"mask_quality/gt-s0", "mask_quality/gt-s1"}  # only gt retrained


def processes_in(folder: Path) -> dict[int, str]:
    """pid -> command line of the live processes whose working directory is ``folder``."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") != str(folder):
                continue
            if (proc / "stat").read_text().rsplit(") ", 1)[1][0] == "Z":
                continue  # ended, not yet reaped
            found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    return found


@pytest.mark.faults
def test_kill_9_of_dvc_repro_leaves_no_orphans_and_a_rerun_completes(tmp_path, tiny_params):
    """SIGKILL of dvc while the studies stage runs its two worker processes: the stage and
    its workers end within seconds (nothing keeps writing unobserved), and the next `dvc
    repro` finishes the study, ending the killed cells' MLflow runs."""
    work, params = scratch_repo(tmp_path, tiny_params)
    env = {k: v for k, v in os.environ.items() if k != "SHELL"}  # as in CI: dvc runs the
    # stage through `/bin/sh -c`, and dash (unlike bash) stays between dvc and the stage
    dvc = subprocess.Popen(["dvc", "repro"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 900
    while time.time() < deadline:  # the stage and both of its pool workers are up
        running = processes_in(work).values()
        if sum("multiprocessing" in c for c in running) >= 2 and any(
            "detlab.pipelines.study run" in c for c in running
        ):
            break
        assert dvc.poll() is None, "dvc repro ended before the studies stage started"
        time.sleep(0.5)
    else:
        pytest.fail("the studies stage did not start its workers within 15 min")
    time.sleep(3)  # the workers are training
    dvc.kill()
    dvc.wait()
    killed = time.time()
    for _ in range(40):
        if not processes_in(work):
            break
        time.sleep(0.5)
    assert not processes_in(work), processes_in(work)
    print(f"kill -9 of dvc repro: the stage and its workers ended {time.time() - killed:.1f} s "
          "after dvc")  # fmt: skip

    ran, _ = repro(work)
    assert "studies" in ran
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not client.search_runs(experiments, "attributes.status = 'RUNNING'")


def test_the_ablations_run_as_named_stages_reusing_the_default_studys_cells(tmp_path, tiny_params):
    """`dvc repro ablations/dvc.yaml:<study>` (README, "Ablations"): the controlled mask
    sets, the count-controlled study with both slopes, the method table; cells the default
    study trained (gt, SimCLR, the references) are copied, not retrained."""
    work, params = scratch_repo(tmp_path, tiny_params)
    repro(work)  # the default pipeline first: its cells are reused
    quality = {m: json.loads((work / f"metrics/mask_quality/{m}.json").read_text())
               for m in ("gt", "gt_warp12", "gt_split2", "random_boxes")}  # fmt: skip
    assert quality["gt_warp12"]["masks_per_image"] == quality["gt"]["masks_per_image"]
    assert quality["gt_warp12"]["abo"] < 1.0 and quality["gt_split2"]["purity"] == 1.0
    assert quality["gt_split2"]["masks_per_image"] >= 1.9 * quality["gt"]["masks_per_image"]

    ran, out = repro(work, "ablations/dvc.yaml:mask_count")
    assert ran == {"ablations/dvc.yaml:mask_count"}
    assert "cells copied from records of the same key" in out
    copied = json.loads((work / "metrics/ablations/mask_count/mask_count/gt-s0.json").read_text())
    original = json.loads((work / "metrics/studies/mask_quality/gt-s0.json").read_text())
    assert copied["metrics"] == original["metrics"]  # not retrained
    md = (work / "reports/ablations/mask_count.md").read_text()
    assert "mask quality at a fixed region count" in md and "region count at a fixed purity" in md
    assert "random init" in md and "supervised" in md
    summary = json.loads((work / "reports/ablations/mask_count.json").read_text())["summary"]
    slopes = {f["id"]: f for f in summary["findings"]}
    assert {"quality_slope", "count_slope"} <= set(slopes)
    assert slopes["quality_slope"]["n_seeds"] == 2 and slopes["quality_slope"]["p"] is not None

    ran, _ = repro(work, "ablations/dvc.yaml:methods")
    assert ran == {"ablations/dvc.yaml:methods"}
    table = json.loads((work / "reports/ablations/methods.json").read_text())["summary"]["rows"]
    assert list(table) == ["simclr", "detcon_s", "byol"]
    assert all("learns" in r["vs_random"] for r in table.values())
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    exp = client.get_experiment_by_name("study-methods")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`detlab.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.note.content"].startswith("# Ablation: methods")
    ran, out = repro(work, "ablations/dvc.yaml:methods")
    assert ran == set()  # up to date

    ran, _ = repro(work, "ablations/dvc.yaml:soco_proposals")  # SoCo's ss cell: trained here
    soco = json.loads((work / "reports/ablations/soco_proposals.json").read_text())["summary"]
    assert list(soco["rows"]) == ["ss", "random_boxes"]
    assert soco["rows"]["random_boxes"]["abo"] == quality["random_boxes"]["abo"]
    assert [f["id"] for f in soco["findings"]] == ["ss_minus_random_boxes"]


def test_the_fashion_mnist_method_table_runs_as_named_stages(tmp_path, tiny_params):
    """`dvc repro ablations/dvc.yaml:methods_fmnist` (README, "Ablations"): Debian's
    Fashion-MNIST exported (the first 40 images of each split here), its mask sets and the
    box sets' quality against the object's box, then the method table on it with its own
    references and linear top-1 headline; then SoCo's proposal table, which copies the
    table's SoCo row and references and trains only its other box sets."""
    work, params = scratch_repo(tmp_path, tiny_params)
    ran, _ = repro(work, "ablations/dvc.yaml:methods_fmnist")
    sets = ("fh", "ss", "object_box", "random_boxes")
    stages = ("fashion_mnist", *(f"fashion_mnist_masks@{m}" for m in sets),
              *(f"fashion_mnist_quality@{m}" for m in sets[1:]), "methods_fmnist")  # fmt: skip
    assert ran == {f"ablations/dvc.yaml:{s}" for s in stages}
    assert len(list((work / "data/fashion_mnist/train").rglob("*.png"))) == 40
    summary = json.loads((work / "reports/ablations/methods_fmnist.json").read_text())["summary"]
    assert summary["headline"] == "linear_top1"
    assert list(summary["rows"]) == ["simclr", "detcon_s", "soco"]
    assert set(summary["references"]) == {"random", "supervised"}
    assert summary["chance"]["linear_top1"] == pytest.approx(0.1)
    quality = {m: json.loads((work / f"metrics/fashion_mnist_quality/{m}.json").read_text())
               for m in sets[1:]}  # fmt: skip
    assert quality["object_box"]["abo"] == 1.0 and quality["object_box"]["masks_per_image"] == 1
    assert (
        0 < quality["random_boxes"]["abo"] < 1 and quality["random_boxes"]["masks_per_image"] == 8
    )
    assert summary["rows"]["soco"]["abo"] == quality["ss"]["abo"]
    ran, _ = repro(work, "ablations/dvc.yaml:methods_fmnist")
    assert ran == set()  # up to date

    ran, _ = repro(work, "ablations/dvc.yaml:soco_proposals_fmnist")
    assert ran == {"ablations/dvc.yaml:soco_proposals_fmnist"}
    cells = work / "metrics/ablations/soco_proposals_fmnist/soco_proposals_fmnist"
    assert "copied_from" in json.loads((cells / "ss-s0.json").read_text())  # the SoCo row
    assert "copied_from" not in json.loads((cells / "random_boxes-s0.json").read_text())
    soco = json.loads((work / "reports/ablations/soco_proposals_fmnist.json").read_text())
    soco = soco["summary"]
    assert list(soco["rows"]) == ["ss", "random_boxes"] and soco["headline"] == "linear_top1"
    assert soco["rows"]["random_boxes"]["abo"] == quality["random_boxes"]["abo"]
    assert [f["id"] for f in soco["findings"]] == ["ss_minus_random_boxes"]

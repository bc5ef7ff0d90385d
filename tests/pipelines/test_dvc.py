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
COPY = ["dvc.yaml", "params.yaml", ".dvcignore", "pipelines", "methods", "platform", "plots"]

pytestmark = [pytest.mark.dvc, pytest.mark.slow]


def repro(cwd: Path) -> tuple[set[str], str]:
    out = subprocess.run(["dvc", "repro"], cwd=cwd, capture_output=True, text=True, timeout=1200)
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

"""The studies stage's runner: every cell planned once, longest first; misconfigured cells
refused before compute; a failing cell does not stop the others, and a rerun retrains only
what failed or changed; records of cells no longer in the params are removed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detlab.pipelines.study_runner import StudyFailure, plan, run_studies

REPO = Path(__file__).resolve().parents[2]


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_plan_has_every_cell_and_reference_once_longest_first():
    params = repo_params()
    st = params["studies"]
    cells = plan(params)
    mq, res, refs = (st[k] for k in ("mask_quality", "resolution", "references"))
    expected = (
        len(mq["masks"]) * len(mq["seeds"])
        + len(res["masks"]) * len(res["resolutions"]) * len(res["seeds"])
        + len(refs["kinds"]) * len(refs["seeds"])
    )
    assert len(cells) == expected == len({(c.study, c.name) for c in cells})
    assert [c.cost for c in cells] == sorted((c.cost for c in cells), reverse=True)
    assert cells[0].study == "mask_quality" and cells[-1].kind == "random"  # 64 px first


def parent_status(params: dict, study: str) -> tuple[str, str]:
    """(status, first 19 characters of the failed-cells tag) of the study's parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    exp = client.get_experiment_by_name(f"study-{study}")
    (run,) = client.search_runs([exp.experiment_id], "tags.`detlab.role` = 'parent'")
    return run.info.status, run.data.tags["detlab.failed_cells"][:19]


def orphan_child(params: dict, study: str) -> str:
    """A RUNNING child run of the study's parent whose process is gone."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    exp = client.get_experiment_by_name(f"study-{study}")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`detlab.role` = 'parent'")
    run = client.create_run(exp.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
    return run.info.run_id


@pytest.fixture
def study_params(tiny_shapes, tiny_params, tmp_path) -> dict:
    from detlab.pipelines.masks import generate

    generate("gt", tiny_shapes, tmp_path / "masks" / "gt", workers=1, progress=False)
    params = tiny_params(repo_params(), tmp_path)
    params["prepare"]["out"] = str(tiny_shapes)
    params["masks"]["out"] = str(tmp_path / "masks")  # grid's masks are not there (yet)
    params["quality_dir"] = str(tmp_path / "no-quality")
    params["studies"]["resolution"].update(seeds=[])
    params["studies"]["references"].update(kinds=["random"])
    return params


@pytest.mark.slow
def test_failing_cells_do_not_stop_the_others_and_a_rerun_retries_only_them(
    study_params, tiny_shapes, tmp_path
):
    from detlab.pipelines.masks import generate

    metrics, outputs = tmp_path / "metrics", tmp_path / "outputs"
    with pytest.raises(StudyFailure) as err:  # two worker processes
        run_studies(study_params, metrics, outputs, jobs=2)
    message = str(err.value)
    assert "2 of 7 study cells failed" in message
    assert "mask_quality grid-s0: " in message and "mask_quality grid-s1: " in message
    done = sorted(p.relative_to(metrics).as_posix() for p in metrics.glob("*/*.json"))
    assert done == ["mask_quality/global-s0.json", "mask_quality/global-s1.json",
                    "mask_quality/gt-s0.json", "mask_quality/gt-s1.json",
                    "references/random-s0.json"]  # fmt: skip

    assert parent_status(study_params, "mask_quality") == ("FAILED", "mask_quality grid-s")
    assert parent_status(study_params, "resolution") == ("FINISHED", "none")

    generate("grid", tiny_shapes, tmp_path / "masks" / "grid", workers=1, progress=False)
    study_params["studies"]["mask_quality"]["masks"] = ["grid", "gt"]  # global dropped
    before = json.loads((metrics / "mask_quality/gt-s0.json").read_text())
    orphan = orphan_child(study_params, "mask_quality")  # as a SIGKILLed cell leaves it
    result = run_studies(study_params, metrics, outputs, jobs=1)
    assert sorted(result["ran"]) == ["mask_quality grid-s0", "mask_quality grid-s1"]
    assert len(result["kept"]) == 3
    assert sorted(Path(p).name for p in result["removed"]) == ["global-s0.json", "global-s1.json"]
    after = json.loads((metrics / "mask_quality/gt-s0.json").read_text())
    assert after == before  # kept as it was: not retrained
    assert json.loads((metrics / "mask_quality/grid-s1.json").read_text())["key"]
    assert parent_status(study_params, "mask_quality") == ("FINISHED", "none")
    from mlflow.tracking import MlflowClient

    # a changed cell reruns into a new run; the old one is tagged superseded, so filtering
    # on role = cell counts every cell once
    study_params["studies"]["mask_quality"]["cells"]["gt"] = ["train.steps=4"]
    assert run_studies(study_params, metrics, outputs, jobs=1)["ran"] == [
        "mask_quality gt-s0", "mask_quality gt-s1"]  # fmt: skip
    client = MlflowClient(study_params["studies"]["tracking_uri"])
    exp = client.get_experiment_by_name("study-mask_quality").experiment_id
    cells = client.search_runs([exp], "tags.`detlab.role` = 'cell'")
    assert sorted(r.data.tags["detlab.cell"] for r in cells) == [
        "grid-s0", "grid-s1", "gt-s0", "gt-s1"]  # fmt: skip
    old = client.search_runs([exp], "tags.`detlab.role` = 'superseded'")
    assert {r.data.tags["detlab.superseded_by"] for r in old} == {
        r.info.run_id for r in cells if r.data.tags["detlab.cell"].startswith("gt")
    }

    assert MlflowClient(study_params["studies"]["tracking_uri"]).get_run(orphan).info.status == (
        "KILLED"
    )

    # the saved MLflow view: its filter keeps each current cell and reference once, and every
    # run it shows has the columns it names and the param it groups by
    from detlab.pipelines.study_views import TAG_PREFIX, VIEW_ID

    envelope = json.loads(client.get_experiment(exp).tags[TAG_PREFIX + VIEW_ID])
    state = json.loads(envelope["state"])
    shown = client.search_runs([exp], state["searchFilter"])
    assert sorted(r.data.tags["detlab.cell"] for r in shown) == [
        "grid-s0", "grid-s1", "gt-s0", "gt-s1", "random-s0"]  # fmt: skip
    params = [c.split("`")[1] for c in state["selectedColumns"] if c.startswith("params.")]
    (group,) = state["groupBy"]["groupByKeys"]
    for run in shown:
        assert {*params, group["groupByData"]} <= set(run.data.params), run.data.tags
        assert "seg_miou_objects" in run.data.metrics
    rows = {r.data.tags["detlab.cell"]: r.data.params["row"] for r in shown}
    assert rows == {"grid-s0": "grid", "grid-s1": "grid", "gt-s0": "gt", "gt-s1": "gt",
                    "random-s0": "random"}  # fmt: skip
    # every run it shows carries its row's colour, set after the cells logged
    colours = {r.data.tags["detlab.cell"]: r.data.tags.get("mlflow.runColor") for r in shown}
    assert colours["grid-s0"] == colours["grid-s1"] and colours["gt-s0"] == colours["gt-s1"]
    assert len({colours["grid-s0"], colours["gt-s0"], colours["random-s0"]} - {None}) == 3


def test_misconfigured_cells_are_refused_before_any_compute(study_params, tmp_path):
    study_params["studies"]["mask_quality"]["cells"]["gt"] = ["train.steps=-1"]
    with pytest.raises(StudyFailure, match=r"nothing ran\):\n  mask_quality gt r32: .*steps"):
        run_studies(study_params, tmp_path / "metrics", tmp_path / "outputs", jobs=2)
    assert not list((tmp_path / "metrics").glob("*/*.json"))


def test_the_ablations_are_planned_from_their_rows_and_masks():
    params = repo_params()
    st = params["studies"]
    methods = plan(params, ("methods",))
    cells = [c for c in methods if c.kind is None]
    assert len(cells) == len(st["methods"]["rows"]) * len(st["methods"]["seeds"])
    assert {c.mask for c in cells} == set(st["methods"]["rows"])
    assert cells[0].mask == "soco"  # the costliest method first
    count = [c for c in plan(params, ("mask_count",)) if c.kind is None]
    assert {c.mask for c in count} == set(st["mask_count"]["masks"])
    assert {c.name for c in count} >= {"gt_warp4-s0", "gt_split4-s2"}
    with pytest.raises(ValueError, match="no studies.nope"):
        plan(params, ("nope",))


@pytest.mark.slow
def test_an_ablation_copies_the_cells_another_stage_already_trained(study_params, tmp_path):
    from mlflow.tracking import MlflowClient

    from detlab.pipelines.report_ablations import write

    st = study_params["studies"]
    st["mask_quality"].update(masks=["gt", "global"], seeds=[0])
    st["methods"].update(seeds=[0], resolution=st["mask_quality"]["resolution"], rows={
        "simclr": {"method": "simclr", "mask": "global"},
        "detcon_s": {"method": "detcon_s", "mask": "gt"},
        "vicreg": {"method": "vicreg", "mask": "global"}})  # fmt: skip
    outputs = tmp_path / "outputs"
    run_studies(study_params, tmp_path / "default", outputs, jobs=1)
    result = run_studies(study_params, tmp_path / "abl", outputs, jobs=1, studies=("methods",),
                         reuse=[tmp_path / "default"])  # fmt: skip
    assert result["ran"] == ["methods vicreg-s0"]  # the only cell no other stage trained
    assert sorted(result["copied"]) == [
        "methods detcon_s-s0", "methods simclr-s0", "references random-s0"]  # fmt: skip
    copied = json.loads((tmp_path / "abl/methods/detcon_s-s0.json").read_text())
    original = json.loads((tmp_path / "default/mask_quality/gt-s0.json").read_text())
    assert copied["key"] == original["key"] and copied["metrics"] == original["metrics"]
    assert copied["study"] == "methods" and copied["cell"] == "detcon_s-s0"
    client = MlflowClient(st["tracking_uri"])
    exp = client.get_experiment_by_name("study-methods").experiment_id
    runs = {r.data.tags["detlab.cell"]: r for r in client.search_runs([exp])
            if r.data.tags.get("detlab.role") in ("cell", "reference")}  # fmt: skip
    assert set(runs) == {"detcon_s-s0", "simclr-s0", "vicreg-s0", "random-s0"}
    assert runs["detcon_s-s0"].data.tags["detlab.copy_of"] == original["mlflow_run_id"]
    assert runs["detcon_s-s0"].data.metrics["seg_miou_objects"] == pytest.approx(
        original["metrics"]["seg_miou_objects"])  # fmt: skip
    again = run_studies(study_params, tmp_path / "abl", outputs, jobs=1, studies=("methods",),
                        reuse=[tmp_path / "default"])  # fmt: skip
    assert again["ran"] == [] and again["copied"] == [] and len(again["kept"]) == 4
    s = write("methods", tmp_path / "abl", tmp_path / "reports", study_params)
    assert list(s["rows"]) == ["simclr", "detcon_s", "vicreg"]
    assert all("vs_random" in r for r in s["rows"].values())


@pytest.mark.slow
def test_a_study_on_its_own_dataset_trains_probes_and_reports_there(tiny_fmnist, tiny_params,
                                                                    tmp_path):  # fmt: skip
    """methods_fmnist: its cells and references read Fashion-MNIST (not the shapes), its
    probe is the linear classifier, its supervised reference learns the image classes, a mask
    set without a quality file has no ABO, and its report's headline is linear top-1."""
    from detlab.pipelines.masks import generate
    from detlab.pipelines.report_ablations import write

    params = tiny_params(repo_params(), tmp_path)
    spec = params["studies"]["methods_fmnist"]
    spec["data"].update(root=str(tiny_fmnist), masks=str(tmp_path / "fm_masks"))
    for mask_set in {row["mask"] for row in spec["rows"].values()} - {"global"}:  # fh, ss
        generate(mask_set, tiny_fmnist, tmp_path / "fm_masks" / mask_set, workers=1, progress=False)
    metrics, outputs = tmp_path / "metrics", tmp_path / "outputs"
    with pytest.raises(ValueError, match="stage of its own"):
        run_studies(params, metrics, outputs, jobs=1, studies=("methods", "methods_fmnist"))
    result = run_studies(params, metrics, outputs, jobs=1, studies=("methods_fmnist",))
    assert sorted(result["ran"]) == [
        "methods_fmnist detcon_s-s0", "methods_fmnist simclr-s0", "methods_fmnist soco-s0",
        "references random-s0", "references supervised-s0"]  # fmt: skip
    cell = json.loads((metrics / "methods_fmnist/detcon_s-s0.json").read_text())
    assert {"data=fashion_mnist", f"data.root={tiny_fmnist}", "aug.resolution=32",
            f"masks.path={tmp_path / 'fm_masks'}/fh"} <= set(cell["overrides"])  # fmt: skip
    assert "linear_top1" in cell["metrics"] and "seg_miou_objects" not in cell["metrics"]
    assert cell["abo"] is None and cell["chance"]["linear_top1"] == pytest.approx(0.1)
    refs = {k: json.loads((metrics / f"references/{k}-s0.json").read_text())
            for k in ("random", "supervised")}  # fmt: skip
    assert all(f"data.root={tiny_fmnist}" in r["overrides"] for r in refs.values())
    assert refs["supervised"]["metrics"] != refs["random"]["metrics"]  # it trained
    steps = {k: [o for o in r["overrides"] if o.startswith("train.steps=")][-1]
             for k, r in refs.items()}  # fmt: skip
    assert steps == {"random": "train.steps=3", "supervised": "train.steps=4"}  # its own budget
    s = write("methods_fmnist", metrics, tmp_path / "reports", params)
    assert s["headline"] == "linear_top1" and list(s["rows"]) == ["simclr", "detcon_s", "soco"]
    assert all("vs_random" in r for r in s["rows"].values())
    report = (tmp_path / "reports/methods_fmnist.md").read_text()
    assert "Fashion-MNIST" in report and "linear top-1" in report

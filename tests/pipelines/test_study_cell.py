"""One study cell run twice in one environment gives identical metrics (pretraining, then the
linear and segmentation probes): what the lock file and deterministic settings promise."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from detlab.methods.registry import METHODS
from detlab.pipelines.study_cells import run_cell

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_a_cell_run_twice_gives_identical_metrics(tiny_shapes, tiny_params, tmp_path):
    from detlab.pipelines.masks import generate

    # this folder's own tiny_shapes: the root tiny_mask_sets fixture is for the root one
    generate("gt", tiny_shapes, tmp_path / "masks" / "gt", workers=1, progress=False)
    params = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    params["prepare"]["out"] = str(tiny_shapes)
    params["masks"]["out"] = str(tmp_path / "masks")
    params["quality_dir"] = str(tmp_path / "no-quality")
    records = [
        run_cell(params, "mask_quality", "gt", 0, None, tmp_path / f"m{i}", tmp_path / f"o{i}")
        for i in range(2)
    ]
    first, second = (r["metrics"] for r in records)
    assert {"linear_top1", "seg_miou"} <= set(first)
    # exactly, not approximately (json: a class absent from both splits is nan in both)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert records[0]["mlflow_run_id"] != records[1]["mlflow_run_id"]  # two real runs
    # the run records the probes actually run, with their settings and pictures
    from mlflow.tracking import MlflowClient

    client = MlflowClient(params["studies"]["tracking_uri"])
    run = client.get_run(records[0]["mlflow_run_id"])
    logged = run.data.params
    assert logged["eval.seg.resolution"] == str(params["studies"]["probe_resolution"])
    assert logged["eval.seg.head"] == "linear" and "eval.linear.epochs" in logged
    assert "eval.seg.lr" not in logged  # the L-BFGS fit has none
    assert not any(k.startswith("eval.") and k.count(".") == 1 for k in logged)  # no defaults
    assert logged["monitor.knn_k"] == "20"
    # probe metrics at step 0: MLflow's chart view draws them as bars, not lone dots
    history = client.get_metric_history(run.info.run_id, "seg_miou_objects")
    assert [m.step for m in history] == [0]
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "eval/seg")]
    assert pictures == ["eval/seg/seg_predictions.png"]


def test_references_are_probed_like_cells_and_logged_to_each_study(
    tiny_shapes, tiny_params, tmp_path
):
    from mlflow.tracking import MlflowClient

    from detlab.pipelines.study_reference import run_reference

    params = tiny_params(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    params["prepare"]["out"] = str(tiny_shapes)
    random_a = run_reference(params, "random", 0, tmp_path / "a")
    random_b = run_reference(params, "random", 0, tmp_path / "b")
    supervised = run_reference(params, "supervised", 0, tmp_path / "a")
    assert json.dumps(random_a["metrics"], sort_keys=True) == json.dumps(
        random_b["metrics"], sort_keys=True
    )  # the same init for the same seed
    assert supervised["metrics"] != random_a["metrics"]  # it trained
    assert (tmp_path / "a/references/supervised-s0.json").exists()
    assert random_a["chance"]["linear_top1"] == pytest.approx(1 / len(random_a["classes"]))
    client = MlflowClient(params["studies"]["tracking_uri"])
    for study in ("mask_quality", "resolution"):
        run = client.get_run(supervised["mlflow_run_ids"][study])
        assert run.data.tags["detlab.role"] == "reference"
        assert run.info.status == "FINISHED"
        assert run.data.metrics["seg_miou_objects"] == supervised["metrics"]["seg_miou_objects"]


@pytest.mark.parametrize("method", ["detcon_b", "detcon_s", "soco"])
def test_the_global_cell_trains_the_methods_image_level_counterpart(method):
    from detlab.methods.registry import IMAGE_BASELINE, METHODS
    from detlab.pipelines.study_cells import cell_overrides
    from detlab.platform.compose import compose

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["studies"]["method"] = method
    if method == "soco":  # the study method's own keys: SoCo has boxes, not masks
        params["studies"]["method_overrides"] = {"soco": ["method.num_boxes=4"]}
    baseline = compose(cell_overrides(params, "mask_quality", "global", 0, 64)).method.name
    assert baseline == IMAGE_BASELINE[method] and baseline in METHODS
    assert compose(cell_overrides(params, "mask_quality", "gt", 0, 64)).method.name == method
    params["studies"]["method"] = "vicreg"  # an image-level method is its own baseline
    assert compose(cell_overrides(params, "mask_quality", "global", 0, 64)).method.name == "vicreg"
    params["studies"]["method"] = "detcon"
    with pytest.raises(ValueError, match="studies.method='detcon' is not a method"):
        cell_overrides(params, "mask_quality", "global", 0, 64)


def test_a_study_on_its_own_data_swaps_in_its_data_masks_probes_and_references():
    from detlab.pipelines.study_cells import cell_overrides, study_params
    from detlab.pipelines.study_reference import reference_key, reference_overrides
    from detlab.platform.compose import compose

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert study_params(params, ("mask_quality", "resolution")) is params  # untouched
    spec = params["studies"]["methods_fmnist"]
    own = study_params(params, ("methods_fmnist",))
    assert own["prepare"]["out"] == spec["data"]["root"]
    assert own["quality_dir"] == spec["data"]["quality"]  # box sets against object_box
    assert own["studies"]["evals"] == spec["evals"] != params["studies"]["evals"]
    assert own["studies"]["references"]["kinds"] == spec["references"]
    cell = cell_overrides(own, "methods_fmnist", "detcon_b", 0, 32)
    assert {"data=fashion_mnist", f"data.root={spec['data']['root']}", "method=detcon_b",
            f"masks.path={spec['data']['masks']}/fh", "train.steps=2400"} <= set(cell)  # fmt: skip
    assert "aug.resolution=32" in reference_overrides(own, 0)
    # the supervised reference trains the table's largest budget; random init has no steps
    largest = max(int(o.split("=")[1]) for c in spec["cells"].values() for o in c
                  if o.startswith("train.steps="))  # fmt: skip
    assert spec["supervised_steps"] == largest
    assert reference_overrides(own, 0, "supervised")[-4] == f"train.steps={largest}"
    assert reference_overrides(own, 0, "random") == reference_overrides(own, 0)
    unset = copy.deepcopy(own)
    del unset["studies"]["references"]["supervised_steps"]
    assert reference_key(own, "random", 0, "x") == reference_key(unset, "random", 0, "x")
    assert reference_key(own, "supervised", 0, "x") != reference_key(unset, "supervised", 0, "x")
    assert compose(reference_overrides(own, 0, "supervised")).train.steps == largest
    assert params["prepare"]["out"] != spec["data"]["root"]  # the caller's params unchanged
    with pytest.raises(ValueError, match="stage of its own"):
        study_params(params, ("methods", "methods_fmnist"))
    del spec["data"]["quality"]
    assert study_params(params, ("methods_fmnist",))["quality_dir"] is None  # not measurable
    proposals = params["studies"]["soco_proposals_fmnist"]  # the same data (a YAML alias)
    cell = cell_overrides(study_params(params, ("soco_proposals_fmnist",)),
                          "soco_proposals_fmnist", "ss", 0, 32)  # fmt: skip
    row = cell_overrides(own, "methods_fmnist", "soco", 0, 32)  # the same data and boxes:
    # the row's own EMA and budget; the proposal ablation ran at SoCo's 0.99 and 2400 steps
    assert [o for o in row if o not in cell] == ["train.steps=4800", "method.ema_base=0.9"]
    assert [o for o in cell if o not in row] == ["train.steps=2400"]
    assert proposals["masks"] == ["ss", "object_box", "random_boxes"]
    del spec["data"]["masks"]
    with pytest.raises(ValueError, match=r"lacks \['masks'\]"):
        study_params(params, ("methods_fmnist",))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_random_init_of_a_seed_is_where_that_seeds_cells_start(method):
    """A cell and the random-init reference of one seed share the backbone's initial
    weights, so a per-seed gain over random init measures what pretraining added."""
    from detlab.methods.backbones import build_backbone
    from detlab.methods.registry import build_method
    from detlab.pipelines.study_reference import reference_overrides
    from detlab.platform.compose import compose
    from detlab.platform.train import seed_everything

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = compose(reference_overrides(params, 7))
    seed_everything(7, cfg.train.deterministic, cfg.train.threads)
    random_init = build_backbone(cfg.backbone).state_dict()
    own = (params["studies"]["method_overrides"] or {}).get(method, [])
    cfg = compose([*reference_overrides(params, 7), f"method={method}", *own])
    seed_everything(7, cfg.train.deterministic, cfg.train.threads)
    start = build_method(cfg.method, cfg.backbone, cfg.aug).encoder.state_dict()
    assert start.keys() == random_init.keys()
    assert all(torch.equal(start[k], random_init[k]) for k in start)
    seed_everything(8, cfg.train.deterministic, cfg.train.threads)  # another seed differs
    other = build_method(cfg.method, cfg.backbone, cfg.aug).encoder.state_dict()
    assert not all(torch.equal(other[k], random_init[k]) for k in other)

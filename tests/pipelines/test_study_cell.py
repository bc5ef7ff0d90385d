"""One study cell run twice in one environment gives identical metrics (pretraining, then the
linear and segmentation probes): what the lock file and deterministic settings promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detlab.pipelines.study import run_cell

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

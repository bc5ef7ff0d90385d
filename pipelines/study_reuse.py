"""Cells one stage need not train: another stage's record of the same key (the same
overrides, training code and inputs) is copied, and logged to this study's MLflow experiment.

The named ablation stages (``ablations/dvc.yaml``) share cells with the default `studies`
stage and with each other (the gt and SimCLR cells, the references); ``run_studies(...,
reuse=[folders])`` copies them through :func:`records_by_key` and :func:`adopt`.
"""

from __future__ import annotations

import json
from pathlib import Path

from detlab.pipelines.study_cells import log_probes, write_record
from detlab.pipelines.study_views import axis_params
from detlab.platform.config import TrackingConfig
from detlab.platform.states import RunStatus
from detlab.platform.tracking import RunLogger


def records_by_key(roots: list[Path]) -> dict[str, Path]:
    """key -> record file, over the records under ``roots`` (``<root>/<study>/*.json``)."""
    found = {}
    for root in roots:
        for f in sorted(Path(root).glob("*/*.json")):
            try:
                found.setdefault(json.loads(f.read_text())["key"], f)
            except (OSError, ValueError, KeyError):
                continue
    return found


def adopt(source: Path, out: Path, study: str, name: str, row: str, reference: bool, uri: str,
          parents: dict[str, str]) -> dict:  # fmt: skip
    """``source`` (a record of the same key) becomes the record ``out`` of cell ``name`` of
    ``study`` (``row``: its mask set or table row; ``reference``: a reference row, logged to
    each study of ``parents``): copied, not retrained. Its metrics go to a run of each such
    study's experiment, tagged ``detlab.copy_of``, so every study's MLflow view has all rows."""
    record = json.loads(source.read_text()) | {"copied_from": str(source)}
    runs = record.get("mlflow_run_ids") or {}
    origin = record.get("mlflow_run_id") or next(iter(runs.values()), "")
    run_ids = {}
    for s in [s for s in (parents if reference else [study]) if s in parents]:
        tags = {"detlab.study": s, "detlab.role": "reference" if reference else "cell",
                "detlab.cell": name, "detlab.copy_of": str(origin)}  # fmt: skip
        logger = RunLogger(TrackingConfig(
            uri=uri, experiment=f"study-{s}", run_name=f"reference: {name}" if reference else name,
            parent_run_id=parents[s], tags=tags))  # fmt: skip
        params = axis_params(row, record.get("method") or "-", int(record["resolution"]),
                             int(record["seed"]))  # fmt: skip
        log_probes(logger, {"metrics": record.get("metrics", {}), "params": params}, None)
        logger.finish(RunStatus.FINISHED)
        run_ids[s] = logger.run_id
    if not reference:
        record |= {"study": study, "cell": name, "mask": row,
                   "masks": record.get("masks") or record.get("mask")}  # fmt: skip
        record["mlflow_run_id"] = run_ids.get(study, record.get("mlflow_run_id"))
    elif run_ids:
        record["mlflow_run_ids"] = run_ids
    return write_record(record, out)

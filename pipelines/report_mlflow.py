"""The report, where the studies are browsed: each study's MLflow parent run gets the
report (markdown as its description, the plots, ``studies.json``) and the per-row seed
mean and std of every probe metric, so the result is read in the MLflow UI alone.

Metric names: ``<row>.<metric>.mean`` / ``.std`` with row = mask source (``gt``,
``global``), reference (``random``, ``supervised``) or ``<mask>_r<px>`` in the resolution
study; chance levels as ``chance.<metric>``.
"""

from __future__ import annotations

import time
from pathlib import Path

STUDY_FILES = {"mask_quality": ("mask_quality.md", "mask_quality.png"),
               "resolution": ("resolution.md", "resolution.png")}  # fmt: skip


def parent_ids(cells: list[dict], study: str) -> set[str]:
    return {c["mlflow_parent_run_id"] for c in cells
            if c.get("study") == study and c.get("mlflow_parent_run_id")}  # fmt: skip


def row_metrics(rows: dict[str, dict]) -> dict[str, float]:
    out = {}
    for name, row in rows.items():
        for metric, d in row.get("metrics", {}).items():
            for stat in ("mean", "std"):
                if d.get(stat) is not None:
                    out[f"{name}.{metric}.{stat}"] = float(d[stat])
    return out


def study_metrics(result: dict, study: str) -> dict[str, float]:
    summary = result[study]["summary"]
    if study == "mask_quality":
        rows = summary["rows"]
    else:
        rows = {f"{m}_r{r}": row for m, g in summary["table"].items() for r, row in g.items()}
        rows |= summary["references"]
    chance = {f"chance.{k}": float(v) for k, v in summary.get("chance", {}).items()}
    return row_metrics(rows) | chance


def log_report(result: dict, out: Path, tracking_uri: str) -> list[str]:
    """Log each study's report to its parent run(s); return the run ids written to."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    written = []
    for study, files in STUDY_FILES.items():
        metrics = study_metrics(result, study)
        ts = int(time.time() * 1000)
        for run_id in sorted(parent_ids(result[study]["cells"], study)):
            client.set_tag(run_id, "mlflow.note.content", (out / files[0]).read_text())
            for name in (*files, "studies.json"):
                if (out / name).exists():
                    client.log_artifact(run_id, str(out / name), "report")
            batch = [Metric(k, v, ts, 0) for k, v in sorted(metrics.items())]
            for i in range(0, len(batch), 500):
                client.log_batch(run_id, metrics=batch[i : i + 500])
            written.append(run_id)
    return written

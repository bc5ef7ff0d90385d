"""The report, where the studies are browsed: each study's MLflow parent run gets the
report (markdown as its description, the plots, ``studies.json``) and the per-row seed
mean and std of every probe metric, so the result is read in the MLflow UI alone.

Metric names: ``<row>.<metric>.mean`` / ``.std`` with row = mask source (``gt``,
``global``), reference (``random``, ``supervised``) or ``<mask>_r<px>`` in the resolution
study; chance levels as ``chance.<metric>``.
"""

from __future__ import annotations

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
    # lazy: mlflow (~2 s) loads only when the report is logged (--tracking-uri)
    from detlab.platform.tracking import log_artifact, log_metrics, set_tags

    written = []
    for study, files in STUDY_FILES.items():
        metrics = dict(sorted(study_metrics(result, study).items()))
        for run_id in sorted(parent_ids(result[study]["cells"], study)):
            note = (out / files[0]).read_text()
            set_tags(tracking_uri, run_id, {"mlflow.note.content": note})
            for name in (*files, "studies.json"):
                if (out / name).exists():
                    log_artifact(tracking_uri, run_id, out / name, "report")
            log_metrics(tracking_uri, run_id, metrics, step=0)
            written.append(run_id)
    return written

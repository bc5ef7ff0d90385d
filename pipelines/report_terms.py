"""The study report's terms, shared by its summaries (``report.py``), text
(``report_markdown.py``), figures (``report_plots.py``) and the ablations' report: the metrics
and their names, the rows, and the statistical levels."""

from __future__ import annotations

HEADLINE = "seg_miou_objects"
METRIC_NAMES = {
    HEADLINE: "seg mIoU (objects)",
    "seg_miou": "seg mIoU (all)",
    "seg_iou_background": "seg IoU background",
    "linear_top1": "linear top-1",
    "linear_top5": "linear top-5",
    "final_loss": "final loss",
    "rep_std": "rep. std",
    "knn_top1": "online kNN top-1",
}
PROBE_METRICS = (HEADLINE, "seg_miou", "seg_iou_background", "linear_top1", "linear_top5")
HEALTH_METRICS = ("final_loss", "rep_std", "knn_top1")
FINDING_METRICS = (HEADLINE, "linear_top1")
GLOBAL, GT = "global", "gt"  # the image-level baseline (e.g. SimCLR) and ground-truth masks
REFERENCES = {
    "random": "random init (no pretraining)",
    "supervised": "supervised (labels)",
}
LEVEL, ALPHA = 0.95, 0.05  # CI level; significance level of the rank tests
FLAG_STD = 2.0  # ⚠ when the gain over random init is under this many pooled seed std


def reference_label(kind: str, steps: int | None = None) -> str:
    """A reference row's label; the supervised one names the steps it trained (a study may
    give it more than its cells: ``studies.<study>.supervised_steps``)."""
    if kind == "supervised" and steps:
        return f"supervised (labels, {steps} steps)"
    return REFERENCES[kind]


def main_metrics(keys: list[str]) -> list[str]:
    """The findings' metrics among ``keys`` (else the first of them)."""
    return [k for k in FINDING_METRICS if k in keys] or keys[:1]


def headline_of(keys: list[str]) -> str:
    """A study's headline metric: the object-level seg mIoU where its probes measured it,
    else the first finding metric they did (linear top-1 on a classification dataset)."""
    return main_metrics(keys)[0]


def steps_in(overrides: list[str]) -> int | None:
    """The pretraining steps ``overrides`` set (the last ``train.steps=``; None if none)."""
    found = [o.split("=", 1)[1] for o in overrides if o.startswith("train.steps=")]
    return int(found[-1]) if found else None


# the named stages of ablations/dvc.yaml (the runner's studies and the ablation report's)
ABLATIONS = ("mask_count", "soco_proposals", "methods", "methods_fmnist", "soco_proposals_fmnist")

"""A saved view of each study experiment in the MLflow UI: the study's axes and headline
metrics as columns, one row per current cell or reference, grouped by row (mean over seeds),
with bar charts of the probes.

MLflow (3.x) keeps a runs-page view as an experiment tag ``mlflow.sharedViewState.<id>``:
JSON ``{name, createdAt, updatedAt, state}``, ``state`` the page's JSON (search facets and UI
state). The view appears in the page's views menu and opens directly with
``#/experiments/<id>/runs?viewStateShareKey=<id>``. It is written with a fixed id, so a rerun
updates it instead of adding a copy.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid

VIEW_ID = "detlab-study"
VIEW_NAME = "detlab: study (current cells and references, mean over seeds)"
TAG_PREFIX = "mlflow.sharedViewState."
# current cells and references: not the parents, superseded or removed runs
CURRENT = (
    "tags.`detlab.role` != 'parent' and tags.`detlab.role` != 'superseded' "
    "and tags.`detlab.role` != 'removed'"
)
HEADLINE = ("seg_miou_objects", "seg_iou_background", "linear_top1")
COLUMNS = (  # the UI orders metric columns alphabetically, then the params
    *(f"metrics.`{m}`" for m in ("mask_abo", *HEADLINE)),
    *(f"params.`{p}`" for p in ("row", "resolution", "seed")),
)
CHARTS = (*HEADLINE, "knn_top1", "mask_abo")


def axis_params(row: str, method: str, resolution: int, seed: int) -> dict[str, object]:
    """The study axes as short top-level params (the flattened config hides them among
    ~100 dotted keys): ``row`` = mask source or reference kind."""
    return {"row": row, "method": method, "resolution": resolution, "seed": seed}


def view_state() -> dict:
    """The runs page's state: filter, sort, columns, grouping and charts."""
    section = str(uuid.UUID(int=1))  # fixed ids: the same state on every rerun
    charts = [
        {
            "uuid": str(uuid.UUID(int=100 + i)),
            "type": "BAR",
            "runsCountToCompare": 100,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": False,
            "metricKey": key,
            "displayName": key,
        }
        for i, key in enumerate(CHARTS)
    ]
    return {
        "searchFilter": CURRENT,
        "orderByKey": "metrics.`seg_miou_objects`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": list(COLUMNS),
        "runsPinned": [],
        "runsHidden": [],
        "runsExpanded": {},
        "runsHiddenMode": "SHOW_ALL",
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "param", "groupByData": "row"}],
        },
        "useGroupedValuesInCharts": True,
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "study probes (mean over seeds per row)",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isFirstTime": False,
            }
        ],
        "isAccordionReordered": False,
        "viewMaximized": False,
        "runListHidden": False,
        "hideEmptyCharts": True,
    }


def install_view(uri: str, experiment_id: str) -> str:
    """Write (or update) the study view on ``experiment_id`` in the tracking store ``uri``;
    returns the URL fragment that opens it."""
    from detlab.platform.tracking import experiment_tags, set_experiment_tag

    key = TAG_PREFIX + VIEW_ID
    now = int(time.time() * 1000)
    created = now
    old = experiment_tags(uri, experiment_id).get(key)
    if old:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            created = int(json.loads(old).get("createdAt", now))
    envelope = {"name": VIEW_NAME, "createdAt": created, "updatedAt": now,
                "state": json.dumps(view_state())}  # fmt: skip
    set_experiment_tag(uri, experiment_id, key, json.dumps(envelope))
    return view_link(experiment_id)


def view_link(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}"

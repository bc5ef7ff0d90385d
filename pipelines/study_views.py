"""A saved view of each study experiment in the MLflow UI: the study's axes and headline
metrics as columns, one row per current cell or reference, grouped by row (mean over seeds),
with bar charts of the probes.

MLflow (3.x) keeps a runs-page view as an experiment tag ``mlflow.sharedViewState.<id>``:
JSON ``{name, createdAt, updatedAt, state}``, ``state`` the page's JSON (search facets and UI
state). The view appears in the page's views menu and opens directly with
``#/experiments/<id>/runs?viewStateShareKey=<id>``. It is written with a fixed id, so a rerun
updates it instead of adding a copy.

Colours: the view state holds none. The UI colours a run by its tag ``mlflow.runColor``
(what its colour picker writes) and a group of the table only by the browser's own
localStorage or, by default, a hash of the group's id (``param.row.fh``) into a 29-colour
palette, in which fh, random and supervised fall on one light blue. So the charts draw the
runs (not the group means) and every run is tagged with its row's colour: references in
greys/black, mask rows in a qualitative palette, each row its own (:func:`row_colours`).
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import time
import uuid
from collections.abc import Iterable

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
RUN_COLOR_TAG = "mlflow.runColor"  # the UI's colour of a run (its colour picker's tag)
# references: greys and black (random init, the floor, darkest); mask rows: Tableau 10
# without its grey, then cyan and olive; beyond those, hues spread by the golden ratio
REFERENCE_COLOURS = {"random": "#1a1a1a", "supervised": "#9a9a9a"}
REFERENCE_SPARE = ("#5a5a5a", "#c8c8c8", "#3a3a3a", "#7a7a7a")
MASK_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1", "#edc948",
                "#76b7b2", "#ff9da7", "#9c755f", "#17becf", "#bcbd22")  # fmt: skip


def axis_params(row: str, method: str, resolution: int, seed: int) -> dict[str, object]:
    """The study axes as short top-level params (the flattened config hides them among
    ~100 dotted keys): ``row`` = mask source or reference kind."""
    return {"row": row, "method": method, "resolution": resolution, "seed": seed}


def _hex(r: float, g: float, b: float) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b))


def _spare_mask_colour(i: int) -> str:
    """The ``i``-th mask colour past the palette: saturated, hues spread by the golden ratio."""
    return _hex(*colorsys.hls_to_rgb((0.11 + i * 0.618034) % 1.0, 0.45 + 0.1 * (i % 3), 0.7))


def _spare_grey(i: int) -> str:
    return _hex(*[0.12 + (0.37 * i) % 0.7] * 3)


def row_colours(rows: Iterable[str], references: Iterable[str] = ()) -> dict[str, str]:
    """Each row's colour (``#rrggbb``), every row its own: references (``references``,
    random init and supervised) in greys/black, mask rows in order of their names from a
    qualitative palette (no greys), so a bar is told apart without hovering."""
    rows = sorted(set(rows))
    refs = [r for r in rows if r in set(references)]
    colours: dict[str, str] = {r: REFERENCE_COLOURS[r] for r in refs if r in REFERENCE_COLOURS}
    greys = iter([*REFERENCE_SPARE, *(_spare_grey(i) for i in range(len(rows)))])
    masks = iter([*MASK_COLOURS, *(_spare_mask_colour(i) for i in range(len(rows)))])
    for row in rows:
        if row not in colours:
            pool = greys if row in refs else masks
            colours[row] = next(c for c in pool if c not in colours.values())
    return colours


def colour_runs(uri: str, experiment_id: str) -> dict[str, str]:
    """Tag every run of the experiment that has a ``row`` param with its row's colour (the
    references: the rows of ``detlab.role = reference`` runs); returns {row: colour}."""
    from detlab.platform.tracking import search_runs, set_tags

    runs = [r for r in search_runs(uri, [experiment_id]) if r.params.get("row")]
    refs = {r.params["row"] for r in runs if r.tags.get("detlab.role") == "reference"}
    colours = row_colours((r.params["row"] for r in runs), refs)
    for run in runs:
        colour = colours[run.params["row"]]
        if run.tags.get(RUN_COLOR_TAG) != colour:
            set_tags(uri, run.run_id, {RUN_COLOR_TAG: colour})
    return colours


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
        # the charts draw runs, in their row's colour: a group's colour is not settable
        "useGroupedValuesInCharts": False,
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "study probes (a bar per seed, in its row's colour)",
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
    """Write (or update) the study view on ``experiment_id`` in the tracking store ``uri``
    and colour its runs by row (:func:`colour_runs`: the runs it holds now, so call it again
    once new cells have logged); returns the URL fragment that opens it."""
    from detlab.platform.tracking import experiment_tags, set_experiment_tag

    colour_runs(uri, experiment_id)

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


def main(argv: list[str] | None = None) -> None:
    """``python -m detlab.pipelines.study_views [--tracking-uri URI] [study ...]``: write each
    study's view again and colour its runs (the studies stage writes the view before its
    cells log; this colours a store filled since)."""
    import argparse

    from detlab.platform.tracking import experiment_id

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    ap.add_argument("studies", nargs="*", default=["mask_quality", "resolution"])
    args = ap.parse_args(argv)
    for study in args.studies:
        experiment = experiment_id(args.tracking_uri, f"study-{study}")
        link = install_view(args.tracking_uri, experiment)
        colours = ", ".join(
            f"{r} {c}" for r, c in colour_runs(args.tracking_uri, experiment).items()
        )
        print(f"study {study}: {link} ({colours or 'no runs yet'})")


if __name__ == "__main__":
    main()

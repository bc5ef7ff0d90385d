"""The study's saved MLflow view colours every row its own: references (random init,
supervised) in greys/black, mask rows in distinct saturated colours, each run tagged with its
row's colour (the UI's ``mlflow.runColor``) and the charts drawing those runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detlab.pipelines.study_views import (
    RUN_COLOR_TAG,
    TAG_PREFIX,
    VIEW_ID,
    install_view,
    row_colours,
    view_state,
)

REPO = Path(__file__).resolve().parents[2]


def rgb(colour: str) -> tuple[int, int, int]:
    assert len(colour) == 7 and colour[0] == "#", colour
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


def is_grey(colour: str) -> bool:
    r, g, b = rgb(colour)
    return max(r, g, b) - min(r, g, b) <= 8


def study_rows() -> dict[str, list[str]]:
    """Each study's rows in params.yaml (its masks or named rows; SLIC added to the
    mask-quality study, whose masks it is built for)."""
    st = yaml.safe_load((REPO / "params.yaml").read_text())["studies"]
    rows = {}
    for name, spec in st.items():
        if isinstance(spec, dict) and ("masks" in spec or "rows" in spec):
            rows[name] = sorted(spec.get("rows") or spec["masks"])
    rows["mask_quality"] = sorted({*rows["mask_quality"], "slic"})
    return rows


def assert_distinct(colours: dict[str, str], refs: set[str]) -> None:
    assert len(set(colours.values())) == len(colours), colours  # every row its own
    for row, colour in colours.items():
        assert is_grey(colour) == (row in refs), (row, colour)  # refs grey, masks not
    masks = {c for r, c in colours.items() if r not in refs}
    assert not masks & {colours[r] for r in refs}


@pytest.mark.parametrize("study", sorted(study_rows()))
def test_every_row_of_each_study_has_its_own_colour_references_grey(study):
    refs = set(yaml.safe_load((REPO / "params.yaml").read_text())["studies"]["references"]["kinds"])
    assert refs == {"random", "supervised"}
    rows = [*study_rows()[study], *refs]
    colours = row_colours(rows, refs)
    assert set(colours) == set(rows)
    assert_distinct(colours, refs)
    assert rgb(colours["random"]) < rgb(colours["supervised"])  # the floor darkest


def test_colours_stay_distinct_past_the_palettes():
    masks = [f"mask{i}" for i in range(40)]
    refs = {"random", "supervised", "imagenet", "dino", "clip", "mae", "scratch2"}
    colours = row_colours([*masks, *refs], refs)
    assert len(colours) == 47
    assert_distinct(colours, refs)
    # a row's colour depends on the rows beside it only through their order: same set, same map
    assert row_colours(reversed([*masks, *refs]), refs) == colours


def test_the_view_tags_each_run_with_its_rows_colour_and_charts_the_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study-x")
    parent = client.create_run(exp, tags={"detlab.role": "parent"}).info.run_id
    runs = {}
    for row in ("fh", "random", "supervised", "gt", "grid"):
        role = "reference" if row in ("random", "supervised") else "cell"
        for seed in (0, 1):
            run = client.create_run(exp, tags={"detlab.role": role}).info.run_id
            client.log_param(run, "row", row)
            client.log_param(run, "seed", seed)
            runs[run] = row
    client.set_tag(next(iter(runs)), RUN_COLOR_TAG, "#8acaff")  # a stale colour: replaced

    link = install_view(uri, exp)
    assert link.endswith(f"viewStateShareKey={VIEW_ID}")
    tagged = {run: client.get_run(run).data.tags.get(RUN_COLOR_TAG) for run in runs}
    by_row = {runs[run]: colour for run, colour in tagged.items()}
    assert all(tagged[run] == by_row[row] for run, row in runs.items())  # one colour a row
    assert_distinct(by_row, {"random", "supervised"})
    assert RUN_COLOR_TAG not in client.get_run(parent).data.tags  # no row: left alone

    state = json.loads(json.loads(client.get_experiment(exp).tags[TAG_PREFIX + VIEW_ID])["state"])
    assert state == view_state()
    assert state["useGroupedValuesInCharts"] is False  # a group's colour cannot be set


def test_default_group_colours_collide_which_is_why_runs_are_coloured():
    """A mirror of the UI's default colour of a group (MLflow 3.x runs page: a checksum of
    the group id into its 29-colour palette): fh, random and supervised share one colour."""
    palette = ["#a6630c", "#c83243", "#b45091", "#8a63bf", "#434a93", "#137dae", "#04867d",
               "#308613", "#facb66", "#1f272d", "#445461", "#5f7281", "#8396a5", "#93320b",
               "#be501e", "#de7921", "#f2be88", "#115026", "#277c43", "#3ba65e", "#8ddda8",
               "#9e102c", "#c82d4c", "#e65b77", "#f792a6", "#0e538b", "#2272b4", "#4299e0",
               "#8acaff"]  # fmt: skip

    def group_colour(group_id: str) -> str:
        t = n = 0
        for ch in group_id:
            t = (t + ord(ch)) % 255
            n = (n + t) % 255
        return palette[(t | n << 8) % len(palette)]

    assert {group_colour(f"param.row.{r}") for r in ("fh", "random", "supervised")} == {"#8acaff"}


def test_the_command_colours_a_store_filled_after_the_view_was_written(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from detlab.pipelines.study_views import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("study-x")
    install_view(uri, exp)  # the stage's start: no runs yet
    for row, role in (("gt", "cell"), ("random", "reference")):
        run = client.create_run(exp, tags={"detlab.role": role}).info.run_id
        client.log_param(run, "row", row)
    main(["--tracking-uri", uri, "x"])
    colours = {r.data.params["row"]: r.data.tags[RUN_COLOR_TAG] for r in client.search_runs([exp])}
    assert_distinct(colours, {"random"})
    assert f"gt {colours['gt']}" in capsys.readouterr().out

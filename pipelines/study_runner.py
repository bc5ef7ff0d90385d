"""Every study cell and reference as one DVC stage, ``studies.jobs`` cells at a time.

    python -m detlab.pipelines.study run [--jobs N]

Cells are independent, so they run concurrently: in ``jobs`` spawned worker processes on
this machine (``studies.cluster: local``; give each ``train.threads`` so that jobs x threads
is the core count: two one-thread cells on two cores finish 1.6x sooner than one two-thread
cell at a time) or as ``jobs`` SLURM jobs in flight (``cluster: slurm``). Longest cells
start first, so the last round is not one long cell alone.

Each record carries its cell's key: a hash of the cell's overrides, the training code and
its inputs (dataset and mask-set fingerprints). A cell whose record already holds its key
is not rerun, so editing one cell's params reruns that cell only, although DVC reruns the
whole stage; records of cells no longer in ``params.yaml`` are removed. A failing cell does
not stop the others: the command ends non-zero naming each failure, keeps every finished
record, and a rerun retries only what failed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from detlab.methods.registry import IMAGE_BASELINE, title
from detlab.pipelines.report_terms import METRIC_NAMES, headline_of, steps_in
from detlab.pipelines.study_cells import (
    DEFAULT_STUDIES,
    cell_name,
    cell_overrides,
    cell_row,
    dataset_fingerprint,
    inputs_fingerprint,
    parent_run,
    run_cell,
    study_cell_key,
    study_method,
    study_params,
)
from detlab.pipelines.study_reference import reference_key, reference_overrides, run_reference
from detlab.pipelines.study_reuse import adopt, records_by_key
from detlab.pipelines.study_views import colour_runs, install_view
from detlab.platform.cli import one_line
from detlab.platform.compose import compose
from detlab.platform.config import TrackingConfig
from detlab.platform.lifecycle import exit_with_parent
from detlab.platform.states import RunStatus
from detlab.platform.tracking import (
    TrackingError,
    end_run,
    get_run,
    mark_running,
    search_runs,
    set_experiment_tag,
    set_tags,
)

REFERENCES_DIR = "references"
DESCRIPTIONS = {  # each study experiment's description in the MLflow UI
    "mask_quality": (
        "{method} pretrained with mask sets of different quality (e.g. grid < FH < ground "
        "truth, measured as ABO against the ground truth: metric `mask_abo`), and {baseline} "
        "on one global mask as the image-level baseline; 3 seeds per source. Read "
        "`seg_miou_objects` (segmentation probe, object classes) per `detlab.cell` against "
        "the reference runs (random init, supervised). The parent run `study: mask_quality` "
        "holds the report: table, plot, verdicts with confidence intervals."
    ),
    "resolution": (
        "{method} (gt masks) pretrained at several resolutions (param `aug.resolution`); "
        "every cell is probed at the same resolution. The 64 px cells are the mask-quality "
        "study's. The parent run `study: resolution` holds the report."
    ),
    "mask_count": (
        "{method}, one factor at a time: a quality ladder (ground truth with its boundaries "
        "warped, the number of regions fixed) and a count ladder (ground-truth regions split "
        "into 2 and 4 parts, every mask inside one object). Read `seg_miou_objects` per "
        "`detlab.cell` against `mask_abo` / `mask_count`; the parent run holds the slopes."
    ),
    "soco_proposals": "{method} with selective-search, ground-truth and random boxes (box "
    "ABO: `mask_abo`); the parent run `study: soco_proposals` holds the report.",
    "soco_proposals_fmnist": "{method} on Fashion-MNIST with selective-search, object and "
    "random boxes (box ABO against the object's box: `mask_abo`; read `linear_top1`).",
    "methods": (
        "Every method at the same budget against random init (the references), 3 seeds "
        "each; the parent run `study: methods` holds the table with each gain's CI."
    ),
    "methods_fmnist": (
        "Every method on Fashion-MNIST (32 px, DetCon on FH masks, SoCo on selective-search "
        "boxes) against random init and a supervised classifier, 3 seeds each; read "
        "`linear_top1`; the parent run `study: methods_fmnist` holds the table."
    ),
}


METHOD_COST = {"soco": 2.5, "detcon_b": 1.2, "byol": 1.2, "mocov2": 1.1}  # x DetCon-S's step
BASE_STEPS = 600  # a run's steps where its overrides set none; costs are relative to it


class StudyFailure(RuntimeError):
    """One or more cells failed; the message names each."""


@dataclass(frozen=True)
class Cell:
    study: str  # mask_quality | resolution | references
    name: str  # the record's file stem: gt-s0, gt-r32-s1, random-s2
    seed: int
    mask: str | None = None
    resolution: int | None = None
    kind: str | None = None  # references: random | supervised
    cost: float = 1.0  # relative run time, for longest-first scheduling

    @property
    def label(self) -> str:
        return f"{self.study} {self.name}"


def description(st: dict, study: str) -> str:
    """The study experiment's description, naming the methods its cells train."""
    method = study_method(st, study)  # a study without a global cell may have no baseline: "?"
    baseline = title(IMAGE_BASELINE.get(method))
    return DESCRIPTIONS[study].format(method=title(method), baseline=baseline)


def cell_steps(params: dict, study: str, mask: str, resolution: int) -> int:
    """The pretraining steps a cell's overrides set (BASE_STEPS if none)."""
    return steps_in(cell_overrides(params, study, mask, 0, resolution)) or BASE_STEPS


def plan(params: dict, studies: tuple[str, ...] = DEFAULT_STUDIES) -> list[Cell]:
    """Every cell of ``studies`` and every reference in ``params``, longest first."""
    st = params["studies"]
    cells = []
    for study in studies:
        spec = st.get(study)
        if spec is None:
            raise ValueError(f"params.yaml has no studies.{study}")
        resolutions = spec.get("resolutions") or [spec.get("resolution")]
        for mask in spec.get("rows") or spec["masks"]:
            per_pixel = METHOD_COST.get(cell_row(params, study, mask)[0], 1.0)
            for res in resolutions:
                steps = cell_steps(params, study, mask, int(res))
                for seed in spec["seeds"]:
                    # ~ pixels x steps
                    cost = 0.2 + (int(res) / 64) ** 2 * per_pixel * steps / BASE_STEPS
                    cells.append(Cell(study, cell_name(study, mask, seed, res), int(seed), mask,
                                      int(res), cost=cost))  # fmt: skip
    refs = st.get("references", {}) or {}
    for kind in refs.get("kinds", []):
        steps = steps_in(reference_overrides(params, 0, kind)) or BASE_STEPS
        cost = 0.2 + (0.5 * steps / BASE_STEPS if kind == "supervised" else 0.0)
        for seed in refs.get("seeds", []):
            cells.append(Cell(REFERENCES_DIR, f"{kind}-s{seed}", int(seed), kind=kind, cost=cost))
    return sorted(cells, key=lambda c: -c.cost)


def planned_keys(params: dict, cells: list[Cell]) -> dict[Cell, str]:
    """Every cell's key, the dataset fingerprinted once (it stats every image) and each mask
    set once, not once per cell."""
    dataset = dataset_fingerprint(params)
    sets = {c: None if c.kind else cell_row(params, c.study, c.mask)[1] for c in cells}
    inputs = {m: inputs_fingerprint(params, m, dataset) for m in set(sets.values())}
    return {
        c: reference_key(params, c.kind, c.seed, inputs[None])
        if c.kind is not None
        else study_cell_key(params, c.study, c.mask, c.seed, c.resolution, inputs[sets[c]])
        for c in cells
    }


def record_path(metrics_root: Path, cell: Cell) -> Path:
    return metrics_root / cell.study / f"{cell.name}.json"


def is_done(metrics_root: Path, cell: Cell, key: str) -> bool:
    try:
        return json.loads(record_path(metrics_root, cell).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def remove_stale(metrics_root: Path, cells: list[Cell], uri: str | None = None,
                 studies: tuple[str, ...] = DEFAULT_STUDIES) -> list[Path]:  # fmt: skip
    """Delete records of cells that ``params.yaml`` no longer has (their MLflow runs are
    tagged ``detlab.role=removed``); return them."""
    keep = {record_path(metrics_root, c) for c in cells}
    stale = []
    for folder in {*studies, REFERENCES_DIR}:
        for f in sorted((metrics_root / folder).glob("*.json")):
            if f not in keep:
                if uri:
                    retire(uri, json.loads(f.read_text()), "removed")
                f.unlink()
                stale.append(f)
    return stale


def check_cells(params: dict, cells: list[Cell]) -> None:
    """Compose one cell per (study, mask, resolution) and one reference of each kind (seeds
    change only train.seed): a bad key or value fails here, naming its cells, before any
    compute."""
    errors, seen = [], set()
    for cell in cells:
        group = (cell.study, cell.mask, cell.resolution, cell.kind)
        if group in seen:
            continue
        seen.add(group)
        overrides = (
            reference_overrides(params, cell.seed, cell.kind)
            if cell.kind is not None
            else cell_overrides(params, cell.study, cell.mask, cell.seed, cell.resolution)
        )
        try:
            compose(overrides)
        except Exception as e:  # noqa: BLE001 - every bad group is named, then one raise
            name = cell.study if cell.kind else f"{cell.study} {cell.mask} r{cell.resolution}"
            errors.append(f"{name}: {(str(e).strip().splitlines() or [''])[0]}")
    if errors:
        raise StudyFailure("study cells are misconfigured (nothing ran):\n  " + "\n  ".join(errors))


def run_one(params: dict, cell: Cell, metrics_root: Path, outputs_root: Path, key: str,
            studies: tuple[str, ...] = DEFAULT_STUDIES) -> dict:  # fmt: skip
    """One cell or reference, in this process (a pool worker calls this). ``key`` is the one
    planned before any cell ran, so code edited meanwhile cannot make the record stale."""
    if cell.kind is not None:
        return run_reference(params, cell.kind, cell.seed, metrics_root, key, studies)
    return run_cell(params, cell.study, cell.mask, cell.seed, cell.resolution, metrics_root,
                    outputs_root, key)  # fmt: skip


def summary(record: dict) -> str:
    """ ", <headline> <value>" of a finished cell (seg mIoU, else linear top-1)."""
    m = record.get("metrics", {})
    key = headline_of(sorted(m)) if m else None
    return "" if key not in m else f", {METRIC_NAMES[key]} {m[key]:.4f}"


def retire(uri: str, record: dict, why: str, keep: bool = False) -> int:
    """Tag the MLflow runs of ``record``'s cell ``detlab.role=<why>`` (all of them, or with
    ``keep`` all but the record's own), so filtering an experiment on
    ``tags.detlab.role = 'cell'`` counts every current cell once. Returns how many."""
    current = record.get("mlflow_run_ids") or {record["study"]: record.get("mlflow_run_id")}
    role = "reference" if "mlflow_run_ids" in record else "cell"
    tagged = 0
    for run_id in filter(None, current.values()):
        try:
            experiment = get_run(uri, run_id).experiment_id
        except TrackingError:  # a record from another tracking store
            continue
        query = f"tags.`detlab.cell` = '{record['cell']}' and tags.`detlab.role` = '{role}'"
        for old in search_runs(uri, [experiment], query):
            if not (keep and old.run_id == run_id):
                set_tags(uri, old.run_id, {"detlab.role": why})
                if keep:
                    set_tags(uri, old.run_id, {"detlab.superseded_by": run_id})
                tagged += 1
    return tagged


def end_parents(uri: str, parents: dict[str, str], failures: list[str]) -> None:
    """Each study's parent run ends with its children: FAILED when one of its cells (or a
    reference, shared by both studies) failed, else FINISHED; the failures as a tag."""
    if not parents:
        return
    for study, run_id in parents.items():
        # every cell has ended: a child still RUNNING lost its process (a killed worker)
        experiment = get_run(uri, run_id).experiment_id
        for child in search_runs(
            uri,
            [experiment],
            f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = '{RunStatus.RUNNING}'",
        ):
            end_run(uri, child.run_id, RunStatus.KILLED, reason="its process ended mid-run")
        mine = [f for f in failures if f.startswith((f"{study} ", f"{REFERENCES_DIR} "))]
        set_tags(uri, run_id, {"detlab.failed_cells": "; ".join(mine)[:5000] or "none"})
        end_run(uri, run_id, status=RunStatus.FAILED if mine else RunStatus.FINISHED)


def run_studies(
    params: dict,
    metrics_root: Path,
    outputs_root: Path,
    jobs: int | None = None,
    out=sys.stdout,
    studies: tuple[str, ...] = DEFAULT_STUDIES,
    reuse: list[Path] | None = None,
) -> dict[str, list[str]]:
    """Run every cell of ``studies`` whose record is missing or stale; return {"ran", "kept",
    "removed", "copied"}. A cell whose key a record under ``reuse`` (another stage's
    metrics) already holds is copied from it, not retrained. Raises StudyFailure naming
    every failed cell after the others have finished."""
    params = study_params(params, studies)  # a study on its own dataset: its data and probes
    st = params["studies"]
    jobs = int(jobs or st.get("jobs", 1))
    if jobs < 1:
        raise ValueError(f"studies.jobs must be >= 1, got {jobs}")
    cells = plan(params, studies)
    uri = st.get("tracking_uri", "sqlite:///mlflow.db")
    removed = [str(p) for p in remove_stale(metrics_root, cells, uri, studies)]
    keys = planned_keys(params, cells)
    todo = [c for c in cells if not is_done(metrics_root, c, keys[c])]
    kept = [c.label for c in cells if c not in todo]
    elsewhere = records_by_key(reuse or [])
    copies = [c for c in todo if keys[c] in elsewhere and c.kind is None]
    refs_copied = [c for c in todo if keys[c] in elsewhere and c.kind is not None]
    todo = [c for c in todo if keys[c] not in elsewhere]
    check_cells(params, todo)
    print(f"studies: {len(todo)} of {len(cells)} cells to run ({len(kept)} up to date), "
          f"{jobs} at a time", file=out, flush=True)  # fmt: skip
    parents, links = {}, {}
    # the parent runs exist before workers look them up (no race to create them)
    if todo or copies or refs_copied:
        for study in studies:
            parents[study] = parent_run(TrackingConfig(uri=uri, experiment=f"study-{study}"), study)
            mark_running(uri, parents[study])  # children coming
            experiment = get_run(uri, parents[study]).experiment_id
            set_experiment_tag(uri, experiment, "mlflow.note.content", description(st, study))
            links[study] = install_view(uri, experiment)
    for c in copies + refs_copied:  # a reference: logged to each study of this stage
        adopt(elsewhere[keys[c]], record_path(metrics_root, c), c.study, c.name,
              c.kind or c.mask or "", c.kind is not None, uri, parents)  # fmt: skip
    if copies or refs_copied:
        print(f"studies: {len(copies) + len(refs_copied)} cells copied from records of the "
              "same key (not retrained)", file=out, flush=True)  # fmt: skip
    failures: list[str] = []
    t0 = time.time()

    def done(i: int, cell: Cell, result=None, error: BaseException | None = None) -> None:
        elapsed = time.time() - t0
        head = f"[{i:>{len(str(len(todo)))}}/{len(todo)}] {cell.label}"
        if error is None:
            retire(uri, result, "superseded", keep=True)  # older runs of this cell
            print(f"{head}: done{summary(result)} ({elapsed:.0f} s elapsed)", file=out, flush=True)
        else:
            line = one_line(error)
            failures.append(f"{cell.label}: {line}")
            print(f"{head}: FAILED {line}", file=out, flush=True)

    if jobs == 1 or len(todo) <= 1:
        for i, cell in enumerate(todo, 1):
            try:
                done(
                    i, cell, run_one(params, cell, metrics_root, outputs_root, keys[cell], studies)
                )
            except Exception as e:  # noqa: BLE001 - reported with the cell, the rest goes on
                done(i, cell, error=e)
    else:
        ctx = multiprocessing.get_context("spawn")  # no forked torch / MLflow state
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx,
                                 initializer=exit_with_parent,
                                 initargs=(2.0, "study worker", False, os.getpid())) as pool:  # fmt: skip
            running: dict[Future, Cell] = {
                pool.submit(run_one, params, c, metrics_root, outputs_root, keys[c], studies): c
                for c in todo
            }
            finished = 0
            while running:
                ready, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in ready:
                    cell = running.pop(fut)
                    finished += 1
                    try:
                        done(finished, cell, fut.result())
                    except Exception as e:  # noqa: BLE001
                        done(finished, cell, error=e)
    end_parents(uri, parents, failures)
    for study in parents:  # the view was written before these cells logged: colour them now
        colour_runs(uri, get_run(uri, parents[study]).experiment_id)
    for study, link in links.items():
        print(f"MLflow, study {study}: `mlflow ui --backend-store-uri {uri}`, then "
              f"http://127.0.0.1:5000/{link}", file=out, flush=True)  # fmt: skip
    if failures:
        raise StudyFailure(
            f"{len(failures)} of {len(todo)} study cells failed (finished ones are kept; "
            "rerun to retry the rest):\n  " + "\n  ".join(failures)
        )
    copied = [c.label for c in copies + refs_copied]
    return {"ran": [c.label for c in todo], "kept": kept, "removed": removed, "copied": copied}

"""One study cell: what it trains (its method, mask set and overrides, from ``params.yaml``),
its key, and running it: pretrain through the platform, probe, record.

A study names its cells by mask set (``studies.<study>.masks``) or, for a table of methods,
by row (``studies.<study>.rows: {row: {method, mask}}``). A cell's overrides are the shared
protocol (``studies.common``), its method's own keys and schedule
(``studies.method_overrides.<method>``), the study's and the cell's own
(``studies.<study>.cells.<name>``).

The cell's key hashes its overrides, the training code and its inputs' fingerprints: the
checkpoint folder is named by it, so a killed cell resumes from its last checkpoint while a
changed one starts afresh, and the runner (``study_runner.py``) skips cells whose record
already holds their key. Every cell is probed the same way at ``studies.probe_resolution``
(so the resolution study varies the pretraining resolution only). The runner, the
references (``study_reference.py``) and the copies (``study_reuse.py``) share what is here;
``python -m detlab.pipelines.study`` (``study.py``) is the command.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path

import detlab.methods
import detlab.platform
from detlab.methods.datasets import open_dataset
from detlab.methods.eval import eval_params
from detlab.methods.registry import IMAGE_BASELINE, METHODS
from detlab.pipelines.masks.generators import KIND, split_params
from detlab.pipelines.report_terms import ABLATIONS
from detlab.pipelines.study_views import axis_params
from detlab.platform.checkpoint import load_backbone
from detlab.platform.compose import compose, group_options
from detlab.platform.config import TrackingConfig
from detlab.platform.launch import reconcile
from detlab.platform.run import evaluate, pretrain
from detlab.platform.states import RunStatus
from detlab.platform.tracking import (
    RunLogger,
    create_run,
    experiment_id,
    get_run,
    log_metrics,
    search_runs,
    set_tags,
)


def cell_name(study: str, mask: str, seed: int, resolution: int | None) -> str:
    return f"{mask}-r{resolution}-s{seed}" if study == "resolution" else f"{mask}-s{seed}"


def study_method(st: dict, study: str | None = None) -> str:
    """The object-level method a study trains: its own ``method``, else ``studies.method``."""
    return (st.get(study) or {}).get("method") or st.get("method", "detcon_b")


def cell_method(method: str, mask: str) -> str:
    """The method a cell trains: the study's, or for the global-mask cell (the image-level
    baseline) an object-level method's image-level counterpart (DetCon-B: BYOL; DetCon-S:
    SimCLR); an image-level method is its own."""
    if method not in METHODS:
        raise ValueError(f"studies.method={method!r} is not a method; one of {sorted(METHODS)}")
    return IMAGE_BASELINE.get(method, method) if mask == "global" else method


def method_overrides(st: dict, method: str) -> list[str]:
    """A method's own keys and its schedule at the study's scale (``studies.method_overrides.
    <method>``), given to every cell that trains it; a plain list belongs to studies.method."""
    own = st.get("method_overrides") or {}
    if isinstance(own, list):
        return own if method == study_method(st) else []
    return list(own.get(method) or [])


def cell_row(params: dict, study: str, name: str) -> tuple[str, str]:
    """A cell's (method, mask set): a study of ``rows`` names both per row (``methods``:
    {row: {method, mask}}), the others train their method on the cell's mask set."""
    st = params["studies"]
    rows = st[study].get("rows")
    if rows is None:
        return cell_method(study_method(st, study), name), name
    if name not in rows:
        raise ValueError(f"studies.{study}.rows has no row {name!r}; rows: {sorted(rows)}")
    return rows[name]["method"], rows[name].get("mask", "global")


def mask_kind_of(params: dict, mask: str) -> str:
    """The masks/ config a mask set composes with: its own YAML when one exists, else that
    of its generator's kind (boxes: ss, per-pixel ids: gt), given the set's name and path."""
    if mask in group_options("masks"):
        return mask
    generator, _ = split_params(mask, (params.get("masks", {}).get("methods") or {}).get(mask))
    return "ss" if KIND.get(generator) == "boxes" else "gt"


def cell_overrides(params: dict, study: str, mask: str, seed: int, resolution: int) -> list[str]:
    st = params["studies"]
    spec = st[study]
    method, masks = cell_row(params, study, mask)
    mask_path = [] if masks == "global" else [f"masks.path={params['masks']['out']}/{masks}"]
    kind = mask_kind_of(params, masks)
    named = [] if kind == masks else [f"masks.name={masks}"]
    return [
        *st["common"],
        *method_overrides(st, method),
        *spec.get("overrides", []),
        f"method={method}",
        f"masks={kind}",
        *named,
        *mask_path,
        f"data.root={params['prepare']['out']}",
        f"train.seed={seed}",
        f"aug.resolution={resolution}",
        *(spec.get("cells", {}) or {}).get(mask, []),
    ]


DEFAULT_STUDIES = ("mask_quality", "resolution")  # the `studies` stage (default `dvc repro`)
STUDIES = DEFAULT_STUDIES + ABLATIONS
HEALTH = ("loss", "rep_std", "knn_top1")  # last logged values of the pretraining run


def study_params(params: dict, studies: tuple[str, ...]) -> dict:
    """The params a stage of ``studies`` runs with. A study on a dataset of its own
    (``studies.<study>.data: {config, root, masks}``, e.g. Fashion-MNIST) runs alone in its
    stage: its dataset, mask folder, probes (``evals``, ``probe_resolution``) and reference
    kinds replace the shared ones; its mask sets' quality is read from ``data.quality`` when
    given (box sets measured against a box store of ground truth), else not measured. Any
    other stage's params are returned as they are."""
    own = [s for s in studies if ((params["studies"].get(s) or {}).get("data"))]
    if not own:
        return params
    if len(studies) > 1:
        raise ValueError(
            f"studies.{own[0]} trains on its own data ({params['studies'][own[0]]['data']}): "
            f"run it in a stage of its own, not with {[s for s in studies if s != own[0]]}"
        )
    spec = params["studies"][own[0]]
    data = spec["data"]
    missing = [k for k in ("config", "root", "masks") if k not in data]
    if missing:
        raise ValueError(f"studies.{own[0]}.data lacks {missing} (needs config, root, masks)")
    out = copy.deepcopy(params)
    out["prepare"] = {**out.get("prepare", {}), "out": data["root"]}
    out["masks"] = {**out.get("masks", {}), "out": data["masks"]}
    out["quality_dir"] = data.get("quality")  # None: no ground truth, no mask quality
    st = out["studies"]
    st["common"] = [*st["common"], f"data={data['config']}"]
    st.update({k: spec[k] for k in ("evals", "probe_resolution") if k in spec})
    refs = {**(st.get("references") or {}), "resolution": spec.get("resolution")}
    if "references" in spec:
        refs["kinds"] = list(spec["references"])
    if "supervised_steps" in spec:
        refs["supervised_steps"] = spec["supervised_steps"]
    st["references"] = refs
    return out


def code_fingerprint() -> str:
    """Hash of the training code (detlab.methods, detlab.platform): a cell rerun by DVC
    because the code changed trains afresh, a killed cell with the same code resumes."""
    h = hashlib.sha256()
    for package in (detlab.methods, detlab.platform):
        for root in package.__path__:
            for f in sorted(Path(root).rglob("*.py")):
                h.update(f.relative_to(root).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def dataset_fingerprint(params: dict) -> str:
    """The study dataset's train and val fingerprints (each stats every image: compute it
    once per run of many cells and pass it on)."""
    root = params["prepare"]["out"]
    return "\n".join(open_dataset(root, split).fingerprint for split in ("train", "val"))


def inputs_fingerprint(params: dict, mask: str | None, dataset: str | None = None) -> str:
    """Content fingerprint of what a cell reads: the dataset's splits (``dataset``, else
    computed) and its mask set (the store's meta.json records the shards' hash), so new masks
    or data retrain the cell."""
    parts = [dataset or dataset_fingerprint(params)]
    if mask and mask != "global":
        meta = Path(params["masks"]["out"]) / mask / "meta.json"
        parts.append(json.loads(meta.read_text())["fingerprint"] if meta.exists() else "absent")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cell_key(overrides: list[str], inputs: str) -> str:
    """The identity of a cell's result: its overrides, the training code and its inputs."""
    text = "\n".join([*overrides, code_fingerprint(), inputs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def study_cell_key(params: dict, study: str, mask: str, seed: int, resolution: int,
                   inputs: str | None = None) -> str:  # fmt: skip
    """A study cell's key; ``inputs``: its inputs_fingerprint when already known."""
    overrides = cell_overrides(params, study, mask, seed, resolution)
    return cell_key(
        overrides, inputs or inputs_fingerprint(params, cell_row(params, study, mask)[1])
    )


def probe_resolution(params: dict) -> int:
    st = params["studies"]
    return int(st.get("probe_resolution") or st["mask_quality"]["resolution"])


def parent_run(tracking: TrackingConfig, study: str) -> str:
    """One MLflow parent run per study, found by tag or created once."""
    exp = experiment_id(tracking.uri, tracking.experiment)
    found = search_runs(
        tracking.uri, [exp], f"tags.`detlab.study` = '{study}' and tags.`detlab.role` = 'parent'"
    )
    if found:
        return found[0].run_id
    cfg = TrackingConfig(
        uri=tracking.uri, experiment=tracking.experiment, run_name=f"study: {study}"
    )
    return create_run(cfg, tags={"detlab.study": study, "detlab.role": "parent"})


def end_stale_runs(tracking: TrackingConfig, st: dict) -> None:
    """Runs of the study left RUNNING by a cell whose process or SLURM job died end
    KILLED/FAILED with the reason (a rerun of that cell reopens its own run)."""
    cluster = compose([f"cluster={st.get('cluster', 'local')}"]).cluster
    reconcile(tracking.uri, cluster, [tracking.experiment])


def probe(model, cfg, overrides: list[str], evals: list[str], resolution: int,
          pictures: Path | None = None) -> dict:  # fmt: skip
    """Run the study's probes on ``model`` (a checkpoint path, or a backbone in hand) at
    ``resolution``: flat metrics, the settings each probe used (``eval.<name>.<key>``),
    chance levels and class names; prediction pictures go to ``pictures/<name>/`` when
    given. ``cfg``: the cell's composed ``overrides`` (device, data)."""
    if isinstance(model, str):
        model = load_backbone(model, cfg.backbone)  # loaded once for every probe
    metrics: dict[str, float] = {}
    settings: dict[str, object] = {}
    for name in evals:
        ecfg = compose([*overrides, f"eval={name}", f"eval.resolution={resolution}"])
        settings |= eval_params(ecfg.eval)
        out = None if pictures is None else pictures / name
        found = evaluate(ecfg.eval, ecfg.data, cfg.backbone, model, device=cfg.train.device,
                         out_dir=out)  # fmt: skip
        metrics.update({k: float(v) for k, v in found.items()})
    classes = list(
        open_dataset(cfg.data.root, cfg.data.train_split, format=cfg.data.format).classes
    )
    chance = {"linear_top1": 1 / len(classes)}
    return {"metrics": metrics, "params": settings, "chance": chance, "classes": classes}


def log_probes(logger: RunLogger, probed: dict, pictures: Path | None) -> None:
    """The probes' metrics, settings and prediction pictures, into one MLflow run. Metrics
    at step 0: MLflow's chart view then draws each as bars, one per run (a metric logged at
    a step >= 1 in any run gets a line chart over steps, where one value is a lone dot); the
    checkpoint probed is the run's last (param train.steps)."""
    logger.log_metrics(probed["metrics"], step=0)
    logger.log_params(probed["params"])
    for png in sorted(pictures.glob("*/*.png")) if pictures else []:
        logger.log_artifact(png, f"eval/{png.parent.name}")


def health(tracking_uri: str, run_id: str) -> dict[str, float]:
    """Learning health of a pretraining run: its last loss, collapse monitor and kNN."""
    logged = get_run(tracking_uri, run_id).metrics
    return {("final_loss" if k == "loss" else k): float(logged[k]) for k in HEALTH if k in logged}


def run_cell(
    params: dict,
    study: str,
    mask: str,
    seed: int,
    resolution: int | None,
    metrics_root: Path,
    outputs_root: Path,
    key: str | None = None,
) -> dict:
    """``key``: the runner's (computed once, before any cell ran), else computed here."""
    st = params["studies"]
    resolution = int(resolution or st[study].get("resolution") or probe_resolution(params))
    name = cell_name(study, mask, seed, resolution)
    overrides = cell_overrides(params, study, mask, seed, resolution)
    key = key or study_cell_key(params, study, mask, seed, resolution)
    tracking_uri = st.get("tracking_uri", "sqlite:///mlflow.db")
    tracking = TrackingConfig(uri=tracking_uri, experiment=f"study-{study}")
    parent = parent_run(tracking, study)
    end_stale_runs(tracking, st)
    overrides += [
        f"train.out_dir={outputs_root}/{study}/{name}-{key[:8]}",
        f"tracking.uri={tracking_uri}",
        f"tracking.experiment=study-{study}",
        f"tracking.parent_run_id={parent}",
        f"tracking.run_name={name}",
        f"cluster={st.get('cluster', 'local')}",  # where: in this process, or a SLURM job
    ]
    cfg = compose(overrides)  # validates every key before any compute
    t0 = time.time()
    result = pretrain(cfg)  # the platform facade: here or a SLURM job
    run_id = result.run_id
    t1 = time.time()
    pictures = Path(cfg.train.out_dir) / "eval"
    probed = probe(result.checkpoint, cfg, overrides, st["evals"], probe_resolution(params),
                   pictures)  # fmt: skip
    metrics = {**probed["metrics"], **health(tracking_uri, run_id)}
    logger = RunLogger(
        TrackingConfig(uri=tracking_uri, experiment=tracking.experiment, run_id=run_id),
        owner=True,
    )
    log_probes(logger, probed, pictures)
    logger.log_params(axis_params(mask, cfg.method.name, resolution, seed))
    logger.finish(RunStatus.FINISHED)
    mask_set = cell_row(params, study, mask)[1]
    quality_dir = params.get("quality_dir", "metrics/mask_quality")  # None: not measurable
    quality_file = Path(quality_dir or "") / f"{mask_set}.json"
    quality = json.loads(quality_file.read_text()) if quality_dir and quality_file.exists() else {}
    # the cell's row in the study: tags + mask quality
    set_tags(
        tracking_uri, run_id, {"detlab.study": study, "detlab.cell": name, "detlab.role": "cell"}
    )
    mask_quality = {
        f"mask_{q}": quality[q]
        for q in ("abo", "recall50", "purity", "masks_per_image")
        if quality.get(q) is not None
    }
    log_metrics(tracking_uri, run_id, mask_quality)
    record = {
        "study": study,
        "cell": name,
        "mask": mask,
        "seed": seed,
        "resolution": resolution,
        "probe_resolution": probe_resolution(params),
        "method": cfg.method.name,
        "masks": mask_set,
        "abo": quality.get("abo"),
        "recall50": quality.get("recall50"),
        "purity": quality.get("purity"),
        "masks_per_image": quality.get("masks_per_image"),
        "metrics": metrics,
        "chance": probed["chance"],
        "classes": probed["classes"],
        "key": key,
        "mlflow_run_id": run_id,
        "mlflow_parent_run_id": parent,
        "pretrain_seconds": round(t1 - t0, 1),
        "eval_seconds": round(time.time() - t1, 1),
        "overrides": overrides,
    }
    return write_record(record, metrics_root / study / f"{name}.json")


def write_record(record: dict, out: Path) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return record

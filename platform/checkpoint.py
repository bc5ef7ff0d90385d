"""Atomic checkpoints, exact resume, backbone loading and torchvision export."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from detlab.platform.config import BackboneConfig

FORMAT = 1
BACKBONE_KEYS = ("name", "width", "small_stem", "stem_stride", "last_stride")


BACKBONE_DEFAULTS = {"stem_stride": 1, "last_stride": 2}  # checkpoints from before the keys


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the config."""


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over ``path``.

    A crash (or a SLURM kill) mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _numpy_state() -> dict[str, Any]:
    """numpy's global RNG state as plain types, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    from detlab.methods.weights.formats import torch_load_safe

    # a pickle that would build anything but tensors and plain types is refused
    state = torch_load_safe(path, CheckpointError)
    if isinstance(state, dict) and "conv1.weight" in state and "format" not in state:
        return imported(state, path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a detlab checkpoint (format {FORMAT})")
    state["path"] = str(path)
    return state


def imported(weights: dict[str, Any], path: Path) -> dict[str, Any]:
    """A torchvision-named ResNet state dict (``detlab import-weights``, or saved from
    torchvision) as a checkpoint: its backbone config is read from the weights."""
    from detlab.methods.weights import WeightsError, describe

    try:
        arch = describe(weights)
    except WeightsError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    width = arch["stem_width"] / 64
    expansion = 4 if arch["block"] == "bottleneck" else 1
    uniform = [round(c * width) * expansion for c in (64, 128, 256, 512)]  # as Backbone builds
    if arch["arch"] == "custom" or arch["widths"] != uniform:
        raise CheckpointError(f"{path}: a {arch['arch']} ResNet with widths {arch['widths']} "
                              "has no detlab backbone config")  # fmt: skip
    info = Path(f"{path}.json")
    source = json.loads(info.read_text()).get("format", "?") if info.is_file() else "torchvision"
    return {
        "backbone": {k: v for k, v in weights.items() if not k.startswith("fc.")},
        "backbone_cfg": {
            "name": arch["arch"],
            "width": width,
            "small_stem": arch["stem"] == "cifar",
            "stem_stride": 1,
            "last_stride": 2,
        },  # fmt: skip
        "method_name": f"imported:{source}",
        "step": 0,
        "path": str(path),
        "imported": True,
    }


def resolve(path_or_run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """Load a checkpoint from a file/folder, or from an MLflow run id (tag detlab.checkpoint)."""
    if Path(path_or_run_id).exists():
        return load(path_or_run_id)
    from detlab.platform.tracking import get_run

    try:
        run = get_run(tracking_uri, path_or_run_id)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint={path_or_run_id!r} is neither an existing file nor an MLflow run id "
            f"in {tracking_uri}: {exc}"
        ) from None
    ckpt = run.tags.get("detlab.checkpoint")
    if not ckpt:
        raise CheckpointError(f"MLflow run {path_or_run_id} has no detlab.checkpoint tag")
    state = load(ckpt)
    state.setdefault("run_id", path_or_run_id)
    return state


# what a run resumed from a checkpoint must share with the run that wrote it
RESUME_KEYS = ("method.name", "backbone", "masks.name", "masks.path", "aug.resolution",
               "train.batch_size", "train.seed", "data.root")  # fmt: skip


def check_resumable(state: dict[str, Any], cfg: DictConfig, path: str | Path) -> None:
    """Refuse to resume ``cfg`` from a checkpoint another run wrote (one line, the keys that
    differ), before anything is loaded into the model."""
    stored = OmegaConf.create(state.get("config") or "{}")
    diffs = []
    for key in RESUME_KEYS:
        a, b = OmegaConf.select(stored, key), OmegaConf.select(cfg, key)
        a, b = (OmegaConf.to_container(v) if isinstance(v, DictConfig) else v for v in (a, b))
        if a != b:
            diffs.append(f"{key}={a} there, {b} here")
    if diffs:
        raise CheckpointError(
            f"{path} was written by another run ({'; '.join(diffs)}): choose a new "
            "train.out_dir (the default makes one per run), or train.resume=false to start "
            "over in this one"
        )


class Checkpointer:
    """One run's training state at ``path``: ``save`` writes it atomically (call on rank 0),
    ``restore`` loads it back exactly (model with its EMA targets, optimiser, schedule, RNG;
    the step gives the data order), refusing a checkpoint another run wrote."""

    def __init__(self, path: str | Path, cfg: DictConfig, method, optimizer, scheduler):
        self.path, self.cfg = Path(path), cfg
        self.method, self.optimizer, self.scheduler = method, optimizer, scheduler

    def restore(self) -> dict[str, Any] | None:
        """The loaded state (its ``step``, ``requeues``, ``run_id``), or None to start fresh."""
        if not self.path.exists():
            return None
        state = load(self.path)
        check_resumable(state, self.cfg, self.path)
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return state

    def save(self, step: int, run_id: str | None, requeues: int) -> str:
        from detlab.platform.compose import to_yaml

        cfg = self.cfg
        state = {
            "format": FORMAT,
            "step": step,
            "total_steps": cfg.train.steps,
            "method": self.method.state_dict(),
            "backbone": self.method.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "config": to_yaml(cfg),
            "method_name": cfg.method.name,
            "backbone_cfg": OmegaConf.to_container(cfg.backbone),
            "run_id": run_id,
            "requeues": requeues,
        }
        return str(save_atomic(state, self.path))


def check_backbone(state: dict[str, Any], cfg: BackboneConfig) -> None:
    saved = state["backbone_cfg"]
    diff = [
        f"{k}: checkpoint {saved[k]!r} vs config {getattr(cfg, k)!r}"
        for k in BACKBONE_KEYS
        if saved.get(k, BACKBONE_DEFAULTS.get(k)) != getattr(cfg, k)
    ]
    if diff:
        raise CheckpointError(
            f"backbone in {state.get('path')} does not match backbone config ("
            + "; ".join(diff)
            + "): pass matching backbone=... overrides"
        )


def load_backbone(checkpoint: str | dict, cfg: BackboneConfig, tracking_uri: str | None = None):
    """The pretrained online backbone of a checkpoint (path, MLflow run id, or a state
    ``resolve`` already loaded), checked against ``cfg``."""
    from detlab.methods.backbones import build_backbone

    state = checkpoint if isinstance(checkpoint, dict) else resolve(checkpoint, tracking_uri)
    check_backbone(state, cfg)
    backbone = build_backbone(cfg)
    backbone.load_state_dict(state["backbone"])
    backbone.checkpoint_state = {k: state.get(k) for k in ("path", "run_id", "method_name", "step")}
    return backbone


def is_torchvision_geometry(cfg: BackboneConfig) -> bool:
    """True when ``torchvision.models.<name>()`` has exactly this backbone's shapes."""
    return (
        not cfg.name.startswith("timm:")
        and float(cfg.width) == 1.0
        and not cfg.small_stem
        and int(cfg.last_stride) == 2
    )


def load_hint(cfg: BackboneConfig, path: Path) -> str:
    """One line of Python that loads an export of this backbone (strictly)."""
    load = f"torch.load('{path}', weights_only=True)"
    if is_torchvision_geometry(cfg):
        return f"import torch, torchvision; torchvision.models.{cfg.name}().load_state_dict({load})"
    args = (
        f"'{cfg.name}', width={float(cfg.width)}, small_stem={bool(cfg.small_stem)}, "
        f"stem_stride={int(cfg.stem_stride)}, last_stride={int(cfg.last_stride)}"
    )
    return (
        "import torch; from detlab.methods.backbones import Backbone; "
        f"Backbone({args}).load_state_dict({load})"
    )


def export_command(cfg: DictConfig) -> int:
    """`detlab export checkpoint=<path|run id>`: torchvision-compatible backbone weights."""
    if not cfg.checkpoint:
        print("detlab export: set checkpoint=<path or MLflow run id>")
        return 2
    try:
        state = resolve(cfg.checkpoint, cfg.tracking.uri)
        bb_cfg = OmegaConf.structured(BackboneConfig(**state["backbone_cfg"]))
        backbone = load_backbone(state, bb_cfg)
    except CheckpointError as exc:
        print(f"detlab export: {exc}")
        return 2
    out = Path(cfg.export_path or Path(state["path"]).with_name("backbone_torchvision.pt"))
    weights = backbone.torchvision_state_dict()
    standard = is_torchvision_geometry(bb_cfg)
    if not standard:  # no torchvision constructor: the untrained fc would only get in the way
        weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    save_atomic(weights, out)
    print(f"wrote {out} ({state['method_name']}, step {state['step']}, {bb_cfg.name})")
    print(f"load with: {load_hint(bb_cfg, out)}")
    if standard:
        print("(the 1000-way fc is torchvision's initialisation: pretraining does not train it)")
    else:
        print(
            f"(width {bb_cfg.width}, small_stem={bb_cfg.small_stem}, last_stride="
            f"{bb_cfg.last_stride}: no torchvision constructor builds this {bb_cfg.name}; "
            "detlab's Backbone, a torchvision ResNet subclass, does)"
        )
    return 0

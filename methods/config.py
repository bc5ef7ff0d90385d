"""The science's config schema: what a method, its data and its augmentations need.

Hydra structured configs (dataclasses), values in YAML under ``sweeps/conf/``. The platform
assembles these with its own (optimiser, training, tracking, cluster) into the full tree in
``detlab.platform.config``. Each method's own fields live in a subclass of
``MethodConfig`` beside its model (``DetConConfig`` in ``methods/models/detcon.py``...),
registered with its class in ``detlab.methods.registry``; no module here imports torch, so
composing a config stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    name: str = "shapes"
    root: str = "data/shapes"  # dataset root written by the `prepare` stage (or real data)
    format: str = "auto"  # auto | coco | imagefolder | voc
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0  # DataLoader worker processes
    max_images: int | None = None  # use only the first N images (smoke runs)


@dataclass
class MasksConfig:
    name: str = "fh"  # grid | fh | slic | ss | gt | global | none
    path: str | None = "data/masks/fh"  # mask store written by the `masks@<name>` stage
    kind: str = "mask"  # mask (per-pixel ids) | boxes (SoCo proposals) | none
    grid_size: int = 4  # masks computed on the fly (name=grid, path=null): n x n cells


@dataclass
class BackboneConfig:
    name: str = "resnet50"  # resnet18/34/50/101/152 (torchvision), resnet200, or timm:<name>
    width: float = 1.0  # channel width multiplier; tiny CPU configs use 0.125-0.25
    small_stem: bool = False  # 3x3 stem without max-pool, for small images
    stem_stride: int = 1  # small stem only: 1 (C5 at H/8) or 2 (C5 at H/16)
    last_stride: int = 2  # layer4's stride; 1 keeps C5 at layer3's resolution
    sync_bn: bool = True  # SyncBatchNorm when torch.distributed is initialised


@dataclass
class AugConfig:
    resolution: int = 224  # output size of the pretraining views (the "resolution" axis)
    # where the views are made: cpu (loader workers), device (workers decode and draw, the
    # training device crops, resizes and colours the batch), auto (device on CUDA)
    views: str = "auto"
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    jitter_strength: float = 1.0  # scales BYOL's (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])  # view 1, view 2
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2])
    # SoCo views: V2 = RandomResizedCrop(scale=soco_crop_scale), V3 = V2 at resolution/2
    soco_crop_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    soco_box_jitter: float = 0.1
    soco_box_jitter_p: float = 0.5


@dataclass
class MethodConfig:
    """Fields every method has (image-level SimCLR and BYOL use exactly these); a method's
    own fields are a subclass beside its model, named in its YAML's defaults list."""

    name: str = "detcon_b"  # simclr | byol | mocov2 | vicreg | detcon_s | detcon_b | soco
    temperature: float = 0.1  # contrastive losses (SimCLR, MoCo v2, DetCon)
    proj_hidden: int = 4096
    proj_out: int = 256
    pred_hidden: int = 4096  # 0 = no predictor
    ema_base: float = 0.996  # tau_0 of the cosine EMA schedule (target networks)

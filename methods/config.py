"""The science's config schema: what a method, its data and its augmentations need.

Hydra structured configs (dataclasses), values in YAML under ``platform/conf/``. The platform
assembles these with its own (optimiser, training, tracking, cluster) into the full tree in
``detlab.platform.config``. Each method's own fields are a subclass of ``MethodConfig``
here (``DetConConfig``...), named in ``METHOD_CONFIGS`` and by its model's ``config_class``
(``detlab.methods.registry`` checks the two agree); no module here imports torch, so
composing a config (``detlab config``, ``jobs``, ``sweep status``) never loads it.
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


@dataclass
class DetConConfig(MethodConfig):
    num_masks: int = 16  # mask ids sampled per image (the "mask count" axis)
    max_mask_id: int = 256  # ids >= this are ignored (uint8 stores: < 256)
    local_negatives: bool = True  # other masks of the same image are negatives
    cross_image_negatives: int | None = None  # None = all other images, 0 = none, k = k images


@dataclass
class MoCoConfig(MethodConfig):
    queue_size: int = 65536  # negatives kept from earlier batches


@dataclass
class VICRegConfig(MethodConfig):
    vicreg_sim: float = 25.0  # invariance weight (lambda)
    vicreg_var: float = 25.0  # variance weight (mu)
    vicreg_cov: float = 1.0  # covariance weight (nu)


@dataclass
class SoCoConfig(MethodConfig):
    num_boxes: int = 4  # K proposals per image
    # fpn: FPN P2-P5 + R-CNN head, views V1 V2 V3 (SoCo's FPN model, the paper's main one);
    # c4: RoIAlign on C4 and the backbone's res5 as the box head, views V1 V2 (SoCo_C4)
    structure: str = "fpn"
    fpn_channels: int = 256  # FPN width (fpn)
    roi_size: int = 7  # RoIAlign output size
    head_hidden: int = 1024  # R-CNN head FC width (fpn)


# each method's config dataclass, by the name of its YAML in platform/conf/method/
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "simclr": MethodConfig,
    "byol": MethodConfig,
    "mocov2": MoCoConfig,
    "vicreg": VICRegConfig,
    "detcon_s": DetConConfig,
    "detcon_b": DetConConfig,
    "soco": SoCoConfig,
}


def config_schemas() -> dict[str, type[MethodConfig]]:
    """``{"detcon_b_schema": DetConConfig, ...}``: the config store's ``method/<name>_schema``
    entries, which each method's YAML names in its defaults."""
    return {f"{name}_schema": cls for name, cls in METHOD_CONFIGS.items()}

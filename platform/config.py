"""Config schema: Hydra structured configs. Values live in YAML under ``sweeps/conf/``.

Every config group (``data/``, ``masks/``, ``backbone/``, ``method/``, ``optim/``,
``cluster/``, ``eval/``, ``sweep/``) is typed by one dataclass below; builders receive the
typed sub-config they need (``build_optimizer(cfg.optim, params)``), never the whole tree.
Unknown keys are rejected by OmegaConf's struct mode when the config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


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
    name: str = "detcon_b"  # simclr | byol | mocov2 | vicreg | detcon_s | detcon_b | soco
    temperature: float = 0.1
    num_masks: int = 16  # mask ids sampled per image (the "mask count" axis)
    max_mask_id: int = 256
    local_negatives: bool = True  # other masks of the same image are negatives
    cross_image_negatives: int | None = None  # None = all other images, 0 = none, k = k images
    proj_hidden: int = 4096
    proj_out: int = 256
    pred_hidden: int = 4096  # 0 = no predictor
    ema_base: float = 0.996  # tau_0 of the cosine EMA schedule (target networks)
    queue_size: int = 65536  # MoCo v2
    vicreg_sim: float = 25.0
    vicreg_var: float = 25.0
    vicreg_cov: float = 1.0
    num_boxes: int = 4  # SoCo K proposals per image
    fpn_channels: int = 256  # SoCo FPN width
    roi_size: int = 7
    head_hidden: int = 1024  # SoCo R-CNN head FC width


@dataclass
class OptimConfig:
    name: str = "lars"  # sgd | adamw | lars
    lr: float = 0.2  # base learning rate at batch 256; scaled by batch_size / 256
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    eta: float = 1e-3  # LARS trust coefficient
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the peak lr
    grad_clip: float | None = None  # max gradient norm, None = off
    exclude_bias_and_norm: bool = True  # from weight decay and LARS adaptation


@dataclass
class TrainConfig:
    batch_size: int = 256  # global batch, split across ranks
    steps: int = 1000
    seed: int = 0
    deterministic: bool = True  # torch's deterministic algorithms (warn where none exists)
    threads: int = 0  # intra-op CPU threads (0 = torch's default); fix it to reproduce CPU runs
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool = True  # applied on CUDA only
    checkpoint_every: int = 500  # steps; a checkpoint is always written at the end
    log_every: int = 10
    knn_every: int = 0  # online kNN monitor every K steps (0 = off); metric `knn_top1`
    knn_max_images: int = 2000
    out_dir: str | None = None  # None: outputs/<method>/<timestamp>, a new folder per run
    resume: bool = True  # continue from <out_dir>/checkpoint.pt (only a checkpoint of this run)
    progress: bool = True  # a bar on a TTY; redirected, a line every progress_every_s
    progress_every_s: float = 30.0


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # team mode: http://127.0.0.1:5000 (mlflow server)
    experiment: str = "pretrain"
    run_name: str | None = None
    run_id: str | None = None  # continue this MLflow run (requeued jobs, sweeps)
    parent_run_id: str | None = None  # nest under a sweep / study run
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ClusterConfig:
    name: str = "local"  # local | slurm
    executor: str = "inprocess"  # local only: inprocess | submitit
    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint, requeue
    max_requeues: int = 3
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    srun_args: list[str] = field(default_factory=list)
    log_dir: str = "slurm_logs"
    slurm_conf: str | None = None  # SLURM_CONF for the local test cluster


@dataclass
class EvalConfig:
    name: str = "knn"  # knn | linear | finetune | seg | det
    batch_size: int = 64
    k: int = 20
    knn_temperature: float = 0.07
    epochs: int = 100
    lr: float = 0.1
    weight_decay: float = 0.0
    finetune: bool = False  # seg: fine-tune the backbone instead of freezing it
    head: str = "linear"  # seg: linear (1x1 conv on C5) | fpn (over C2-C5)
    balanced: bool = True  # seg linear probe: classes weighted by inverse pixel frequency
    max_pixels: int | None = None  # seg linear probe: fit on at most this many pixels (None: all)
    steps: int = 1000  # det: fine-tuning iterations
    resolution: int | None = None  # None: the checkpoint's pretraining resolution
    max_images: int | None = None
    num_visualise: int = 4


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    masks: MasksConfig = field(default_factory=MasksConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: str | None = None  # eval / export: a checkpoint path or an MLflow run id
    export_path: str | None = None  # export: output file (default: next to the checkpoint)
    sweep: Any = None  # filled by the sweep/ group (schema in detlab.sweeps.schema)


GROUPS = {
    "data": DataConfig,
    "masks": MasksConfig,
    "backbone": BackboneConfig,
    "method": MethodConfig,
    "optim": OptimConfig,
    "cluster": ClusterConfig,
    "eval": EvalConfig,
}


def register_configs() -> None:
    """Register the schema so YAML files can name ``<group>_schema`` in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)
    from detlab.sweeps.schema import SweepConfig

    cs.store(group="sweep", name="sweep_schema", node=SweepConfig)

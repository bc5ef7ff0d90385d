"""Config schema: Hydra structured configs. Values live in YAML under ``platform/conf/``.

The full tree ``Config`` composes the science's configs (data, masks, backbone, aug and
each method's own dataclass, all in ``detlab.methods``) with the platform's (optimiser,
training, tracking, cluster, evaluation). Builders receive the typed sub-config they need
(``build_optimizer(cfg.optim, params)``), never the whole tree. Unknown keys are rejected
by OmegaConf's struct mode when the config is composed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from hydra.core.config_store import ConfigStore

from detlab.methods.config import (
    AugConfig,
    BackboneConfig,
    DataConfig,
    MasksConfig,
    MethodConfig,
    config_schemas,
)


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
    # Logging never waits on the store: records queue (this many in memory, then on disk) for
    # a background writer; at the run's end it waits this long for the store, then leaves
    # the rest in $DETLAB_HOME/spill/ for `detlab jobs` (or the run's next start) to write.
    queue_size: int = 10_000
    flush_timeout_s: float = 60.0


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
    sweep: Any = None  # the sweep/ group, typed by detlab.sweeps.schema (an entry point)


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
    """Register the schema so YAML files can name ``<group>_schema`` in their defaults, and
    each method's own dataclass as ``method/<name>_schema`` (its YAML names it). A group
    owned by a layer above is typed by the dataclass its ``detlab.config_groups`` entry
    point names (pyproject.toml: ``sweep = "detlab.sweeps.schema:SweepConfig"``), stored as
    ``<group>/<group>_schema``: the platform never imports that layer."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schema in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=schema)
    for name, schema in config_schemas().items():
        cs.store(group="method", name=name, node=schema)
    for ep in entry_points(group="detlab.config_groups"):
        cs.store(group=ep.name, name=f"{ep.name}_schema", node=ep.load())

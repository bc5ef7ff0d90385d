"""The training loop: one readable function, ``train(cfg)``.

It behaves the same on a laptop CPU, under torchrun, or inside a SLURM job: where it runs is
decided by the launcher, which only sets torch's standard environment variables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from detlab.methods.data import ResumableSampler, build_pretrain_dataset
from detlab.methods.registry import build_method
from detlab.platform import checkpoint as ckpt
from detlab.platform import distributed as distr
from detlab.platform.compose import compose, flatten, to_yaml
from detlab.platform.config import AugConfig, DataConfig, MasksConfig, TrainConfig
from detlab.platform.monitor import KnnMonitor, fingerprints
from detlab.platform.optim import build_optimizer, build_scheduler
from detlab.platform.progress import Progress
from detlab.platform.provenance import git_commit
from detlab.platform.states import RunStatus, TrainStatus
from detlab.platform.tracking import RunLogger


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: the run stops, nothing after the last checkpoint is kept."""


@dataclass
class TrainResult:
    status: TrainStatus  # completed | stopped (preempted, checkpointed) | halted (on_metrics)
    step: int
    run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None


def seed_everything(seed: int, deterministic: bool = True, threads: int = 0) -> None:
    """Seeds, and what else moves results in one environment: nondeterministic kernels
    (cuDNN autotuning, atomics in CUDA reductions) and, on the CPU, the intra-op thread
    count (reductions split differently)."""
    import os
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_out_dir(cfg: DictConfig) -> DictConfig:
    """``train.out_dir`` unset: a new folder per run, ``outputs/<method>/<YYYYmmdd-HHMMSS>``
    (launchers call this before submitting, so a requeued job keeps its folder)."""
    if cfg.train.out_dir is not None:
        return cfg
    base = Path("outputs") / cfg.method.name / time.strftime("%Y%m%d-%H%M%S")
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return OmegaConf.merge(cfg, {"train": {"out_dir": str(out)}})


def resolve_run_name(cfg: DictConfig) -> DictConfig:
    """``tracking.run_name`` unset: ``<method>-<masks>-r<resolution>-s<seed>`` (MLflow would
    draw a random name such as "overjoyed-slug-911")."""
    if cfg.tracking.run_name is not None or cfg.tracking.run_id:
        return cfg
    name = f"{cfg.method.name}-{cfg.masks.name}-r{cfg.aug.resolution}-s{cfg.train.seed}"
    return OmegaConf.merge(cfg, {"tracking": {"run_name": name}})


def build_loader(data: DataConfig, masks: MasksConfig, aug: AugConfig, tc: TrainConfig,
                 num_boxes: int, input_kind: str, info: distr.DistInfo):  # fmt: skip
    """Dataset + resumable sampler + DataLoader for this rank's share of each global batch."""

    if aug.views not in ("auto", "cpu", "device"):
        raise ValueError(f"aug.views={aug.views!r} is not one of: auto, cpu, device")
    device_side = aug.views == "device" or (aug.views == "auto" and info.device.type == "cuda")
    dataset = build_pretrain_dataset(data, masks, aug, input_kind, tc.seed, num_boxes=num_boxes,
                                     device_side=device_side)  # fmt: skip
    if tc.batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} is not divisible by the {info.world_size} ranks"
        )
    if len(dataset) < tc.batch_size:
        raise ValueError(
            f"train.batch_size={tc.batch_size} exceeds the {len(dataset)} images of "
            f"{data.root} ({data.train_split})"
        )
    sampler = ResumableSampler(len(dataset), tc.batch_size, tc.seed, info.rank, info.world_size)
    loader = DataLoader(
        dataset,
        batch_size=tc.batch_size // info.world_size,
        sampler=sampler,
        collate_fn=dataset.collate,
        num_workers=data.num_workers,
        pin_memory=info.device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )
    return dataset, sampler, loader


def batches(loader, sampler, dataset, start_step: int) -> Iterator[dict]:
    """Endless stream of batches starting at global step ``start_step`` (exact data order)."""
    steps_per_epoch = len(loader)
    epoch, offset = divmod(start_step, steps_per_epoch)
    while True:
        sampler.set_epoch(epoch)
        sampler.set_start_batch(offset)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        yield from loader
        epoch, offset = epoch + 1, 0


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if channels_last and v.ndim == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


def autocast_for(precision: str, device: torch.device):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise ValueError(f"train.precision={precision!r} is not one of: auto, fp32, bf16")


class FiniteWatch:
    """Remembers the first step whose loss was not finite, without a host sync; ``check``
    (a sync) raises NonFiniteLossError for it on every rank."""

    def __init__(self, method: str, ckpt_path: Path, info: distr.DistInfo):
        self.method, self.ckpt_path, self.info = method, ckpt_path, info
        self.step = torch.full((), -1, dtype=torch.long, device=info.device)
        self.loss = torch.zeros((), device=info.device)

    def record(self, loss: Tensor, step: int) -> None:
        first = (self.step < 0) & ~torch.isfinite(loss.detach()).all()
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)

    def check(self, lr: float) -> None:
        bad = int(self.step)
        if distr.any_true(bad >= 0, self.info):
            where = (
                f"{float(self.loss)} at step {bad}" if bad >= 0 else "not finite on another rank"
            )
            raise NonFiniteLossError(
                f"loss is {where} (method={self.method}, lr={lr:.3g}): lower optim.lr, enable "
                f"optim.grad_clip, or check the data; the last good checkpoint is kept at "
                f"{self.ckpt_path}"
            )


def wrap_model(method: nn.Module, sync_bn: bool, channels_last: bool, info):
    """(method, the module to call: DDP-wrapped when distributed, channels_last in use):
    SyncBatchNorm across ranks, channels_last on CUDA only (torch's CPU kernels gain nothing
    from it, and torch 2.14's CPU conv backward segfaults on some channels_last shapes)."""
    if info.distributed and sync_bn:
        method = distr.convert_sync_batchnorm(method, info.device)
    channels_last = channels_last and info.device.type == "cuda"
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if not info.distributed:
        return method, method, channels_last
    ids = [info.device] if info.device.type == "cuda" else None
    return method, DistributedDataParallel(method, device_ids=ids), channels_last


def start_tracking(cfg: DictConfig, info, tags: dict, first: bool) -> RunLogger:
    """The run's MLflow logger (rank 0 writes): params, tags, and on a first start the
    config. eval.* holds the probes' settings (logged by whoever runs a probe); pretraining
    reads only the online kNN monitor's two; a local run logs no SLURM settings."""
    logger = RunLogger(cfg.tracking, active=info.is_main, owner=True)
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("eval.")}
    if cfg.cluster.name == "local":
        params = {k: v for k, v in params.items() if not k.startswith("cluster.")}
        params["cluster.name"] = "local"
    logger.log_params(params | {"monitor.knn_k": cfg.eval.k,
                                "monitor.knn_temperature": cfg.eval.knn_temperature})  # fmt: skip
    logger.set_tags({"git_commit": git_commit(), "method": cfg.method.name,
                     "world_size": info.world_size, **tags})  # fmt: skip
    if first:
        logger.log_text(to_yaml(cfg), "config.yaml")
    return logger


def ask(on_metrics, step: int, knn: dict[str, float], info) -> str | None:
    """Rank 0 asks ``on_metrics``; every rank follows: its reason to halt, or its error."""
    halt, error = None, None
    if on_metrics and info.is_main:
        try:
            halt = on_metrics(step, knn)
        except Exception as exc:
            error = exc
    if distr.any_true(error is not None, info):
        raise error or RuntimeError("stopped: rank 0's on_metrics raised")
    if distr.any_true(bool(halt), info):
        return halt or "halted by rank 0's on_metrics"
    return None


def train(
    cfg: DictConfig,
    *,
    stop_requested: Callable[[], bool] | None = None,
    on_metrics: Callable[[int, dict[str, float]], str | None] | None = None,
) -> TrainResult:
    """Run ``cfg`` to ``train.steps`` (or resume it). ``stop_requested()``: checkpoint and
    return "stopped" (preemption). ``on_metrics(step, monitor_metrics)`` (rank 0, after each
    online kNN): a non-empty string ends the run early as "halted", that string being the
    reason (a sweep's pruning); an exception it raises fails the run on every rank."""

    cfg = resolve_run_name(resolve_out_dir(cfg))
    tc = cfg.train
    # ---- set-up: processes, device, seeds -------------------------------------------
    info = distr.init_from_env(tc.device)
    seed_everything(tc.seed, tc.deterministic, tc.threads)
    out_dir = Path(tc.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"

    # ---- model, data, optimiser, schedule (all validated before any step runs) -------
    method = build_method(cfg.method, cfg.backbone, cfg.aug).to(info.device)
    dataset, sampler, loader = build_loader(cfg.data, cfg.masks, cfg.aug, tc,
                                            method.num_boxes, method.input_kind, info)  # fmt: skip
    method, model, channels_last = wrap_model(method, cfg.backbone.sync_bn, tc.channels_last, info)
    optimizer = build_optimizer(cfg.optim, method, tc.batch_size)
    scheduler = build_scheduler(cfg.optim, optimizer, tc.steps)
    amp = autocast_for(tc.precision, info.device)

    # ---- resume: model, optimiser, schedule, EMA targets, step, RNG, data order ------
    checkpoint = ckpt.Checkpointer(ckpt_path, cfg, method, optimizer, scheduler)
    start_step, requeues = 0, 0
    state = checkpoint.restore() if tc.resume else None
    if state is not None:
        start_step, requeues = state["step"], state.get("requeues", 0) + 1
        if state.get("run_id") and not cfg.tracking.run_id:
            cfg = checkpoint.cfg = OmegaConf.merge(cfg, {"tracking": {"run_id": state["run_id"]}})

    # ---- tracking (rank 0 only) ------------------------------------------------------
    tags = {"detlab.checkpoint": str(ckpt_path.resolve()), **fingerprints(dataset),
            **({"detlab.requeues": requeues} if requeues else {})}  # fmt: skip
    logger = start_tracking(cfg, info, tags, first=start_step == 0)
    monitor = None
    if tc.knn_every > 0:
        monitor = KnnMonitor(cfg.data, cfg.eval, cfg.aug.resolution,
                             max(tc.batch_size, 64), tc.knn_max_images, info)  # fmt: skip

    # On a GPU the host reads device values (the non-finite check; in multi-process runs the
    # stop vote) only every log_every steps and before a checkpoint, so that steps never wait
    # on it; on the CPU every step, where it costs nothing.
    finite = FiniteWatch(cfg.method.name, ckpt_path, info)

    def host_check(step: int) -> bool:
        return info.device.type != "cuda" or (step + 1) % tc.log_every == 0 or step + 1 == tc.steps

    def save(step: int) -> str | None:
        finite.check(scheduler.get_last_lr()[0])  # never save what a non-finite loss made
        return checkpoint.save(step, logger.run_id, requeues) if info.is_main else None

    # ---- the loop ----------------------------------------------------------------------
    metrics: dict[str, float] = {}
    stream = batches(loader, sampler, dataset, start_step)
    bar = Progress(tc.steps, cfg.tracking.run_name or cfg.method.name, initial=start_step,
                   enabled=tc.progress and info.is_main, every_s=tc.progress_every_s,
                   rate_unit=("img", tc.batch_size))  # fmt: skip
    step, t_last, wait_s, imgs = start_step, time.perf_counter(), 0.0, 0
    halted = None  # the reason on_metrics gave to end the run early
    try:
        while step < tc.steps:
            # data
            t0 = time.perf_counter()
            batch = dataset.views(to_device(next(stream), info.device, False))  # made here?
            batch = to_device(batch, info.device, channels_last)
            batch["step"], batch["seed"] = step, tc.seed
            wait_s += time.perf_counter() - t0
            # forward / backward / update
            model.train()
            with amp:
                out = model(batch)
            loss = out["loss"]
            finite.record(loss, step)
            if host_check(step):
                finite.check(scheduler.get_last_lr()[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            logs = method.update_target(step, tc.steps)
            step += 1
            imgs += tc.batch_size
            bar.update(1)
            # logging
            if step % tc.log_every == 0 or step == tc.steps:
                dt = time.perf_counter() - t_last
                metrics = {
                    "loss": distr.mean_scalar(loss.item(), info),
                    "lr": scheduler.get_last_lr()[0],
                    **{k: float(v) for k, v in logs.items()},
                    **{k: float(v) for k, v in out.items() if k != "loss" and v.ndim == 0},
                    "images_per_s": imgs / max(dt, 1e-9),
                    "data_wait_frac": wait_s / max(dt, 1e-9),
                }
                logger.log_metrics(metrics, step)
                bar.set(loss=metrics["loss"])
                t_last, wait_s, imgs = time.perf_counter(), 0.0, 0
            # online kNN monitor (used for pruning by sweeps)
            if monitor and (step % tc.knn_every == 0 or step == tc.steps):
                knn = monitor(method.backbone)
                metrics.update(knn)
                logger.log_metrics(knn, step)
                halted = ask(on_metrics, step, knn, info)
                if halted:
                    break
            # checkpoints, and a clean stop when the launcher asks (preemption, timeout)
            stop = (stop_requested is not None
                    and (not info.distributed or host_check(step - 1))
                    and distr.any_true(stop_requested(), info))  # fmt: skip
            if step % tc.checkpoint_every == 0 or step == tc.steps or stop:
                path = save(step)
                distr.barrier(info)
            if stop and step < tc.steps:
                logger.pause()
                return TrainResult(TrainStatus.STOPPED, step, logger.run_id, metrics, path)
    except BaseException as exc:
        bar.close()
        status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
        logger.finish(status, reason=f"{type(exc).__name__}: {exc}")
        distr.cleanup(info)
        raise
    bar.close()
    logger.finish(RunStatus.KILLED if halted else RunStatus.FINISHED, reason=halted)
    distr.cleanup(info)
    if halted:
        return TrainResult(TrainStatus.HALTED, step, logger.run_id, metrics, None)
    return TrainResult(TrainStatus.COMPLETED, step, logger.run_id, metrics, str(ckpt_path))


def main(argv: list[str] | None = None) -> int:
    """``python -m detlab.platform.train [overrides]``: one process of a run, e.g. under
    ``torchrun --nproc_per_node=N`` (which sets RANK / WORLD_SIZE / MASTER_ADDR ...)."""
    import sys

    result = train(compose(sys.argv[1:] if argv is None else argv))
    return 0 if result.status == TrainStatus.COMPLETED else 1


if __name__ == "__main__":
    raise SystemExit(main())

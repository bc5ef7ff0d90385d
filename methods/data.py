"""Pretraining and evaluation datasets, and the deterministic, resumable sampler.

- ``build_pretrain_dataset(data, masks, aug, input_kind, seed)``: a map-style Dataset whose
  ``collate`` (the loader's collate_fn) gives the contract's batches:
  input_kind "mask": ``view1/view2 [B, 3, R, R] float, mask1/mask2 [B, R, R] int64, index``
  (items hold uint8 views and their colour parameters; ``collate`` colours the batch);
  input_kind "boxes" (SoCo): ``v1, v2 [3, R, R], v3 [3, R/2, R/2], boxes1/2/3 [K, 4],
  box_valid [K], index``. Mask sources: a MaskStore at ``masks.path`` (checked against the
  dataset's fingerprint when the dataset is opened), ``global`` (all zeros), ``grid``
  computed on the fly when ``masks.path`` is None, ``none`` (zeros: image-level methods).
- Determinism: every item's randomness is a pure function of (seed, epoch, index): each
  ``__getitem__`` runs under ``torch.random.fork_rng`` seeded from those three, so a worker
  process, a different worker count or a resumed run produce bit-identical views. Call
  ``set_epoch`` before iterating an epoch (with ``persistent_workers=False``, workers pick
  it up when the next epoch's iterator starts them).
- ``ResumableSampler``: an epoch permutation drawn from (seed, epoch); global batch t is
  ``perm[t*B:(t+1)*B]`` and rank r takes its r-th contiguous slice of B/world indices, so
  any number of ranks sees exactly the global batches of a single process.
- ``build_eval_dataset(data, split, resolution)``: (normalised centre crop, label) pairs for
  kNN / linear probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision.transforms.v2 import functional as F

from detlab.methods.augment import (
    BICUBIC,
    as_chw_uint8,
    build_pair_transform,
    build_soco_transform,
    to_float,
)
from detlab.methods.config import AugConfig, DataConfig, MasksConfig
from detlab.methods.photometric import IMAGENET_MEAN, IMAGENET_STD

INPUT_KINDS = ("mask", "boxes")
DEFAULT_GRID = 4  # on-the-fly grid masks: n x n cells (MasksConfig.grid_size)


class PretrainDataError(ValueError):
    """The dataset / mask configuration cannot produce pretraining batches (names the key)."""


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from non-negative ints (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(v) % 2**64 for v in values])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentations: a pure function of (seed, epoch, index)."""
    return _mix(seed, 0xA11C, epoch, index)


def grid_mask(height: int, width: int, n: int) -> np.ndarray:
    """[H, W] uint8 ids of an n x n grid (row-major), the DetCon spatial heuristic."""
    if not 1 <= n <= 16:
        raise PretrainDataError(f"masks.grid_size={n} must be in [1, 16] (ids are uint8)")
    rows = (np.arange(height) * n // height).astype(np.uint8)
    cols = (np.arange(width) * n // width).astype(np.uint8)
    return rows[:, None] * np.uint8(n) + cols[None, :]


DECODED_CACHE_BYTES = 1 << 30  # per dataset (and per DataLoader worker)


class PretrainDataset(Dataset):
    """Images + masks (or proposals) -> augmented views; see the module docstring.

    Attributes: ``images`` (the ImageDataset), ``store`` (the MaskStore or None),
    ``mask_source`` (store | zeros | grid), ``input_kind``, ``seed``, ``epoch``.
    """

    def __init__(
        self,
        images,
        store,
        mask_source: str,
        transform,
        input_kind: str,
        seed: int,
        grid_size: int = DEFAULT_GRID,
        store_path: str | None = None,
    ):
        self.images, self.store, self.mask_source = images, store, mask_source
        self.transform, self.input_kind = transform, input_kind
        self.seed, self.epoch, self.grid_size = int(seed), 0, int(grid_size)
        self.store_path = store_path
        self._decoded: dict[int, tuple] = {}  # index -> (image, mask or boxes), decoded once
        self._decoded_bytes = 0
        self._device_views = None

    def _load(self, index: int) -> tuple:
        """The decoded image and its mask (or boxes), kept in memory up to
        ``DECODED_CACHE_BYTES`` (small datasets: every epoch after the first skips PNG
        decoding; large ones fall through to the files)."""
        hit = self._decoded.get(index)
        if hit is not None:
            return hit
        image = self.images.load_image_chw(index)
        h, w = image.shape[-2:]
        extra = self.store.boxes(index) if self.input_kind == "boxes" else self._mask(index, h, w)
        size = image.numel() + (extra.nbytes if isinstance(extra, np.ndarray) else 0)
        if self._decoded_bytes + size <= DECODED_CACHE_BYTES:
            self._decoded[index] = (image, extra)
            self._decoded_bytes += size
        return image, extra

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def _mask(self, index: int, height: int, width: int) -> np.ndarray | None:
        if self.mask_source == "zeros":
            return None
        if self.mask_source == "grid":
            return grid_mask(height, width, self.grid_size)
        mask = self.store.mask(index)
        if mask.shape != (height, width):
            raise PretrainDataError(
                f"mask {index} of {self.store_path} is {mask.shape}, but image "
                f"{self.images.records[index].path} is {(height, width)}: regenerate the masks"
            )
        return mask

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        index = int(index)
        # One intra-op thread, as in DataLoader workers: some reductions (e.g. the contrast
        # jitter's mean) round differently with more threads, and views must not depend on
        # num_workers. The global RNG is forked, so the caller's stream is untouched.
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator only: torch.manual_seed would also queue seeds for every
                # accelerator backend, ~2 ms of Python per call
                torch.random.default_generator.manual_seed(item_seed(self.seed, self.epoch, index))
                image, extra = self._load(index)
                out = self.transform(image, extra)
        finally:
            if threads != 1:
                torch.set_num_threads(threads)
        out["index"] = index
        return out

    @property
    def device_side(self) -> bool:
        """Whether the training device makes the views (``aug.views``; see ``views``)."""
        return bool(getattr(self.transform, "device_side", False))

    def collate(self, samples: list[dict]) -> dict[str, Tensor]:
        """The loader's collate_fn: stack the samples, then colour the views as one batch
        (each with its own parameters, drawn in ``__getitem__``); device-side, stack the
        decoded images (padded) and their parameters."""
        if self.device_side:
            from detlab.methods.device_views import pad_collate

            return pad_collate(samples)
        batch = default_collate(samples)
        finish = getattr(self.transform, "finish", None)
        return finish(batch) if finish is not None else batch

    def views(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """A collated batch, moved to the training device -> the method's views: made here,
        on that device, when the workers shipped images and parameters; else as it is."""
        if not self.device_side:
            return batch
        if self._device_views is None:
            from detlab.methods.device_views import DeviceViews

            self._device_views = DeviceViews(self.transform)
        return self._device_views(batch)


def mask_build_command(name: str, data_root, out) -> str:
    """The command that builds mask set ``name`` of the dataset at ``data_root`` into
    ``out`` (what the set's DVC stage runs)."""
    return f"python -m detlab.pipelines.masks.run --method {name} --data {data_root} --out {out}"


def _open_store(masks: MasksConfig, images, data: DataConfig):
    """MaskStore at masks.path, checked against the dataset (clear error up front)."""
    from detlab.methods.datasets import open_dataset
    from detlab.methods.datasets.mask_store import MaskStore

    path = Path(masks.path)
    if not path.exists():
        raise PretrainDataError(
            f"masks.path={masks.path} (mask set {masks.name!r}) does not exist: build it with "
            f"`{mask_build_command(masks.name, data.root, masks.path)}` (what its DVC stage "
            f"runs) or point masks.path at a mask store"
        )
    reference = images
    if data.max_images is not None:  # fingerprints describe the whole split
        reference = open_dataset(data.root, data.train_split, format=data.format, validate=False)
    store = MaskStore.open(path, dataset=reference)
    if len(store) < len(images):
        raise PretrainDataError(
            f"mask store {path} holds {len(store)} entries, {data.root} ({data.train_split}) "
            f"has {len(images)} images"
        )
    return store


def build_pretrain_dataset(
    data: DataConfig,
    masks: MasksConfig,
    aug: AugConfig,
    input_kind: str,
    seed: int,
    num_boxes: int = 4,
    device_side: bool = False,
) -> PretrainDataset:
    """Open the training split and its masks / proposals; return the augmenting Dataset.
    ``device_side``: workers ship decoded images and drawn parameters, ``views`` makes the
    views on the training device (``detlab.methods.device_views``).

    Raises PretrainDataError (or the readers' DatasetError / MaskStoreError) before any
    compute when the dataset, the mask store or their pairing is wrong.
    """
    from detlab.methods.datasets import open_dataset
    from detlab.methods.datasets.checks import verify_decodes

    if input_kind not in INPUT_KINDS:
        raise PretrainDataError(f"input_kind={input_kind!r} is not one of {INPUT_KINDS}")
    images = open_dataset(
        data.root, data.train_split, format=data.format, max_images=data.max_images
    )
    if len(images) == 0:
        raise PretrainDataError(f"data.root={data.root} ({data.train_split}) has no images")
    verify_decodes(images)  # a truncated image fails here, not at step N of the run
    kind = masks.kind
    if input_kind == "boxes":
        if kind != "boxes" or masks.path is None:
            raise PretrainDataError(
                f"SoCo needs box proposals: masks={masks.name} has kind={kind!r}, "
                f"path={masks.path}; use masks=ss (kind boxes)"
            )
        store = _open_store(masks, images, data)
        if store.kind != "boxes":
            raise PretrainDataError(f"mask store {masks.path} has kind {store.kind!r}, not boxes")
        transform = build_soco_transform(aug, num_boxes, device_side)
        return PretrainDataset(
            images, store, "store", transform, input_kind, seed, store_path=str(masks.path)
        )

    transform = build_pair_transform(aug, batched=True, device_side=device_side)
    grid = int(masks.grid_size)
    if kind == "boxes":
        raise PretrainDataError(
            f"masks={masks.name} holds box proposals (kind boxes), but this method needs "
            f"per-pixel masks: choose masks=fh|grid|slic|gt|global"
        )
    if kind == "none" or masks.name in ("global", "none"):
        return PretrainDataset(images, None, "zeros", transform, input_kind, seed)
    if kind != "mask":
        raise PretrainDataError(f"masks.kind={kind!r} is not one of mask, boxes, none")
    if masks.path is None:
        if masks.name != "grid":
            raise PretrainDataError(
                f"masks={masks.name} has no path; only grid masks are computed on the fly"
            )
        return PretrainDataset(images, None, "grid", transform, input_kind, seed, grid)
    store = _open_store(masks, images, data)
    if store.kind != "mask":
        raise PretrainDataError(f"mask store {masks.path} has kind {store.kind!r}, not mask")
    return PretrainDataset(
        images, store, "store", transform, input_kind, seed, store_path=str(masks.path)
    )


# ---------------------------------------------------------------------------- sampler


class ResumableSampler(Sampler[int]):
    """Indices for this rank; epoch permutations from (seed, epoch); resumable mid-epoch.

    Global batch t of an epoch is ``perm[t*B:(t+1)*B]`` (B = ``batch_size``, the global
    batch); rank r yields its contiguous slice ``[r*B/world, (r+1)*B/world)`` of each, so
    the DataLoader's per-rank batch size must be B/world. ``drop_last=False`` pads the last
    global batch with the permutation's first indices. ``len()`` is the full per-rank epoch;
    iteration starts at ``start_batch`` (``set_start_batch``: the training loop derives it
    from its step count, so a resumed run continues the exact order) and, once an epoch has
    been fully yielded, the next iteration starts at batch 0.
    """

    def __init__(
        self,
        dataset_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ):
        if batch_size < 1 or world_size < 1 or batch_size % world_size:
            raise PretrainDataError(
                f"train.batch_size={batch_size} must be a positive multiple of the "
                f"{world_size} ranks"
            )
        if not 0 <= rank < world_size:
            raise PretrainDataError(f"rank={rank} is outside world_size={world_size}")
        if dataset_len < (batch_size if drop_last else 1):
            raise PretrainDataError(
                f"{dataset_len} images cannot fill one global batch of {batch_size}"
            )
        self.n, self.batch_size, self.seed = int(dataset_len), int(batch_size), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), drop_last
        self.per_rank = self.batch_size // self.world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.per_rank

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def set_start_batch(self, batch: int) -> None:
        if not 0 <= batch <= self.batches_per_epoch:
            raise PretrainDataError(
                f"start batch {batch} outside the epoch's {self.batches_per_epoch} batches"
            )
        self.start_batch = int(batch)

    def permutation(self, epoch: int) -> Tensor:
        """The epoch's global order (padded to whole global batches when not drop_last)."""
        g = torch.Generator().manual_seed(_mix(self.seed, 0x5A3C, epoch))
        perm = torch.randperm(self.n, generator=g)
        total = self.batches_per_epoch * self.batch_size
        if total > self.n:
            perm = torch.cat([perm, perm.repeat(-(-total // self.n))])[:total]
        return perm[:total]

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation(self.epoch).view(self.batches_per_epoch, self.batch_size)
        lo = self.rank * self.per_rank
        yield from perm[self.start_batch :, lo : lo + self.per_rank].reshape(-1).tolist()
        self.start_batch = 0  # a finished epoch: the next pass starts from its beginning


# ------------------------------------------------------------------------- evaluation


class EvalDataset(Dataset):
    """(image [3, R, R] float normalised, label int) with resize + centre crop (-1: no label)."""

    def __init__(self, images, resolution: int):
        self.images, self.resolution = images, int(resolution)
        self.resize = round(self.resolution * 256 / 224)  # the usual 256 -> 224 ratio

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = as_chw_uint8(self.images.load_image(int(index)))
        x = F.resize(image, [self.resize], interpolation=BICUBIC, antialias=True)
        x = F.center_crop(x, [self.resolution, self.resolution])
        x = F.normalize(to_float(x), mean=IMAGENET_MEAN, std=IMAGENET_STD)
        label = self.images.records[int(index)].label
        return x, -1 if label is None else int(label)


def build_eval_dataset(data: DataConfig, split: str, resolution: int) -> EvalDataset:
    """The ``split`` of ``data`` as (normalised centre crop, image-level label) pairs."""
    from detlab.methods.datasets import open_dataset

    images = open_dataset(data.root, split, format=data.format, max_images=data.max_images)
    return EvalDataset(images, resolution)

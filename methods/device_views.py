"""The views made on the training device: loader workers decode and draw, the device does
the pixel work for the whole batch.

With ``aug.views=device`` (the default on CUDA) a loader worker only decodes an image (and
reads its mask or proposals) and draws every random parameter of its views, in the same
order and from the same per-sample seed as the CPU path (``detlab.methods.augment``), so
both paths see the same parameters. The batch ships as uint8 (images padded to the batch's
largest, ``pad_collate``) with those parameters; ``DeviceViews`` then makes the views on
the device as batched tensor ops: resized crops for image (antialiased bicubic) and mask
(nearest), flips (``detlab.methods.resample``), then colour jitter, grayscale, blur and
solarize with each sample's own parameters (``detlab.methods.photometric``). SoCo's boxes
are coordinates drawn with the parameters; its V3 is V2 resized on the device.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import default_collate, get_worker_info

from detlab.methods.augment import PairTransform, SocoTransform
from detlab.methods.resample import resized_crop, resized_crop_nearest

PADDED = ("image", "mask")  # per-sample sizes differ: padded to the batch's largest


def _empty(shape: tuple[int, ...], dtype: torch.dtype, fmt: torch.memory_format | None) -> Tensor:
    """An uninitialised batch; in a loader worker, in shared memory (as default_collate
    does), so that sending it to the training process copies nothing."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype, memory_format=fmt or torch.contiguous_format)
    b, c, h, w = shape if len(shape) == 4 else (*shape, 1)[:4]
    numel = b * c * h * w
    strides = (c * h * w, 1, w * c, c) if fmt is torch.channels_last else None
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    flat = torch.empty(0, dtype=dtype).set_(storage, 0, (numel,))
    return flat.as_strided(shape, strides) if strides else flat.view(shape)


def pad_collate(samples: list[dict]) -> dict[str, Tensor]:
    """Stack samples whose ``image`` [3, H, W] (and ``mask`` [H, W]) differ in size: each
    is zero-padded at the bottom and right to the batch's largest (the windows drawn for
    it stay inside its own pixels)."""
    out = {}
    for key in PADDED:
        if key not in samples[0]:
            continue
        items = [s.pop(key) for s in samples]
        h = max(t.shape[-2] for t in items)
        w = max(t.shape[-1] for t in items)
        first = items[0]
        # decoders give [3, H, W] views of HWC memory: keep that layout (a copy, not a
        # transpose; ~10x cheaper per image); the device reads either
        hwc = first.dim() == 3 and first[None].is_contiguous(memory_format=torch.channels_last)
        shape = (len(items), *first.shape[:-2], h, w)
        batch = _empty(shape, first.dtype, torch.channels_last if hwc else None)
        for dst, t in zip(batch, items, strict=True):  # one copy per sample, no pad + stack
            th, tw = t.shape[-2:]
            dst[..., :th, :tw] = t
            if th < h or tw < w:
                dst[..., th:, :] = 0
                dst[..., :th, tw:] = 0
        out[key] = batch
    return {**default_collate(samples), **out}


class DeviceViews:
    """A worker-side transform's views, made on the batch's device (see the module doc)."""

    def __init__(self, transform: PairTransform | SocoTransform, sync_free: bool | None = None):
        if not transform.device_side:
            raise ValueError("DeviceViews needs a transform built with device_side=True")
        self.transform, self.sync_free = transform, sync_free  # None: off the CPU

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if isinstance(self.transform, SocoTransform):
            return self._soco(batch)
        return self._pair(batch)

    def _colour(self, view: int, x: Tensor, params: Tensor) -> Tensor:
        """[B, 3, R, R] in 0..255 -> normalised, each sample its own colour parameters."""
        return self.transform.photometric[view].apply(x.div_(255.0), params, self.sync_free)

    def _pair(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        r = self.transform.resolution
        image, mask = batch.pop("image"), batch.pop("mask", None)  # [B, 3, H, W], [B, H, W]
        for v in (1, 2):
            g = batch.pop(f"geom{v}")  # [B, 5]: top, left, height, width, flip
            windows, flip = g[:, :4], g[:, 4] > 0
            batch[f"view{v}"] = self._colour(
                v - 1, resized_crop(image, windows, r, flip), batch.pop(f"photo{v}")
            )
            if mask is None:  # a global mask: every pixel in region 0
                m = torch.zeros(image.shape[0], r, r, dtype=torch.int64, device=image.device)
            else:
                m = resized_crop_nearest(mask, windows, r, flip).to(torch.int64)
            batch[f"mask{v}"] = m
        return batch

    def _soco(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        r, r3 = self.transform.resolution, self.transform.resolution // 2
        image = batch.pop("image")  # [B, 3, H, W]
        b = image.shape[0]
        g = batch.pop("geom2")  # V2's window and flip
        whole = torch.zeros(b, 4, dtype=g.dtype, device=g.device)  # V1: each whole image
        whole[:, 2:] = batch.pop("size")  # [B, 2] its own (h, w) inside the padded batch
        v2 = resized_crop(image, g[:, :4], r, g[:, 4] > 0)
        full = torch.tensor([0, 0, r, r], device=g.device).expand(b, 4)
        v3 = resized_crop(v2, full, r3)  # V2 resized, as the CPU path does
        v1 = resized_crop(image, whole, r, batch.pop("flip1").bool())
        for v, x in enumerate((v1, v2, v3)):
            batch[f"v{v + 1}"] = self._colour(v, x, batch.pop(f"photo{v + 1}"))
        return batch

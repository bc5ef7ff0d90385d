"""Paired augmentations: one geometric draw hits the image and its mask or boxes.

Built on ``torchvision.transforms.v2`` and ``tv_tensors``: the crop window and flip are
sampled once and applied with the v2 functional ops to an ``Image`` together with a ``Mask``
(nearest) or ``BoundingBoxes``, so image, mask and boxes can never disagree.

- ``build_pair_transform(aug)``: BYOL's asymmetric two views (DetCon, BYOL, SimCLR, MoCo,
  VICReg): RandomResizedCrop(scale, ratio) to ``resolution`` (image bicubic, mask nearest),
  horizontal flip, then photometric on the image only: colour jitter (0.4, 0.4, 0.2, 0.1)
  x strength in random order with p=0.8, grayscale p=0.2, Gaussian blur p=(1.0, 0.1),
  solarize p=(0.0, 0.2), ImageNet normalisation.
- ``build_soco_transform(aug, num_boxes)``: SoCo's views. V1 = the whole image resized to
  ``resolution``; V2 = RandomResizedCrop(soco_crop_scale); V3 = V2 resized to
  ``resolution // 2``. Boxes are clipped to the V2 window (so every view sees the same
  content), dropped when smaller than ``resolution / 16`` px in V2, K are sampled among the
  survivors (padded with ``valid=False``), and V1's boxes are jittered (p=0.5, +-0.1 w/h).

Speed: geometry runs on uint8 (torchvision's native uint8 bicubic resize); the photometric
ops (``detlab.methods.photometric``) run in float, per image or, with ``batched=True`` (the
pretraining loader), once per batch in ``PairTransform.finish`` with each sample's own
parameters drawn here.

Randomness comes from torch's global RNG (as torchvision's); ``detlab.methods.data`` seeds
it per sample from (seed, epoch, index), which makes every view reproducible.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detlab.methods.config import AugConfig
from detlab.methods.photometric import Photometric

BICUBIC = v2.InterpolationMode.BICUBIC
MIN_BOX_FRAC = 1 / 16  # SoCo: a box must keep >= resolution/16 px per side inside V2


class AugmentError(ValueError):
    """Bad augmentation settings or inputs (names the offending aug.* key or shape)."""


# ----------------------------------------------------------------------------- helpers


def as_chw_uint8(image: np.ndarray | Tensor) -> Tensor:
    """[H, W, 3] uint8 array (as decoded) or [3, H, W] uint8 tensor -> [3, H, W] uint8 view.

    An HWC array becomes a channels-last CHW view without a copy, the layout torchvision's
    native uint8 resize kernels prefer.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise AugmentError(f"image must be [H, W, 3] uint8, got {image.shape} {image.dtype}")
        if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on those
            image = image.copy()
        return torch.from_numpy(image).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise AugmentError(f"image must be [3, H, W] uint8, got {tuple(image.shape)} {image.dtype}")
    return image


def _check_pair(name: str, value, lo: float = 0.0, hi: float = 1.0) -> tuple[float, float]:
    if len(value) != 2 or not (lo <= value[0] <= value[1] <= hi):
        raise AugmentError(f"aug.{name}={list(value)} must be [a, b] with {lo} <= a <= b <= {hi}")
    return float(value[0]), float(value[1])


def _check_p(name: str, value) -> tuple[float, float]:
    if len(value) != 2 or not all(0.0 <= v <= 1.0 for v in value):
        raise AugmentError(f"aug.{name}={list(value)} must be two probabilities (view 1, view 2)")
    return float(value[0]), float(value[1])


def build_photometric(aug: AugConfig, view: int, resolution: int) -> Photometric:
    """BYOL's colour pipeline for view 0 or 1 (see ``detlab.methods.photometric``).

    Blur sigma range (0.1, 2.0) is BYOL's at 224 px and is scaled by resolution/224 like the
    kernel, so the blur is the same relative to the image content at every resolution.
    """
    blur_p, sol_p = _check_p("blur_p", aug.blur_p), _check_p("solarize_p", aug.solarize_p)
    return Photometric(
        strength=aug.jitter_strength,
        jitter_p=aug.jitter_p,
        grayscale_p=aug.grayscale_p,
        blur_p=blur_p[view],
        solarize_p=sol_p[view],
        resolution=resolution,
    )


def to_float(x: Tensor) -> Tensor:
    """The one uint8 -> float32 conversion: contiguous [3, H, W] in [0, 1]."""
    return x.as_subclass(Tensor).contiguous().to(torch.float32).div_(255.0)


class CropFlip:
    """One RandomResizedCrop window + horizontal flip, applied identically to tv_tensors."""

    def __init__(self, size: int, scale, ratio, flip_p: float = 0.5):
        self.size, self.flip_p = [size, size], flip_p
        self.rrc = v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio))

    def sample(self, image: Tensor) -> dict:
        params = self.rrc.make_params([image])  # top, left, height, width (torch RNG)
        params["flip"] = bool(torch.rand(()) < self.flip_p)
        return params

    def apply(self, x, p: dict):
        out = F.resized_crop(
            x,
            p["top"],
            p["left"],
            p["height"],
            p["width"],
            self.size,
            interpolation=BICUBIC,
            antialias=True,
        )  # Image: bicubic; Mask: nearest; BoundingBoxes: mapped (+ clamped)
        return F.horizontal_flip(out) if p["flip"] else out


# ------------------------------------------------------------------ BYOL / DetCon pairs


class PairTransform:
    """(image, mask) -> two views and their masks (DetCon / BYOL / SimCLR / MoCo / VICReg).

    Input: image [H, W, 3] uint8 array or [3, H, W] uint8 tensor; mask [H, W] integer ids
    or None (a global all-zero mask). Output: ``{"view1", "view2": [3, R, R] float32
    normalised, "mask1", "mask2": [R, R] int64}``.
    """

    def __init__(self, aug: AugConfig, batched: bool = False, device_side: bool = False):
        self.resolution = int(aug.resolution)
        if self.resolution < 8:
            raise AugmentError(f"aug.resolution={aug.resolution} must be >= 8")
        scale = _check_pair("crop_scale", aug.crop_scale)
        ratio = _check_pair("crop_ratio", aug.crop_ratio, hi=math.inf)
        self.geometry = CropFlip(self.resolution, scale, ratio)
        self.photometric = [build_photometric(aug, v, self.resolution) for v in (0, 1)]
        self.batched, self.device_side = batched or device_side, device_side

    def __call__(self, image, mask=None) -> dict[str, Tensor]:
        img = tv_tensors.Image(as_chw_uint8(image))
        h, w = img.shape[-2:]
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.shape != (h, w):
                raise AugmentError(f"mask {tuple(mask.shape)} does not match image {(h, w)}")
            mask = tv_tensors.Mask(mask)
        if self.device_side:
            return self.parameters(img, mask)
        out: dict[str, Tensor] = {}
        for v in (0, 1):
            p = self.geometry.sample(img)
            x = self.geometry.apply(img, p).as_subclass(Tensor)
            if self.batched:  # colour later, for the whole batch (``finish``)
                out[f"photo{v + 1}"] = self.photometric[v].sample()
            else:
                x = self.photometric[v](to_float(x))
            if mask is None:
                m = torch.zeros(self.resolution, self.resolution, dtype=torch.int64)
            else:
                m = self.geometry.apply(mask, p).as_subclass(Tensor).to(torch.int64)
            out[f"view{v + 1}"], out[f"mask{v + 1}"] = x, m
        return out

    def parameters(self, img: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        """Device-side mode: the decoded image and mask as they are, with each view's drawn
        parameters (the same draws, in the same order, as the CPU path): ``geom1/2`` [5]
        (top, left, height, width, flip), ``photo1/2`` [NUM_PARAMS]. The training device
        makes the views (``detlab.methods.device_views``)."""
        out: dict[str, Tensor] = {"image": img.as_subclass(Tensor)}
        if mask is not None:
            out["mask"] = mask.as_subclass(Tensor)
        for v in (0, 1):
            p = self.geometry.sample(img)
            out[f"geom{v + 1}"] = torch.tensor(
                [p["top"], p["left"], p["height"], p["width"], int(p["flip"])]
            )
            out[f"photo{v + 1}"] = self.photometric[v].sample()
        return out

    def finish(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Batched mode: the collated uint8 views [B, 3, R, R] and their per-sample colour
        parameters ``photo1/2`` -> normalised float views (one intra-op thread, as in a
        loader worker, so a view does not depend on where it was coloured)."""
        if not self.batched or self.device_side:
            return batch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for v in (0, 1):
                x = batch[f"view{v + 1}"].float().div_(255.0)
                batch[f"view{v + 1}"] = self.photometric[v].apply(x, batch.pop(f"photo{v + 1}"))
        finally:
            torch.set_num_threads(threads)
        return batch


def build_pair_transform(
    aug: AugConfig, batched: bool = False, device_side: bool = False
) -> PairTransform:
    """BYOL's asymmetric two-view transform for image + mask (see ``PairTransform``)."""
    return PairTransform(aug, batched, device_side)


# ------------------------------------------------------------------------- SoCo views


class SocoTransform:
    """(image, proposals) -> SoCo's V1/V2/V3 with K boxes valid in every view.

    Input: image as in ``PairTransform``; boxes [N, 4] float xyxy in image pixels (N may
    be 0). Output: ``{"v1", "v2": [3, R, R], "v3": [3, R//2, R//2] float32 normalised,
    "boxes1", "boxes2", "boxes3": [K, 4] float32 xyxy in that view's pixels,
    "box_valid": [K] bool}``. Padded slots hold the whole view and ``valid=False``.

    A proposal is kept when its intersection with the V2 crop window is at least
    ``resolution * MIN_BOX_FRAC`` px wide and high in V2; it is clipped to that window in
    every view, so the three boxes of a slot cover the same image content (V1's jitter
    aside). An image with no surviving proposal gets the crop window itself as its one box.
    Flips (p=0.5) are drawn per view as in BYOL; V3 shares V2's geometry.
    """

    def __init__(self, aug: AugConfig, num_boxes: int, device_side: bool = False):
        self.resolution, self.device_side = int(aug.resolution), device_side
        if self.resolution < 8:
            raise AugmentError(f"aug.resolution={aug.resolution} must be >= 8")
        if num_boxes < 1:
            raise AugmentError(f"method.num_boxes={num_boxes} must be >= 1")
        self.num_boxes = int(num_boxes)
        scale = _check_pair("soco_crop_scale", aug.soco_crop_scale)
        ratio = _check_pair("crop_ratio", aug.crop_ratio, hi=math.inf)
        self.jitter = float(aug.soco_box_jitter)
        self.jitter_p = float(aug.soco_box_jitter_p)
        self.geometry = CropFlip(self.resolution, scale, ratio)
        r, r3 = self.resolution, self.resolution // 2
        # V1: blur/solarize of BYOL's view 1; V2 and V3: BYOL's view 2 (drawn independently)
        self.photometric = [
            build_photometric(aug, 0, r),
            build_photometric(aug, 1, r),
            build_photometric(aug, 1, r3),
        ]

    def __call__(self, image, boxes) -> dict[str, Tensor]:
        R, R3, K = self.resolution, self.resolution // 2, self.num_boxes
        img = tv_tensors.Image(as_chw_uint8(image))
        H, W = img.shape[-2:]
        boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)

        # geometry (torch RNG order: V2 window, V2 flip, V1 flip, choice, jitter)
        p2 = self.geometry.sample(img)
        flip1 = bool(torch.rand(()) < 0.5)
        top, left, hh, ww = p2["top"], p2["left"], p2["height"], p2["width"]
        window = torch.tensor([[left, top, left + ww, top + hh]], dtype=torch.float32)
        clipped = torch.cat(
            [
                torch.maximum(boxes[:, :2], window[:, :2]),
                torch.minimum(boxes[:, 2:], window[:, 2:]),
            ],
            dim=1,
        )
        min_side = R * MIN_BOX_FRAC
        side = (clipped[:, 2:] - clipped[:, :2]) * torch.tensor([R / ww, R / hh])
        keep = torch.nonzero((side >= min_side).all(dim=1)).flatten()
        if keep.numel() == 0:  # no proposal inside V2: the crop window is one
            clipped, keep = window, torch.zeros(1, dtype=torch.long)
        order = torch.randperm(keep.numel())[:K]
        chosen = clipped[keep[order]]
        n = chosen.shape[0]

        bb = tv_tensors.BoundingBoxes(chosen, format="XYXY", canvas_size=(H, W))
        b2 = self.geometry.apply(bb, p2)
        b3 = F.resize(b2, [R3, R3])
        b1 = F.resize(bb, [R, R])
        if flip1:
            b1 = F.horizontal_flip(b1)
        b1 = self._jitter(b1.as_subclass(Tensor), R)
        if self.device_side:  # the views are made on the training device (device_views)
            images = (None, None, None)
            out = {"image": img.as_subclass(Tensor), "size": torch.tensor([H, W]),
                   "flip1": torch.tensor(flip1),
                   "geom2": torch.tensor([top, left, hh, ww, int(p2["flip"])])}  # fmt: skip
        else:
            img2 = self.geometry.apply(img, p2)
            img3 = F.resize(img2, [R3, R3], interpolation=BICUBIC, antialias=True)
            img1 = F.resize(img, [R, R], interpolation=BICUBIC, antialias=True)
            images, out = (F.horizontal_flip(img1) if flip1 else img1, img2, img3), {}

        valid = torch.zeros(K, dtype=torch.bool)
        valid[:n] = True
        for v, (x, b, size) in enumerate(zip(images, (b1, b2, b3), (R, R, R3), strict=True)):
            if self.device_side:
                out[f"photo{v + 1}"] = self.photometric[v].sample()
            else:
                out[f"v{v + 1}"] = self.photometric[v](to_float(x))
            padded = torch.tensor([[0.0, 0.0, size, size]]).repeat(K, 1)
            padded[:n] = b.as_subclass(Tensor)
            out[f"boxes{v + 1}"] = padded
        out["box_valid"] = valid
        return out

    def _jitter(self, b: Tensor, size: int) -> Tensor:
        """SoCo's V1 box jitter: with p, x, y, w, h each move by r * (w or h), r~U[-j, j]."""
        r = torch.empty(b.shape[0], 4).uniform_(-self.jitter, self.jitter)
        on = torch.rand(b.shape[0]) < self.jitter_p
        wh = b[:, 2:] - b[:, :2]
        xy = b[:, :2] + r[:, :2] * wh
        wh2 = wh * (1 + r[:, 2:])
        j = torch.cat([xy, xy + wh2], dim=1).clamp_(0, size)
        ok = on & ((j[:, 2:] - j[:, :2]) >= 1).all(dim=1)
        return torch.where(ok[:, None], j, b)


def build_soco_transform(
    aug: AugConfig, num_boxes: int, device_side: bool = False
) -> SocoTransform:
    """SoCo's three-view transform for image + proposals (see ``SocoTransform``)."""
    return SocoTransform(aug, num_boxes, device_side)

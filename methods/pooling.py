"""DetCon mask pooling and sampling (official DetCon-B semantics, vectorised).

Pipeline per view: ``pool_masks`` (per-pixel ids -> one-hot of the majority id of each
feature-grid cell) -> ``sample_mask_ids`` (M ids per image, shared by online and target
branches and by both views) -> ``mask_pool_features`` (area-normalised masks times the
feature map, one batched matmul).
"""

from __future__ import annotations

import torch
from torch import Tensor


class MaskPoolingError(ValueError):
    """Masks, grids or features of the wrong shape or value range."""


def pool_masks(masks: Tensor, grid: tuple[int, int], max_mask_id: int = 256) -> Tensor:
    """Per-pixel mask ids -> one-hot of each feature-grid cell's argmax id.

    Equivalent to the reference (one-hot over ``max_mask_id``, average pooling with
    non-overlapping windows of H/h x W/w pixels, argmax per cell with ties going to the
    lowest id, re-one-hot) but computed from per-cell id counts with one bincount, so the
    [B, max_mask_id, H, W] one-hot image is never built. When H (W) is not a multiple of h
    (w), pixel row y goes to cell row floor(y * h / H) (the reference only uses divisible
    sizes: 224 px -> 7 x 7).

    Args:
        masks: [B, H, W] integer ids in [0, max_mask_id).
        grid: (h, w) feature-map size.
        max_mask_id: number of possible ids (official 256).

    Returns:
        [B, max_mask_id, h*w] float32, exactly one 1 per cell (column).
    """
    if masks.dim() != 3 or masks.dtype.is_floating_point or masks.dtype == torch.bool:
        raise MaskPoolingError(
            f"masks must be [B, H, W] integer ids, got {tuple(masks.shape)} {masks.dtype}"
        )
    b, height, width = masks.shape
    h, w = (int(grid[0]), int(grid[1]))
    if not (0 < h <= height and 0 < w <= width):
        raise MaskPoolingError(
            f"grid {grid} must be positive and at most the mask size {(height, width)}"
        )
    # The range check reads the ids on the host: done for CPU tensors only. On a GPU it would
    # stall every step; there the ids come from the loader's uint8 mask stores or grids
    # (< 256, the default max_mask_id; nothing else checks them there).
    if masks.device.type == "cpu" and masks.numel():
        lo, hi = int(masks.min()), int(masks.max())
        if lo < 0 or hi >= max_mask_id:
            raise MaskPoolingError(
                f"mask ids must lie in [0, {max_mask_id}), got range [{lo}, {hi}]"
            )
    device = masks.device
    cell_y = torch.arange(height, device=device) * h // height  # [H]
    cell_x = torch.arange(width, device=device) * w // width  # [W]
    cell = cell_y[:, None] * w + cell_x[None, :]  # [H, W] in [0, h*w)
    image = torch.arange(b, device=device)[:, None, None] * (h * w)  # [B, 1, 1]
    flat = (image + cell[None]) * max_mask_id + masks.long()  # [B, H, W]
    # scatter_add into a buffer of known size: bincount (and one_hot) read the ids' maximum
    # on the host, a sync per call on a GPU; integer sums are exact in any order
    counts = torch.zeros(b * h * w * max_mask_id, dtype=torch.int32, device=device)
    counts.scatter_add_(0, flat.reshape(-1), torch.ones_like(flat.reshape(-1), dtype=torch.int32))
    winner = counts.view(b, h * w, max_mask_id).argmax(dim=-1)  # [B, h*w], first max wins
    out = torch.zeros(b, max_mask_id, h * w, device=device)  # [B, max_mask_id, h*w]
    return out.scatter_(1, winner[:, None, :], 1.0)


def sample_mask_ids(
    pooled_a: Tensor,
    pooled_b: Tensor,
    num_masks: int,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample M mask ids per image with replacement, uniformly over the present ids.

    Ids are drawn among those present in BOTH views; an image whose views share no id
    draws among the ids of view a (its samples are then absent from view b: all-zero rows
    in the returned view-b masks, see ``mark_absent``). The same ids serve the online and
    the target branch. Deterministic given ``generator`` (sampling runs on the
    generator's device).

    Args:
        pooled_a, pooled_b: [B, max_mask_id, h*w] outputs of ``pool_masks``.
        num_masks: M, samples per image.
        generator: optional torch.Generator for reproducible draws.
        uniform: optional [B, M] numbers in [0, 1) that fix the draws instead (e.g.
            ``hashed_uniform`` of the images' dataset indices: then an image's samples do
            not depend on which rank or batch position it lands on).

    Returns:
        ids: [B, M] long; masks_a, masks_b: [B, M, h*w] binary masks of those ids.
    """
    if pooled_a.dim() != 3 or pooled_a.shape != pooled_b.shape:
        raise MaskPoolingError(
            "pooled_a and pooled_b must both be [B, max_mask_id, h*w], got "
            f"{tuple(pooled_a.shape)} and {tuple(pooled_b.shape)}"
        )
    if num_masks < 1:
        raise MaskPoolingError(f"num_masks must be >= 1, got {num_masks}")
    present_a = pooled_a.sum(dim=-1) > 0  # [B, max_mask_id]
    present_b = pooled_b.sum(dim=-1) > 0
    # pool_masks gives every cell one id, so this holds by construction; checked on the CPU
    # only (on a GPU the check would be a host sync per step)
    if present_a.device.type == "cpu" and not bool(present_a.any(dim=1).all()):
        raise MaskPoolingError("every image needs at least one mask id present in view a")
    both = present_a & present_b
    allowed = torch.where(both.any(dim=1, keepdim=True), both, present_a)  # [B, max_mask_id]
    if uniform is not None:
        if uniform.shape != (pooled_a.shape[0], num_masks):
            raise MaskPoolingError(
                f"uniform must be [B, M] = {(pooled_a.shape[0], num_masks)}, "
                f"got {tuple(uniform.shape)}"
            )
        cdf = allowed.long().cumsum(dim=1)  # [B, max_mask_id]
        rank = (uniform.to(cdf.device, torch.float64) * cdf[:, -1:]).long()  # [B, M]
        ids = torch.searchsorted(cdf, rank, right=True)  # the (rank+1)-th allowed id
    else:
        sample_device = generator.device if generator is not None else allowed.device
        ids = torch.multinomial(
            allowed.to(sample_device, torch.float32),
            num_masks,
            replacement=True,
            generator=generator,
        ).to(pooled_a.device)  # [B, M]
    index = ids[:, :, None].expand(-1, -1, pooled_a.shape[-1])  # [B, M, h*w]
    return ids, pooled_a.gather(1, index), pooled_b.gather(1, index)


def hashed_uniform(keys: Tensor, salt: int, num: int) -> Tensor:
    """[B] integer keys -> [B, num] float64 in [0, 1), a pure function of (key, salt, column).

    A few rounds of a 31-bit multiplicative hash, in int64 without overflow; used to draw
    each image's mask samples from its dataset index and the step, independently of
    batch composition.
    """
    mod = 2**31 - 1
    cols = torch.arange(num, device=keys.device, dtype=torch.int64)
    x = (keys.to(torch.int64)[:, None] % mod) * 1_000_003 + cols[None] * 7_919 + salt % mod
    for mult in (48_271, 69_621, 16_807):
        x = (x % mod) * mult % mod
        x = (x ^ (x >> 13)) % mod
    return x.to(torch.float64) / mod


def mark_absent(ids: Tensor, masks: Tensor) -> Tensor:
    """ids [B, M] with -1 where the view's binary mask [B, M, h*w] is empty.

    Pass ``mark_absent(ids, masks_b)`` as ``ids_b`` to ``detcon_loss`` so samples absent
    from a view are neither positives nor negatives.
    """
    return ids.masked_fill(masks.sum(dim=-1) == 0, -1)


def mask_pool_features(feats: Tensor, binmasks: Tensor) -> Tensor:
    """Average the feature map inside each sampled mask.

    Args:
        feats: [B, C, h, w] backbone feature map.
        binmasks: [B, M, h*w] binary masks (from ``sample_mask_ids``).

    Returns:
        [B, M, C]: each mask divided by max(area, 1), times the [B, h*w, C] features (one
        batched matmul). Empty masks give zero vectors.
    """
    if feats.dim() != 4 or binmasks.dim() != 3:
        raise MaskPoolingError(
            f"feats must be [B, C, h, w] and binmasks [B, M, h*w], got "
            f"{tuple(feats.shape)} and {tuple(binmasks.shape)}"
        )
    b, c, h, w = feats.shape
    if binmasks.shape[0] != b or binmasks.shape[2] != h * w:
        raise MaskPoolingError(
            f"binmasks {tuple(binmasks.shape)} do not match feats {tuple(feats.shape)}: "
            f"expected [{b}, M, {h * w}]"
        )
    area = binmasks.sum(dim=-1, keepdim=True).clamp_min(1)  # [B, M, 1]
    weights = (binmasks / area).to(feats.dtype)  # [B, M, h*w]
    return torch.bmm(weights, feats.flatten(2).transpose(1, 2))  # [B, M, C]

"""Batched resized crops on any device: every sample its own window, one op for the batch.

The device-side input path (``detlab.methods.device_views``) crops and resizes a whole batch
of decoded images on the training device, each sample with the window its loader worker
drew. A resize is linear in the pixels, so each sample's crop + antialiased bicubic resize +
flip is a pair of matrices: ``out[b] = Wy[b] @ x[b] @ Wx[b]^T`` with ``Wy [B, R, H]`` and
``Wx [B, R, W]`` zero outside the window. Two batched matmuls then resize the whole batch,
on a GPU at matmul speed; a flip is the reversed rows of ``Wx``. The weights are PyTorch's
antialiased bicubic (``interpolate(mode="bicubic", antialias=True)``, PIL's a = -0.5 filter
widened by the downscale factor), so a view equals torchvision's ``resized_crop`` (the CPU
path) up to float rounding. Masks take torch's ``nearest`` rule as one gather.

Windows: ``[B, 4]`` (top, left, height, width) in input pixels, inside each image.
"""

from __future__ import annotations

import torch
from torch import Tensor

A = -0.5  # the antialiased bicubic's filter parameter (PIL's; plain bicubic uses -0.75)


def _cubic(x: Tensor) -> Tensor:
    """Keys' cubic filter with a = -0.5, support [-2, 2]."""
    x = x.abs()
    near = ((A + 2) * x - (A + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * A
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def aa_weights(start: Tensor, length: Tensor, out: int, size: int) -> Tensor:
    """Antialiased bicubic resampling rows for one axis, per sample.

    Args:
        start, length: [B] the window along this axis (input pixels; float or int).
        out: output length R.
        size: padded input length (the matrix's columns).

    Returns:
        [B, R, size] float32: row i holds the weights of output pixel i over the input,
        zero outside the window (PyTorch's ``_compute_indices_weights_aa``: centre
        scale * (i + 0.5), support 2 * max(scale, 1), taps clipped to the window,
        weights normalised to sum 1).
    """
    start = start.to(torch.float32).view(-1, 1, 1)
    length = length.to(torch.float32).view(-1, 1, 1)
    dev = start.device
    scale = length / out  # [B, 1, 1]
    support = 2.0 * scale.clamp(min=1.0)
    inv = 1.0 / scale.clamp(min=1.0)
    i = torch.arange(out, device=dev, dtype=torch.float32).view(1, -1, 1)
    j = torch.arange(size, device=dev, dtype=torch.float32).view(1, 1, -1) - start  # local
    centre = scale * (i + 0.5)
    lo = (centre - support + 0.5).trunc().clamp(min=0)  # int() of a non-negative value
    hi = torch.minimum((centre + support + 0.5).trunc(), length)
    w = _cubic((j - centre + 0.5) * inv) * ((j >= lo) & (j < hi))
    return w / w.sum(-1, keepdim=True)


def resized_crop(x: Tensor, windows: Tensor, out: int, flip: Tensor | None = None,
                 rounding: bool = True) -> Tensor:  # fmt: skip
    """Each sample's window resized to ``out`` x ``out`` (antialiased bicubic), flipped where
    ``flip``.

    Args:
        x: [B, C, H, W] uint8 or float images (padded to a common H, W).
        windows: [B, 4] (top, left, height, width).
        out: output side R.
        flip: [B] bool, horizontal flip after the resize.
        rounding: round and clamp to [0, 255] as the uint8 CPU path does.

    Returns:
        [B, C, R, R] float32 in the input's range (0..255 for uint8 input).
    """
    b, _, h, w = x.shape
    wy = aa_weights(windows[:, 0], windows[:, 2], out, h)  # [B, R, H]
    wx = aa_weights(windows[:, 1], windows[:, 3], out, w)  # [B, R, W]
    if flip is not None:
        wx = torch.where(flip.view(-1, 1, 1).to(wx.device), wx.flip(1), wx)
    y = torch.matmul(wy[:, None], x.to(torch.float32))  # [B, C, R, W]
    y = torch.matmul(y, wx[:, None].transpose(-1, -2))  # [B, C, R, R]
    return y.round_().clamp_(0, 255) if rounding else y


def nearest_indices(start: Tensor, length: Tensor, out: int) -> Tensor:
    """[B] windows -> [B, R] source indices of torch's ``nearest``: floor(i * in / out),
    at most in - 1, offset by the window's start."""
    scale = length.to(torch.float32).view(-1, 1) / out
    i = torch.arange(out, device=start.device, dtype=torch.float32).view(1, -1)
    local = torch.minimum(torch.floor(i * scale), length.view(-1, 1).to(torch.float32) - 1)
    return local.to(torch.long) + start.view(-1, 1).to(torch.long)


def resized_crop_nearest(m: Tensor, windows: Tensor, out: int,
                         flip: Tensor | None = None) -> Tensor:  # fmt: skip
    """Masks [B, H, W] (integer ids) -> [B, R, R] with each window's nearest resize + flip."""
    iy = nearest_indices(windows[:, 0], windows[:, 2], out)  # [B, R]
    ix = nearest_indices(windows[:, 1], windows[:, 3], out)
    if flip is not None:
        ix = torch.where(flip.view(-1, 1).to(ix.device), ix.flip(1), ix)
    rows = torch.arange(m.shape[0], device=m.device).view(-1, 1, 1)
    return m[rows, iy[:, :, None], ix[:, None, :]]

"""BYOL's photometric augmentation, vectorised over a batch with per-sample parameters.

Per sample (BYOL, as ``torchvision.transforms.v2``): colour jitter (brightness 0.4,
contrast 0.4, saturation 0.2, hue 0.1, x strength) in a random order with p=0.8, grayscale
p=0.2, Gaussian blur p=(1.0, 0.1) with sigma ~ U(0.1, 2.0) x resolution/224, solarize
p=(0.0, 0.2), ImageNet normalisation. Each op follows torchvision's definition
(``adjust_brightness`` ... ``adjust_hue``, ``rgb_to_grayscale``, ``solarize``).

Split in two so the expensive part runs once per batch:
- ``sample()`` draws one sample's parameters ([NUM_PARAMS] float) from torch's global RNG,
  which ``detlab.methods.data`` seeds per sample from (seed, epoch, index): a view does not
  depend on its batch, its rank or the number of loader workers;
- ``apply(x, params)`` runs every op on the whole batch [B, 3, R, R] at once (~30x cheaper
  than per-image torchvision calls at 64 px, where per-op overhead dominates).
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# parameter slots of one sample
JITTER, BRIGHT, CONTRAST, SATUR, HUE = 0, 1, 2, 3, 4
ORDER = slice(5, 9)  # the jitter ops' order: a permutation of 0..3 (stored as float)
GRAYSCALE, BLUR, SIGMA, SOLARIZE = 9, 10, 11, 12
NUM_PARAMS = 13


def blur_kernel_size(resolution: int) -> int:
    """Odd kernel of ~10% of the view side: 23 at 224 px (BYOL), 7 at 64 px."""
    return 2 * round(resolution * 0.05) + 1


def grayscale(x: Tensor) -> Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma."""
    w = x.new_tensor(GRAY).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    """torchvision's _blend: f * a + (1 - f) * b, clamped to [0, 1]; f: [B]."""
    f = f.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp_(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """[B, 3, H, W] in [0, 1] -> hue, saturation, value (hue in [0, 1))."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    eq = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eq, ones, maxc)
    cr_div = torch.where(eq, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of ``rgb_to_hsv``: channel n in (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1)
    with k = (n' + 6 h) mod 6, n' = (5, 3, 1): torchvision's sector table, without a gather."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = x.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


def jitter_op(op: int, x: Tensor, p: Tensor) -> Tensor:
    """One of torchvision's four jitter ops with per-sample factors (p: [B, NUM_PARAMS])."""
    if op == 0:
        return blend(x, torch.zeros_like(x), p[:, BRIGHT])
    if op == 1:
        mean = grayscale(x).mean((1, 2, 3), keepdim=True)
        return blend(x, mean, p[:, CONTRAST])
    if op == 2:
        return blend(x, grayscale(x), p[:, SATUR])
    return adjust_hue(x, p[:, HUE])


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample sigma [B]; separable, reflect padding, kernel as ``v2.GaussianBlur``."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.linspace(-half, half, kernel_size, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x)) ** 2)  # [B, k]
    g = g / g.sum(1, keepdim=True)
    g = torch.where(g < 1e-10, 0.0, g).repeat_interleave(c, 0)  # [B*C, k], no denormals
    y = nnf.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    y = nnf.conv2d(y, g.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = nnf.conv2d(y, g.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w)


class Photometric:
    """One view's colour pipeline (BYOL's view 0 or 1) at ``resolution`` px."""

    def __init__(
        self,
        strength: float = 1.0,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 1.0,
        solarize_p: float = 0.0,
        resolution: int = 224,
    ):
        s = float(strength)
        self.factors = (0.4 * s, 0.4 * s, 0.2 * s)  # brightness, contrast, saturation
        self.hue = 0.1 * s
        if self.hue > 0.5:
            raise ValueError(f"aug.jitter_strength={strength} gives hue jitter > 0.5")
        self.jitter_p, self.grayscale_p = float(jitter_p), float(grayscale_p)
        self.blur_p, self.solarize_p = float(blur_p), float(solarize_p)
        scale = resolution / 224  # BYOL's sigma range is for 224 px
        self.sigma = (0.1 * scale, 2.0 * scale)
        self.kernel_size = blur_kernel_size(resolution)

    def sample(self) -> Tensor:
        """[NUM_PARAMS] parameters of one sample, from torch's global RNG."""
        u = torch.rand(9).tolist()  # Python floats: per-slot tensor writes cost ~0.3 ms
        order = torch.randperm(4).tolist()
        p = [0.0] * NUM_PARAMS
        p[JITTER] = float(u[0] < self.jitter_p)
        for slot, amount, draw in zip((BRIGHT, CONTRAST, SATUR), self.factors, u[1:4], strict=True):
            low = max(0.0, 1 - amount)  # torchvision: factor ~ U[max(0, 1 - a), 1 + a]
            p[slot] = low + draw * (1 + amount - low)
        p[HUE] = (2 * u[4] - 1) * self.hue
        p[ORDER] = order
        p[GRAYSCALE] = float(u[5] < self.grayscale_p)
        p[BLUR] = float(u[6] < self.blur_p)
        p[SIGMA] = self.sigma[0] + u[7] * (self.sigma[1] - self.sigma[0])
        p[SOLARIZE] = float(u[8] < self.solarize_p)
        return torch.tensor(p)

    def apply(self, x: Tensor, p: Tensor, sync_free: bool | None = None) -> Tensor:
        """x [B, 3, R, R] float in [0, 1], p [B, NUM_PARAMS] -> normalised [B, 3, R, R].
        ``sync_free`` (default: off the CPU) reads nothing on the host."""
        x_in, x = x, x.float()
        p = p.to(x.device)
        on = p[:, JITTER] > 0
        order = p[:, ORDER].long()  # [B, 4]
        # On a GPU every op runs on the whole batch and each sample keeps its own (no host
        # reads); on the CPU each op runs only on the samples that draw it at that position.
        sync_free = x.device.type != "cpu" if sync_free is None else sync_free
        if sync_free:
            for pos in range(4):
                for op in range(4):
                    use = (on & (order[:, pos] == op)).view(-1, 1, 1, 1)
                    x = torch.where(use, jitter_op(op, x, p), x)
        elif on.any():
            x = x.clone() if x is x_in else x  # written in place below, never the caller's
            for pos in range(4):
                for op in range(4):
                    idx = torch.nonzero(on & (order[:, pos] == op)).flatten()
                    if idx.numel():  # each sample runs each op once: cost of one batch
                        x.index_copy_(0, idx, jitter_op(op, x[idx], p[idx]))
        gray = p[:, GRAYSCALE] > 0
        if sync_free or gray.any():
            x = torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        blur = p[:, BLUR] > 0
        if sync_free or blur.any():
            x = torch.where(
                blur.view(-1, 1, 1, 1), gaussian_blur(x, p[:, SIGMA], self.kernel_size), x
            )
        sol = (p[:, SOLARIZE] > 0).view(-1, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1.0 - x, x)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, x: Tensor) -> Tensor:
        """One image [3, R, R] in [0, 1] -> normalised, parameters drawn now."""
        return self.apply(x[None], self.sample()[None])[0]

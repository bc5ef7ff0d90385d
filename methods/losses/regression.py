"""Non-contrastive losses: BYOL regression, VICReg and SoCo's box-level regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detlab.methods.losses.checks import (
    LossInputError,
    check_dim,
    check_same_shape,
    compute_dtype,
)


def byol_loss(pred: Tensor, target: Tensor) -> Tensor:
    """BYOL regression loss 2 - 2 cos(pred, target), mean over the batch.

    Args:
        pred: [B, D] (or [..., D]) online predictions.
        target: same shape, target projections (BYOL passes them detached).

    Returns:
        scalar: mean of 2 - 2 cos over all leading positions. BYOL symmetrises by calling
        it for both view orders and summing.
    """
    if pred.dim() < 1:
        raise LossInputError("pred must be [B, D] or [..., D], got a scalar")
    check_same_shape(("pred", "target"), pred, target)
    dtype = compute_dtype(pred, target)
    cos = F.cosine_similarity(pred.to(dtype), target.to(dtype), dim=-1, eps=1e-12)
    return (2 - 2 * cos).mean()


def _off_diagonal(m: Tensor) -> Tensor:
    """[D, D] -> [D * (D - 1)] off-diagonal entries."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def vicreg_terms(z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
    """The three unweighted VICReg terms (official facebookresearch/vicreg definitions).

    Args:
        z_a, z_b: [B, D] expander outputs (gathered across ranks by the caller), B >= 2.

    Returns:
        {"invariance": mse(z_a, z_b) (mean over B*D),
         "variance": mean_d relu(1 - sqrt(var_d + 1e-4)), averaged over the two views,
         "covariance": sum of squared off-diagonal covariances / D, summed over the views}
    The paper writes the variance term as v(Z) + v(Z'); the official code averages the two
    views (divides by 2). We follow the official code.
    """
    check_dim("z_a", z_a, 2, "[B, D]")
    check_same_shape(("z_a", "z_b"), z_a, z_b)
    b, d = z_a.shape
    if b < 2:
        raise LossInputError(f"vicreg needs at least 2 samples for its statistics, got B={b}")
    dtype = compute_dtype(z_a, z_b)
    z_a, z_b = z_a.to(dtype), z_b.to(dtype)
    invariance = F.mse_loss(z_a, z_b)
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(z_a.var(dim=0) + 1e-4)  # [D], unbiased variance as in the official code
    std_b = torch.sqrt(z_b.var(dim=0) + 1e-4)
    variance = F.relu(1 - std_a).mean() / 2 + F.relu(1 - std_b).mean() / 2
    cov_a = z_a.T @ z_a / (b - 1)  # [D, D]
    cov_b = z_b.T @ z_b / (b - 1)
    covariance = _off_diagonal(cov_a).pow(2).sum() / d + _off_diagonal(cov_b).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


def vicreg_loss(
    z_a: Tensor, z_b: Tensor, sim: float = 25.0, var: float = 25.0, cov: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """VICReg: sim * invariance + var * variance + cov * covariance (see vicreg_terms).

    Args:
        z_a, z_b: [B, D] expander outputs, B >= 2.
        sim, var, cov: term weights (paper: 25, 25, 1).

    Returns:
        (scalar loss, the unweighted terms, for logging).
    """
    t = vicreg_terms(z_a, z_b)
    return sim * t["invariance"] + var * t["variance"] + cov * t["covariance"], t


def soco_loss(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """SoCo's box-level regression loss for one (online view, target view) pair.

    Box k of view 1 corresponds to box k of view 2 (the official code's correspondence
    matrix is diagonal for proposals sampled per image, as here).

    Args:
        pred: [B, K, D] online predictions of the K boxes of each image.
        target: [B, K, D] target projections of the same boxes in the other view.
        valid: [B, K] bool, which of the K (padded) boxes exist.

    Returns:
        scalar: -2 * mean_b [sum_k valid_bk cos(pred_bk, target_bk) / (sum_k valid_bk + 1e-6)].
        Images without a valid box contribute 0 but still count in the mean, as in the
        official code. SoCo sums this over its view pairs and both directions.
    """
    check_dim("pred", pred, 3, "[B, K, D]")
    check_same_shape(("pred", "target"), pred, target)
    check_dim("valid", valid, 2, "[B, K] bool")
    if valid.shape != pred.shape[:2]:
        raise LossInputError(
            f"valid must be [B, K] = {tuple(pred.shape[:2])}, got {tuple(valid.shape)}"
        )
    dtype = compute_dtype(pred, target)
    cos = F.cosine_similarity(pred.to(dtype), target.to(dtype), dim=-1, eps=1e-12)  # [B, K]
    valid = valid.to(dtype)
    per_image = (cos * valid).sum(dim=1) / (valid.sum(dim=1) + 1e-6)  # [B]
    return -2 * per_image.mean()

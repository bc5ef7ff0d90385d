"""DetCon's multi-mask contrastive loss (official ``byol_nce_detcon`` semantics).

Notation (shapes in comments throughout):
    B      images on this rank            M  sampled masks per image
    B_all  images after all-gather        D  embedding size
    rows   2*B*M    one per (view i, local image b, mask r) of the predictions
    cols   2*B_all*M one per (view j, gathered image u, mask v) of the targets

For a row (i, b, r) the official loss is a cross entropy over the cross-view logits
(targets of the other view) followed by the same-view logits (targets of the same view).
Positives: same image, same mask id, other view. Same-view same-id logits (including the
mask itself) are set to -1e9. Labels are divided by the number of positives; each row is
weighted by 1[row has a positive] / obj_area (number of samples of that id in the row's
view); the mean is over B*M rows per direction and the two directions are summed.

Since every label sits on a positive logit, the row's cross entropy splits into
``w_r * (logsumexp_c logits_rc - mean_{c in pos(r)} logits_rc)``. The logsumexp over all
2*B_all*M columns runs in one memory-lean autograd function (one logit matrix kept for
backward, masks applied in place through broadcast views, never materialised at full
size); the positive term only needs each image's own [M, M] cross-view block.

Extensions beyond the official code (all default to the official behaviour):
- ``local_negatives=False`` drops the other masks of the same image from the negatives
  (the official flag of the same name).
- ``cross_image_negatives=k`` keeps only the masks of k other images as negatives: for the
  image at gathered index g these are images (g+1 .. g+k) mod B_all. None keeps all images,
  0 keeps none (within-image negatives only).
- A negative mask id marks a sample absent from that view (see
  ``detlab.methods.pooling.mark_absent``): it gets no weight as a row and is excluded as a
  column. The official sampler never produces absent samples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detlab.methods.losses.checks import (
    LossInputError,
    check_dim,
    check_same_shape,
    check_temperature,
    compute_dtype,
)

# Official "infinity proxy": finite, so a fully excluded row (which always has weight 0)
# stays finite instead of producing 0 * nan.
NEG = -1e9


class _WeightedMaskedLogSumExp(torch.autograd.Function):
    """sum_r weight_r * logsumexp_c(masked rows @ cols^T), rows pre-scaled by 1/temperature.

    Saves one [2BM, 2B_allM] probability matrix for backward (the logits are turned into
    probabilities in place); the gradient w.r.t. the logits is weight_r * softmax_rc.
    """

    @staticmethod
    def forward(ctx, rows, cols, weight, drop_img, col_absent, own_excl, offset):
        # rows: [2, B, M, D]   cols: [2, B_all, M, D]   weight: [2, B, M]
        # drop_img: [B, B_all] bool | None   col_absent: [2, B_all, M] bool
        # own_excl: [2, B, M, 2, M] bool (row view i, row mask r, col view j, col mask v)
        _, b, m, d = rows.shape
        b_all = cols.shape[1]
        logits = rows.reshape(-1, d) @ cols.reshape(-1, d).T  # [2BM, 2B_allM]
        grid = logits.view(2, b, m, 2, b_all, m)
        if drop_img is not None:
            grid.masked_fill_(drop_img[None, :, None, None, :, None], NEG)
        grid.masked_fill_(col_absent[None, None, None], NEG)
        # each local image's own block: diagonal of (local b, gathered offset + b), a view
        own = grid[:, :, :, :, offset : offset + b].diagonal(dim1=1, dim2=4)  # [2,M,2,M,B]
        own.masked_fill_(own_excl.permute(0, 2, 3, 4, 1), NEG)

        row_max = logits.amax(dim=1, keepdim=True)  # [2BM, 1]
        probs = logits.sub_(row_max).exp_()
        norm = probs.sum(dim=1, keepdim=True)
        probs.div_(norm)
        lse = (row_max + norm.log()).squeeze(1)  # [2BM]
        ctx.save_for_backward(rows, cols, weight, probs)
        return (weight.reshape(-1) * lse).sum()

    @staticmethod
    def backward(ctx, grad_out):
        rows, cols, weight, probs = ctx.saved_tensors
        d = rows.shape[-1]
        grad_logits = probs * (grad_out * weight.reshape(-1, 1))  # [2BM, 2B_allM]
        grad_rows = grad_cols = None
        if ctx.needs_input_grad[0]:
            grad_rows = (grad_logits @ cols.reshape(-1, d)).view_as(rows)
        if ctx.needs_input_grad[1]:
            grad_cols = (grad_logits.T @ rows.reshape(-1, d)).view_as(cols)
        return grad_rows, grad_cols, None, None, None, None, None


def _check_inputs(pred_a, pred_b, target_a, target_b, ids_a, ids_b, offset, k):
    for name, t in (("pred_a", pred_a), ("pred_b", pred_b)):
        check_dim(name, t, 3, "[B, M, D]")
    for name, t in (("target_a", target_a), ("target_b", target_b)):
        check_dim(name, t, 3, "[B_all, M, D]")
    check_same_shape(("pred_a", "pred_b"), pred_a, pred_b)
    check_same_shape(("target_a", "target_b"), target_a, target_b)
    b, m, d = pred_a.shape
    b_all = target_a.shape[0]
    if target_a.shape[1:] != (m, d):
        raise LossInputError(
            f"target_a must be [B_all, M={m}, D={d}] to match pred_a, got {tuple(target_a.shape)}"
        )
    if not 0 <= offset <= b_all - b:
        raise LossInputError(
            f"offset={offset} out of range: this rank's {b} images must lie inside the "
            f"{b_all} gathered targets"
        )
    for name, ids in (("ids_a", ids_a), ("ids_b", ids_b)):
        check_dim(name, ids, 2, "[B, M] or [B_all, M] long")
        if ids.shape not in ((b, m), (b_all, m)):
            raise LossInputError(
                f"{name} must be [B={b}, M={m}] or [B_all={b_all}, M={m}], got {tuple(ids.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise LossInputError(f"{name} must hold integer mask ids, got {ids.dtype}")
    if ids_a.shape != ids_b.shape:
        raise LossInputError(
            f"ids_a and ids_b must have the same shape, got {tuple(ids_a.shape)} "
            f"and {tuple(ids_b.shape)}"
        )
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise LossInputError(f"cross_image_negatives must be None or an int >= 0, got {k!r}")


def detcon_loss(
    pred_a: Tensor,
    pred_b: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    ids_a: Tensor,
    ids_b: Tensor,
    temperature: float = 0.1,
    local_negatives: bool = True,
    cross_image_negatives: int | None = None,
    offset: int = 0,
) -> Tensor:
    """DetCon loss (official ``byol_nce_detcon``), both directions summed.

    Args:
        pred_a, pred_b: [B, M, D] predictions (DetCon-B) or projections (DetCon-S) of
            view a / b for this rank's images. Not normalised (done here).
        target_a, target_b: [B_all, M, D] targets of view a / b, all-gathered across ranks
            (B_all = B on one process). Gradients flow into them if they require grad
            (DetCon-S); DetCon-B passes detached EMA projections.
        ids_a, ids_b: [B, M] long mask ids of this rank's samples (the same ids index
            predictions and targets), or [B_all, M] gathered ids, which additionally lets
            absent samples (id < 0) of other ranks' images be excluded.
        temperature: softmax temperature (official 0.1).
        local_negatives: keep other masks of the same image as negatives (official True).
        cross_image_negatives: None = all other images' masks are negatives; k = only the
            next k images cyclically in the gathered batch; 0 = within-image only.
        offset: index of this rank's first image in the gathered targets.

    Returns:
        scalar loss = loss_a + loss_b, each the mean over B*M rows.
    """
    k = cross_image_negatives
    _check_inputs(pred_a, pred_b, target_a, target_b, ids_a, ids_b, offset, k)
    check_temperature(temperature)
    b, m, _ = pred_a.shape
    b_all = target_a.shape[0]
    dtype = compute_dtype(pred_a, pred_b, target_a, target_b)
    device = pred_a.device

    preds = F.normalize(torch.stack([pred_a, pred_b]).to(dtype), dim=-1)  # [2, B, M, D]
    targets = F.normalize(torch.stack([target_a, target_b]).to(dtype), dim=-1)  # [2,B_all,M,D]

    ids = torch.stack([ids_a, ids_b]).to(device=device, dtype=torch.long)  # [2, B|B_all, M]
    gathered_ids = ids.shape[1] == b_all and b_all != b
    local = ids[:, offset : offset + b] if gathered_ids else ids  # [2, B, M]
    present = local >= 0

    # same[i, b, r, j, v]: sample r of view i and sample v of view j share a (present) id
    same = local[:, :, :, None, None] == local.permute(1, 0, 2)[None, :, None, :, :]
    same &= present[:, :, :, None, None] & present.permute(1, 0, 2)[None, :, None, :, :]
    same_view = torch.eye(2, dtype=torch.bool, device=device)[:, None, None, :, None]
    positive = same & ~same_view  # [2, B, M, 2, M], nonzero only for j = 1 - i
    num_pos = positive.sum(dim=(3, 4))  # [2, B, M]
    obj_area = (same & same_view).sum(dim=(3, 4))  # [2, B, M], counts duplicate samples
    weight = (num_pos > 0).to(dtype) / obj_area.clamp_min(1).to(dtype) / (b * m)

    own_excl = same & same_view  # same-view same-mask logits -> -1e9
    if not local_negatives:
        own_excl = ~positive  # the image's other masks are no negatives either

    drop_img = None  # [B, B_all]: other images whose masks are not negatives
    if k is not None and k < b_all - 1:
        g = offset + torch.arange(b, device=device)
        dist = (torch.arange(b_all, device=device)[None, :] - g[:, None]) % b_all
        drop_img = dist > k

    col_ids = ids if gathered_ids else None
    if col_ids is None:
        col_ids = torch.zeros(2, b_all, m, dtype=torch.long, device=device)
        col_ids[:, offset : offset + b] = local
    col_absent = col_ids < 0  # [2, B_all, M]; always applied (testing for none would sync)

    rows = preds / temperature  # [2, B, M, D]
    lse_term = _WeightedMaskedLogSumExp.apply(
        rows, targets, weight, drop_img, col_absent, own_excl, offset
    )

    # positive logits live in each image's own cross-view block: [2, B, M, M]
    own_other_view = targets[:, offset : offset + b].flip(0)  # view 1 - i for row view i
    pos_logits = torch.einsum("ibrd,ibvd->ibrv", rows, own_other_view)
    pos_mask = positive[0, :, :, 1], positive[1, :, :, 0]  # ([B, M, M], [B, M, M])
    pos_mask = torch.stack(pos_mask)  # [2, B, M, M]: positive[i, b, r, 1 - i, v]
    pos_term = (pos_logits * pos_mask).sum(-1) / num_pos.clamp_min(1)  # [2, B, M]
    return lse_term - (weight * pos_term).sum()

"""Losses against independent naive implementations (loops, float64) and hand-checkable cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detlab.methods.losses import (
    LossInputError,
    byol_loss,
    detcon_loss,
    moco_loss,
    nt_xent_loss,
    soco_loss,
    vicreg_loss,
    vicreg_terms,
)


def naive_detcon(pred, target, ids, t, local_negatives=True, k=None):
    """Official byol_nce_detcon semantics written out element by element (one process).

    pred/target: (view a, view b) of [B, M, D]; ids: (ids_a, ids_b) of [B, M], -1 = absent.
    """
    b, m, _ = pred[0].shape
    total = 0.0
    for i in range(2):
        for img in range(b):
            for r in range(m):
                rid = int(ids[i][img, r])
                if rid < 0:
                    continue
                p = F.normalize(pred[i][img, r].double(), dim=0) / t
                logits, labels = [], []
                for j in (1 - i, i):
                    for u in range(b):
                        for v in range(m):
                            cid = int(ids[j][u, v])
                            q = F.normalize(target[j][u, v].double(), dim=0)
                            logit = float(p @ q)
                            pos = j != i and u == img and cid == rid
                            excluded = cid < 0
                            if j == i and u == img and cid == rid:
                                excluded = True
                            if not local_negatives and u == img and not pos:
                                excluded = True
                            if k is not None and u != img and (u - img) % b > k:
                                excluded = True
                            logits.append(-1e9 if excluded else logit)
                            labels.append(1.0 if pos else 0.0)
                num_pos = sum(labels)
                if num_pos == 0:
                    continue
                logits = torch.tensor(logits, dtype=torch.float64)
                labels = torch.tensor(labels, dtype=torch.float64) / num_pos
                row = -(labels * torch.log_softmax(logits, 0)).sum()
                area = sum(int(ids[i][img, v]) == rid for v in range(m))
                total += float(row) / area / (b * m)
    return total


def random_case(b=3, m=5, d=7, seed=0, absent=True):
    g = torch.Generator().manual_seed(seed)
    pred = [torch.randn(b, m, d, generator=g, dtype=torch.float64) for _ in range(2)]
    target = [torch.randn(b, m, d, generator=g, dtype=torch.float64) for _ in range(2)]
    ids_a = torch.randint(0, 3, (b, m), generator=g)  # repeated ids
    ids_b = ids_a.clone()
    if absent:  # some samples missing from view b
        ids_b[0, 1] = -1
        ids_b[-1, :2] = -1
    return pred, target, (ids_a, ids_b)


@pytest.mark.parametrize("local_negatives", [True, False])
@pytest.mark.parametrize("k", [None, 0, 1])
def test_detcon_loss_matches_naive(local_negatives, k):
    pred, target, ids = random_case(seed=3)
    got = detcon_loss(
        *pred,
        *target,
        *ids,
        temperature=0.1,
        local_negatives=local_negatives,
        cross_image_negatives=k,
    )
    want = naive_detcon(pred, target, ids, 0.1, local_negatives, k)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_detcon_cross_image_negatives_changes_loss():
    pred, target, ids = random_case(b=5, seed=4, absent=False)
    all_neg = detcon_loss(*pred, *target, *ids)
    none = detcon_loss(*pred, *target, *ids, cross_image_negatives=0)
    assert float(none) < float(all_neg)  # fewer negatives, smaller log-sum-exp


def test_detcon_gradients():
    pred, target, ids = random_case(b=2, m=3, d=4, seed=5)
    inputs = [t.clone().requires_grad_() for t in (*pred, *target)]

    def f(pa, pb, ta, tb):
        return detcon_loss(pa, pb, ta, tb, *ids, temperature=0.5)

    assert torch.autograd.gradcheck(f, inputs)


def test_detcon_gathered_offset_equals_full_batch():
    """A rank holding images 2..3 of a gathered batch of 4 computes its share exactly."""
    pred, target, ids = random_case(b=4, seed=6, absent=False)
    full = naive_detcon(pred, target, ids, 0.1)
    part = detcon_loss(pred[0][2:], pred[1][2:], *target, ids[0], ids[1], offset=2)
    first = detcon_loss(pred[0][:2], pred[1][:2], *target, ids[0], ids[1], offset=0)
    assert float(part + first) / 2 == pytest.approx(full, rel=1e-9)


def test_detcon_rejects_bad_shapes():
    pred, target, ids = random_case()
    with pytest.raises(LossInputError, match="ids_a"):
        detcon_loss(*pred, *target, ids[0][:, :2], ids[1])
    with pytest.raises(LossInputError, match="cross_image_negatives"):
        detcon_loss(*pred, *target, *ids, cross_image_negatives=-1)


def test_global_mask_detcon_is_nt_xent():
    """One global mask per image (M=1): DetCon's loss is SimCLR's NT-Xent, summed over views."""
    g = torch.Generator().manual_seed(1)
    z_a, z_b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    ids = torch.zeros(6, 1, dtype=torch.long)
    detcon = detcon_loss(
        z_a[:, None], z_b[:, None], z_a[:, None], z_b[:, None], ids, ids, temperature=0.2
    )
    assert float(detcon) == pytest.approx(2 * float(nt_xent_loss(z_a, z_b, 0.2)), rel=1e-5)


def test_nt_xent_hand_case():
    # two images, orthogonal unit vectors: logits are 1/t on the positive, 0 elsewhere
    z_a = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    z_b = z_a.clone()
    t = 0.5
    want = -math.log(math.exp(2) / (math.exp(2) + 2))  # 1 positive, 2 negatives of logit 0
    assert float(nt_xent_loss(z_a, z_b, t)) == pytest.approx(want, rel=1e-6)


def test_byol_loss_hand_cases():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(byol_loss(x, 3 * x)) == pytest.approx(0.0, abs=1e-7)
    assert float(byol_loss(x, -x)) == pytest.approx(4.0)
    assert float(byol_loss(x, x.flip(1))) == pytest.approx(2.0)  # orthogonal


def test_moco_loss_hand_case():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 1.0
    want = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    assert float(moco_loss(q, k, queue, t)) == pytest.approx(want, rel=1e-6)


def test_vicreg_terms_hand_case():
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # perfectly correlated dims, std sqrt(2)
    t = vicreg_terms(z, z)
    assert float(t["invariance"]) == 0.0
    assert float(t["variance"]) == pytest.approx(0.0, abs=1e-7)  # std > 1: hinge is 0
    # cov = [[2, 2], [2, 2]]: off-diagonal 2 -> (2^2 + 2^2) / 2 per view, two views
    assert float(t["covariance"]) == pytest.approx(8.0, rel=1e-4)
    # the weighted loss on the same case: 25 * 0 + 25 * 0 + cov * 8
    loss, terms = vicreg_loss(z, z, sim=25.0, var=25.0, cov=0.5)
    assert float(loss) == pytest.approx(4.0, rel=1e-4)
    assert set(terms) == {"invariance", "variance", "covariance"}


def test_soco_loss_ignores_padded_boxes():
    pred = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    valid = torch.tensor([[True, False]])
    assert float(soco_loss(pred, target, valid)) == pytest.approx(-2.0, rel=1e-5)
    valid = torch.tensor([[True, True]])
    assert float(soco_loss(pred, target, valid)) == pytest.approx(0.0, abs=1e-5)

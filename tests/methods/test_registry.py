"""The method registry: one class per config, each trains its backbone; DetCon reductions."""

from __future__ import annotations

import pytest
import torch

from detlab.methods.models.base import ema_tau
from detlab.methods.pooling import hashed_uniform, mask_pool_features, pool_masks, sample_mask_ids
from detlab.methods.registry import METHODS, UnknownMethodError, build_method
from detlab.platform.compose import compose, group_options

TINY = ["experiment=tiny"]  # platform/conf/experiment/tiny.yaml


def tiny(name, *extra):
    cfg = compose([f"method={name}", *TINY, *extra])
    return cfg, build_method(cfg.method, cfg.backbone, cfg.aug)


def batch_for(method, b=4, r=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    if method.input_kind == "boxes":
        boxes = torch.tensor([[2.0, 2.0, 20.0, 24.0], [8.0, 4.0, 30.0, 30.0]]).repeat(b, 1, 1)
        half = boxes / 2
        return {
            "v1": torch.randn(b, 3, r, r, generator=g),
            "v2": torch.randn(b, 3, r, r, generator=g),
            "v3": torch.randn(b, 3, r // 2, r // 2, generator=g),
            "boxes1": boxes,
            "boxes2": boxes,
            "boxes3": half,
            "box_valid": torch.tensor([[True, False]]).repeat(b, 1),
            "index": torch.arange(b),
        }
    masks = (torch.arange(r)[None, :, None] * 3 // r).expand(b, r, r).contiguous()
    return {
        "view1": torch.randn(b, 3, r, r, generator=g),
        "view2": torch.randn(b, 3, r, r, generator=g),
        "mask1": masks,
        "mask2": masks.flip(1),
        "index": torch.arange(b),
        "step": 0,
    }


def test_registry_matches_config_group():
    """Every YAML of the `method` group has a class and every class a YAML."""
    assert set(METHODS) == set(group_options("method"))
    assert len(METHODS) >= 7  # the group is read, not empty (simclr ... soco)


def test_unknown_method_is_named():
    cfg = compose(["backbone=tiny"])
    cfg.method.name = "detcon_x"
    with pytest.raises(UnknownMethodError, match="detcon_x"):
        build_method(cfg.method, cfg.backbone, cfg.aug)


@pytest.mark.parametrize(
    ("name", "extra"),
    [(name, ()) for name in sorted(group_options("method"))]
    + [("soco", ("method.structure=c4", "method.roi_size=4"))],  # SoCo's C4 model
)
def test_each_method_trains_its_backbone(name, extra):
    torch.manual_seed(0)
    _, method = tiny(name, *extra)
    out = method(batch_for(method))
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert 0 < float(out["rep_std"]) <= 1  # every method reports the collapse monitor
    out["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    if method.targets:  # the EMA methods
        target = [m for m, _ in method.targets][0]
        before = [p.clone() for p in target.parameters()]
        for p in method.backbone.parameters():  # pretend an optimiser step
            p.data.add_(1.0)
        logs = method.update_target(0, 10)
        assert 0 < logs["ema_tau"] < 1
        assert any(not torch.equal(a, b) for a, b in zip(before, target.parameters(), strict=True))
        assert all(not p.requires_grad for p in target.parameters())


def test_ema_schedule_endpoints():
    assert ema_tau(0.996, 0, 100) == pytest.approx(0.996)
    assert ema_tau(0.996, 100, 100) == pytest.approx(1.0)
    assert ema_tau(0.996, 50, 100) == pytest.approx(0.998)


def test_global_mask_detcon_s_equals_simclr():
    """With one global mask (M=1) DetCon-S is SimCLR: loss = NT-Xent summed over both views."""
    torch.manual_seed(0)
    _, simclr = tiny("simclr", "method.temperature=0.2")
    torch.manual_seed(0)
    _, detcon = tiny("detcon_s", "method.temperature=0.2", "method.num_masks=1")
    batch = batch_for(detcon)
    batch["mask1"] = torch.zeros_like(batch["mask1"])
    batch["mask2"] = torch.zeros_like(batch["mask2"])
    assert float(detcon(batch)["loss"]) == pytest.approx(2 * float(simclr(batch)["loss"]), rel=1e-5)


def test_global_mask_pooling_is_global_average_pooling():
    """DetCon-B with a global mask pools exactly BYOL's features."""
    _, method = tiny("detcon_b")
    x = torch.randn(3, 3, 32, 32)
    feats = method.backbone(x)
    pooled = pool_masks(torch.zeros(3, 32, 32, dtype=torch.long), feats.shape[-2:])
    ids, masks, _ = sample_mask_ids(pooled, pooled, 2)
    assert torch.equal(ids, torch.zeros_like(ids))
    got = mask_pool_features(feats, masks)  # [B, M, C]
    assert torch.allclose(got[:, 0], method.backbone.pooled(x), atol=1e-6)


def test_hashed_mask_samples_do_not_depend_on_batch_position():
    masks = torch.randint(0, 9, (6, 32, 32))
    pooled = pool_masks(masks, (4, 4))
    index = torch.tensor([10, 11, 12, 13, 14, 15])
    ids, _, _ = sample_mask_ids(pooled, pooled, 5, uniform=hashed_uniform(index, 7, 5))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    ids_p, _, _ = sample_mask_ids(
        pooled[perm], pooled[perm], 5, uniform=hashed_uniform(index[perm], 7, 5)
    )
    assert torch.equal(ids[perm], ids_p)
    present = pooled.sum(-1) > 0  # every sampled id is present in the image
    assert bool(present.gather(1, ids).all())
    # roughly uniform over present ids across many keys
    u = hashed_uniform(torch.arange(5000), 3, 4)
    assert 0.45 < float(u.mean()) < 0.55 and float(u.min()) >= 0 and float(u.max()) < 1


def test_embedding_std_reads_collapse():
    from detlab.methods.models.base import embedding_std

    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, 64, generator=gen)
    # isotropic unit vectors in D dims: per-dimension std 1/sqrt(D)
    assert float(embedding_std(spread)) == pytest.approx(64**-0.5, rel=0.05)
    collapsed = torch.ones(4096, 64) + 1e-4 * spread
    assert float(embedding_std(collapsed)) < 1e-3
    assert torch.isnan(embedding_std(spread[:1]))  # one sample: no spread to measure


def test_embedding_std_keep_equals_indexing():
    """The masked form (no host sync on a GPU) is the std of the kept rows, [B, M, D] too."""
    from detlab.methods.models.base import embedding_std

    gen = torch.Generator().manual_seed(1)
    z = torch.randn(6, 5, 16, generator=gen)  # [B, M, D]
    keep = torch.rand(6, 5, generator=gen) < 0.6
    assert 2 <= int(keep.sum()) < 30
    expected = float(embedding_std(z[keep]))
    assert float(embedding_std(z, keep=keep)) == pytest.approx(expected, rel=1e-5)
    one = torch.zeros(6, 5, dtype=torch.bool)
    one[2, 3] = True
    assert torch.isnan(embedding_std(z, keep=one))  # a single kept row: no spread


def test_pool_masks_matches_the_reference_pooling():
    """One-hot, average pooling over H/h x W/w windows, argmax (ties to the lowest id),
    one-hot again: the official pooling, written out here at full size."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(2)
    masks = torch.randint(0, 5, (3, 32, 32), generator=gen)
    masks[0, :8, :8] = 7  # a whole cell of one id
    onehot = F.one_hot(masks, 16).permute(0, 3, 1, 2).float()  # [B, 16, H, W]
    avg = F.avg_pool2d(onehot, kernel_size=8).flatten(2)  # [B, 16, 16]
    expected = F.one_hot(avg.argmax(1), 16).permute(0, 2, 1).float()
    assert torch.equal(pool_masks(masks, (4, 4), max_mask_id=16), expected)
    with pytest.raises(ValueError, match=r"\[0, 16\), got range \[0, 16\]"):
        pool_masks(torch.where(masks == 7, 16, masks), (4, 4), max_mask_id=16)


def test_a_method_whose_config_class_is_not_the_named_one_is_refused(monkeypatch):
    """The torch-free METHOD_CONFIGS (what `detlab config` composes with) and each model's
    config_class must agree, or composing and building would use different schemas."""
    from detlab.methods import registry
    from detlab.methods.config import METHOD_CONFIGS, MethodConfig

    registry.check_configs()  # as shipped
    monkeypatch.setitem(METHOD_CONFIGS, "detcon_b", MethodConfig)
    with pytest.raises(RuntimeError, match="detcon_b: config_class DetConConfig != METHOD_CONFIGS"):
        registry.check_configs()


def test_soco_c4_regresses_v1_and_v2_boxes_through_res5_both_ways():
    """method.structure=c4 (the official SoCo_C4): -2 x the mean cosine of each image's valid
    boxes, online V1 -> target V2 and online V2 -> target V1, box features from res5 on C4
    RoIs; V3 is not used. Written out here from the heads and torch's cosine."""
    import torch.nn.functional as F

    from detlab.methods.heads import c4_box_features

    torch.manual_seed(0)
    _, soco = tiny("soco", "method.structure=c4", "method.roi_size=4")
    assert soco.neck is None and soco.target_neck is None
    batch = batch_for(soco)
    with torch.no_grad():
        out = soco(batch)

        def embed(encoder, projector, view):
            z = c4_box_features(encoder, batch[f"v{view}"], batch[f"boxes{view}"], 4)
            return projector(z.flatten(0, 1)).view(*z.shape[:2], -1)  # [B, K, D]

        pred = [
            soco.predictor(embed(soco.encoder, soco.projector, v).flatten(0, 1)) for v in (1, 2)
        ]
        target = [
            embed(soco.target_encoder, soco.target_projector, v).flatten(0, 1) for v in (1, 2)
        ]
    keep = batch["box_valid"].flatten()  # [B*K]; one valid box an image here
    expected = sum(-2 * F.cosine_similarity(p[keep], t[keep]).mean()
                   for p, t in ((pred[0], target[1]), (pred[1], target[0])))  # fmt: skip
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-5)
    batch["v3"] = torch.full_like(batch["v3"], float("nan"))  # V3 unread
    assert torch.isfinite(soco(batch)["loss"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["method.structure=c5"], r"method.structure='c5' is not one of \('fpn', 'c4'\)"),
        (["method.structure=c4", "backbone.name=timm:resnet18"], "backbone.name=timm:resnet18"),
    ],
)
def test_soco_structure_is_checked_when_built(extra, message):
    with pytest.raises(ValueError, match=message):
        tiny("soco", *extra)

"""Evaluation protocols: known-structure features, hand-built predictions and detections,
tiny real runs on `shapes`, and metrics written into the pretraining MLflow run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from detlab.methods.eval import EvalError, run_eval
from detlab.methods.eval.det import coco_ap
from detlab.methods.eval.knn import knn_classify
from detlab.methods.eval.linear import linear_probe
from detlab.methods.eval.seg import confusion_matrix, miou
from detlab.platform.compose import compose


def clusters(n_per=40, classes=5, dim=16, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    labels = torch.arange(classes).repeat_interleave(n_per)
    feats = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return feats, labels


@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_probes_separate_clusters_and_fall_to_chance_on_shuffled_labels(probe):
    ftr, ltr = clusters(seed=0)
    fva, lva = clusters(seed=0, n_per=20)  # same centres, new noise
    fva = fva + 0.3 * torch.randn(fva.shape, generator=torch.Generator().manual_seed(9))

    def run(train_labels):
        if probe == "knn":
            return knn_classify(ftr, train_labels, fva, lva, k=10, num_classes=5)
        return linear_probe(ftr, train_labels, fva, lva, 5, epochs=50)

    assert run(ltr)["top1"] > 0.95
    shuffled = ltr[torch.randperm(len(ltr), generator=torch.Generator().manual_seed(1))]
    assert run(shuffled)["top1"] < 0.45  # chance is 0.2


def test_knn_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    ftr, fva = torch.randn(50, 8, generator=g), torch.randn(12, 8, generator=g)
    ltr, lva = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (12,), generator=g)
    k, t = 7, 0.1
    correct = 0
    for q, y in zip(fva, lva, strict=True):
        sims = [float(torch.nn.functional.cosine_similarity(q, x, dim=0)) for x in ftr]
        order = sorted(range(50), key=lambda i: -sims[i])[:k]
        votes = [0.0] * 4
        for i in order:
            votes[int(ltr[i])] += float(np.exp(sims[i] / t))
        correct += int(np.argmax(votes) == int(y))
    got = knn_classify(ftr, ltr, fva, lva, k=k, temperature=t, num_classes=4, chunk=5)
    assert got["top1"] == pytest.approx(correct / 12)


def test_miou_on_hand_built_predictions():
    target = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[3, 1, 0], [0, 3, 0], [0, 0, 0]]
    mean, per_class = miou(conf)
    # class 0: 3 / (4 + 3 - 3) = 0.75; class 1: 3 / (3 + 4 - 3) = 0.75; class 2 absent
    assert per_class[:2] == [0.75, 0.75] and np.isnan(per_class[2])
    assert mean == pytest.approx(0.75)


def _gt():
    return {
        "images": [{"id": 0, "height": 20, "width": 20}],
        "annotations": [
            {
                "id": 1,
                "image_id": 0,
                "category_id": 1,
                "bbox": [2, 2, 8, 8],
                "area": 64.0,
                "iscrowd": 0,
            }
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "square"}],
    }


def test_coco_ap_perfect_and_empty():
    perfect = [{"image_id": 0, "category_id": 1, "bbox": [2, 2, 8, 8], "score": 0.9}]
    assert coco_ap(_gt(), perfect, "bbox")["ap"] == pytest.approx(1.0)
    assert coco_ap(_gt(), [], "bbox")["ap"] == 0.0
    wrong = [{"image_id": 0, "category_id": 1, "bbox": [12, 12, 6, 6], "score": 0.9}]
    assert coco_ap(_gt(), wrong, "bbox")["ap"] == 0.0


def tiny_eval(root, protocol, *extra):
    cfg = compose(["backbone=tiny", f"data.root={root}", f"eval={protocol}",
                   "eval.resolution=48", *extra])  # fmt: skip
    torch.manual_seed(0)
    from detlab.methods.backbones import build_backbone

    return cfg, build_backbone(cfg.backbone)


def test_seg_probe_and_detection_run_on_shapes(tiny_shapes, tmp_path):
    cfg, bb = tiny_eval(tiny_shapes, "seg", "eval.epochs=3")
    seg = run_eval(cfg.eval, bb, cfg.data, torch.device("cpu"), out_dir=tmp_path)
    assert 0.0 <= seg["seg_miou"] <= 1.0 and "seg_iou_circle" in seg
    assert (tmp_path / "seg_predictions.png").stat().st_size > 1000
    cfg, bb = tiny_eval(tiny_shapes, "det", "eval.steps=3", "eval.batch_size=2")
    det = run_eval(cfg.eval, bb, cfg.data, torch.device("cpu"), out_dir=tmp_path)
    for key in ("det_ap_bb", "det_ap50_bb", "det_ap75_bb", "det_ap_mk"):
        assert 0.0 <= det[key] <= 1.0


def test_a_diverging_seg_head_stops_with_a_one_line_error(tiny_shapes):
    cfg, bb = tiny_eval(tiny_shapes, "seg", "eval.head=fpn", "eval.epochs=50", "eval.lr=1e12")
    with pytest.raises(FloatingPointError, match=r"seg probe \(head=fpn\) loss is .* eval.lr"):
        run_eval(cfg.eval, bb, cfg.data, torch.device("cpu"))


def test_protocol_needs_its_labels(tmp_path):
    from PIL import Image

    for split in ("train", "val"):  # an ImageFolder: labels, but no masks or instances
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / split / c / "x.png")
    cfg, bb = tiny_eval(tmp_path, "seg", "data.format=imagefolder")
    with pytest.raises(EvalError, match="eval=seg needs semantic masks"):
        run_eval(cfg.eval, bb, cfg.data, torch.device("cpu"))


def test_eval_by_run_id_logs_into_that_run(tiny_shapes, tiny_overrides, tmp_path, capsys):
    from detlab.platform.evaluate import eval_command
    from detlab.platform.train import train

    pre = compose(tiny_overrides(tmp_path, method="byol", steps=1))
    res = train(pre)
    cfg = compose(["backbone=tiny", f"data.root={tiny_shapes}", "eval=knn", "eval.resolution=32",
                   f"checkpoint={res.run_id}", f"tracking.uri={pre.tracking.uri}"])  # fmt: skip
    assert eval_command(cfg) == 0
    run = MlflowClient(pre.tracking.uri).get_run(res.run_id)
    assert 0.0 <= run.data.metrics["knn_top1"] <= 1.0
    assert "knn_top1" in capsys.readouterr().out
    wrong = compose(["backbone=resnet18", f"data.root={tiny_shapes}", "eval=knn",
                     f"checkpoint={res.run_id}", f"tracking.uri={pre.tracking.uri}"])  # fmt: skip
    assert eval_command(wrong) == 2
    assert "does not match backbone config" in capsys.readouterr().err
    # no eval.resolution: the probe runs at the checkpoint's pretraining resolution
    default = compose(["backbone=tiny", f"data.root={tiny_shapes}", "eval=knn",
                       f"checkpoint={res.run_id}", f"tracking.uri={pre.tracking.uri}"])  # fmt: skip
    assert eval_command(default) == 0
    assert f"at {pre.aug.resolution} px" in capsys.readouterr().out
    # a store that does not hold the run: printed with a one-line warning, no traceback
    elsewhere = compose(["backbone=tiny", f"data.root={tiny_shapes}", "eval=knn",
                         f"checkpoint={res.checkpoint}",
                         f"tracking.uri=sqlite:///{tmp_path}/other.db"])  # fmt: skip
    assert eval_command(elsewhere) == 0
    out = capsys.readouterr()
    assert "knn_top1" in out.out and "is not in tracking.uri" in out.err


def test_object_miou_leaves_background_out():
    from detlab.methods.eval.seg import seg_scores

    conf = torch.tensor([[90, 10, 0], [5, 5, 0], [0, 0, 10]])  # rows: truth bg, a, b
    out = seg_scores(conf, ["background", "a", "b"])
    iou = {"background": 90 / 105, "a": 5 / 20, "b": 1.0}
    assert out["iou_background"] == pytest.approx(iou["background"])
    assert out["miou_objects"] == pytest.approx((iou["a"] + iou["b"]) / 2)
    assert out["miou"] == pytest.approx(sum(iou.values()) / 3)


def test_linear_seg_probe_recovers_a_linearly_readable_labelling():
    """Features that carry the label (one-hot, plus noise) at 8x8: the L-BFGS probe must
    read labels back at 32x32 almost perfectly; pure-noise features must not."""
    from detlab.methods.eval.seg import confusion_matrix, fit_linear_seg, predict_linear_seg

    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 3, (40, 8, 8), generator=gen)
    labels = coarse.repeat_interleave(4, 1).repeat_interleave(4, 2)  # [40, 32, 32]
    onehot = torch.nn.functional.one_hot(coarse, 3).permute(0, 3, 1, 2).float()
    noise = torch.randn(40, 5, 8, 8, generator=gen)
    for feats, expect_good in ((torch.cat([3 * onehot, noise], 1), True), (noise, False)):
        mean, std, head = fit_linear_seg(feats[:30], labels[:30], 3, 50, 1e-4)
        pred = predict_linear_seg(feats[30:], mean, std, head, (32, 32))
        conf = confusion_matrix(pred, labels[30:], 3)
        acc = float(conf.diag().sum() / conf.sum())
        assert (acc > 0.85) if expect_good else (acc < 0.6), acc


def test_linear_seg_probe_fits_on_at_most_max_pixels():
    """max_pixels >= all labelled pixels changes nothing; fewer: a fixed subset (the same on
    every call), a different fit that reads the labelling as well."""
    from detlab.methods.eval.seg import confusion_matrix, fit_linear_seg, predict_linear_seg

    gen = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 3, (40, 8, 8), generator=gen)
    labels = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)  # [40, 16, 16]
    onehot = torch.nn.functional.one_hot(coarse, 3).permute(0, 3, 1, 2).float()
    feats = torch.cat([onehot, torch.randn(40, 5, 8, 8, generator=gen)], 1)
    total = 30 * 16 * 16  # the fit reads the features upsampled to the labels' 16x16

    def fit(max_pixels):
        return fit_linear_seg(feats[:30], labels[:30], 3, 50, 1e-4, True, max_pixels)

    everything, same = fit(None), fit(total)
    assert torch.equal(everything[2].weight, same[2].weight)
    sub, sub_again = fit(total // 8), fit(total // 8)
    assert torch.equal(sub[2].weight, sub_again[2].weight)  # fixed pixels, deterministic
    assert not torch.allclose(sub[2].weight, everything[2].weight)  # fewer pixels, own fit
    pred = predict_linear_seg(feats[30:], *sub, (16, 16))
    conf = confusion_matrix(pred, labels[30:], 3)
    assert float(conf.diag().sum() / conf.sum()) > 0.85


def test_balanced_seg_probe_predicts_a_rare_class_that_plain_cross_entropy_drowns():
    """A rare class (5% of pixels) weakly marked in the features: the plain probe predicts
    background everywhere, the class-balanced probe (the default) finds the class."""
    from detlab.methods.eval.seg import fit_linear_seg, predict_linear_seg

    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(60, 8, 8, generator=gen) < 0.05).long()  # 1 = rare object
    feats = labels[:, None].float() * 0.6 + torch.randn(60, 4, 8, 8, generator=gen)
    iou = {}
    for balanced in (False, True):
        mean, std, head = fit_linear_seg(feats[:40], labels[:40], 2, 50, 1e-4, balanced)
        pred = predict_linear_seg(feats[40:], mean, std, head, (8, 8))
        iou[balanced] = miou(confusion_matrix(pred, labels[40:], 2))[1][1]
    assert iou[False] < 0.05 and iou[True] > iou[False] + 0.08, iou


def test_supervised_reference_learns_the_labels(tiny_shapes):
    """The supervised reference must reach a segmentation probe score a random init does not."""
    from detlab.methods.backbones import build_backbone
    from detlab.methods.datasets import open_dataset
    from detlab.methods.eval.seg import (
        confusion_matrix,
        dense_features,
        fit_linear_seg,
        load_split,
        miou,
        predict_linear_seg,
    )  # fmt: skip
    from detlab.methods.eval.supervised import train_supervised

    cfg = compose(["backbone=small", "backbone.width=0.125"]).backbone
    images = open_dataset(str(tiny_shapes), "train")
    x, y = load_split(images, 32)
    scores = []
    for steps in (0, 60):
        torch.manual_seed(0)
        backbone = train_supervised(build_backbone(cfg), images, resolution=32, steps=steps,
                                    batch_size=8, crop_scale=(0.5, 1.0), lr=3e-3)  # fmt: skip
        feats = dense_features(backbone, x, 16, torch.device("cpu"))
        mean, std, head = fit_linear_seg(feats, y, images.num_seg_classes, 50, 1e-4)
        pred = predict_linear_seg(feats, mean, std, head, y.shape[-2:])  # train fit
        scores.append(miou(confusion_matrix(pred, y, images.num_seg_classes))[0])
    assert scores[1] > scores[0] + 0.05, scores


def test_supervised_reference_learns_image_classes_on_a_classification_dataset(tiny_fmnist):
    """Without segmentation labels the supervised reference trains on the image classes
    (Fashion-MNIST): its features then separate the classes far better than a random init's
    (between-class over within-class variance of the normalised pooled features)."""
    from detlab.methods.backbones import build_backbone
    from detlab.methods.datasets import open_dataset
    from detlab.methods.eval.seg import load_image
    from detlab.methods.eval.supervised import train_supervised

    cfg = compose(["backbone=small", "backbone.width=0.125"]).backbone
    images = open_dataset(str(tiny_fmnist), "train")
    assert not images.has_semantic
    x = torch.stack([load_image(images, i, 32) for i in range(len(images))])
    y = torch.tensor([r.label for r in images.records])
    ratios = []
    for steps in (0, 60):
        torch.manual_seed(0)
        backbone = train_supervised(build_backbone(cfg), images, resolution=32, steps=steps,
                                    batch_size=8, crop_scale=(0.5, 1.0), lr=3e-3)  # fmt: skip
        with torch.no_grad():
            f = torch.nn.functional.normalize(backbone.pooled(x), dim=1)  # [N, C]
        means = torch.stack([f[y == k].mean(0) for k in range(10)])  # [10, C]
        within = ((f - means[y]) ** 2).sum(1).mean()
        between = ((means - f.mean(0)) ** 2).sum(1).mean()
        ratios.append(float(between / within))
    assert ratios[1] > 3 * ratios[0], ratios  # measured: 13 -> 150

"""The facade (platform/run.py): one way to run and evaluate, for the CLI, sweeps and DVC.
Its SLURM path is exercised by the cluster tests (README's SLURM commands, preemption)."""

from __future__ import annotations

import signal

import pytest
from omegaconf import OmegaConf

from detlab.platform.compose import compose
from detlab.platform.run import evaluate, pretrain


def test_pretrain_here_then_evaluate_a_checkpoint_like_its_backbone(tiny_overrides, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    cfg = compose(tiny_overrides(tmp_path, "train.knn_every=2", method="simclr", steps=2))
    result = pretrain(cfg)
    assert result.status == "completed" and result.step == 2
    assert result.checkpoint == str(tmp_path / "run" / "checkpoint.pt")
    assert "knn_top1" in result.metrics
    assert signal.getsignal(signal.SIGTERM) is before  # a library call leaves signals alone

    from detlab.platform.checkpoint import load_backbone

    knn = OmegaConf.merge(cfg.eval, {"name": "knn", "max_images": 16})
    from_path = evaluate(knn, cfg.data, cfg.backbone, result.checkpoint, device="cpu")
    by_run_id = evaluate(knn, cfg.data, cfg.backbone, result.run_id, device="cpu",
                         tracking_uri=cfg.tracking.uri)  # fmt: skip
    in_hand = load_backbone(result.checkpoint, cfg.backbone)
    knn_at = OmegaConf.merge(knn, {"resolution": cfg.aug.resolution})  # a module has no run
    from_module = evaluate(knn_at, cfg.data, cfg.backbone, in_hand, device="cpu")
    assert from_path == by_run_id == from_module and 0 <= from_path["knn_top1"] <= 1


def test_pretrain_refuses_callbacks_for_a_run_elsewhere(tiny_overrides, tmp_path):
    cfg = compose(tiny_overrides(tmp_path, "cluster=slurm"))
    with pytest.raises(ValueError, match="here=True"):
        pretrain(cfg, on_metrics=lambda step, metrics: None)

import os

import pytest
import torch

from detlab.platform import checkpoint as ckpt


def test_save_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "c" / "checkpoint.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT, "x": torch.arange(3)}, path)
    ckpt.save_atomic({"format": ckpt.FORMAT, "x": torch.arange(4)}, path)
    assert torch.equal(ckpt.load(path)["x"], torch.arange(4))
    assert os.listdir(path.parent) == ["checkpoint.pt"]


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_atomic({"format": ckpt.FORMAT, "v": 1}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_atomic({"format": ckpt.FORMAT, "v": 2}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["v"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_missing_and_corrupt_checkpoint_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        ckpt.load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="bad.pt"):
        ckpt.load(bad)


def test_rng_roundtrip():
    state = ckpt.rng_state()
    a = torch.rand(3)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)


def test_rng_state_round_trips_through_a_safe_checkpoint(tmp_path):
    import random

    import numpy as np
    import torch

    from detlab.platform import checkpoint as ckpt

    np.random.seed(3)
    random.seed(3)
    path = ckpt.save_atomic({"format": ckpt.FORMAT, "rng": ckpt.rng_state()}, tmp_path / "c.pt")
    expect = (np.random.rand(3), random.random(), torch.rand(2))
    ckpt.set_rng_state(ckpt.load(path)["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(2))
    assert np.array_equal(expect[0], got[0]) and expect[1] == got[1]
    assert torch.equal(expect[2], got[2])

"""Pretraining data: ResumableSampler (rank sharding, exact resume) and the datasets."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from detlab.methods.data import PretrainDataError, ResumableSampler


def global_batches(n, B, seed, epoch, world=1, drop_last=True):
    """Per global batch: the concatenation of every rank's batch (rank order)."""
    per_rank = []
    for r in range(world):
        s = ResumableSampler(n, B, seed, rank=r, world_size=world, drop_last=drop_last)
        s.set_epoch(epoch)
        idx = list(s)
        assert len(idx) == len(s)
        b = B // world
        per_rank.append([idx[i : i + b] for i in range(0, len(idx), b)])
    return [sum((per_rank[r][t] for r in range(world)), []) for t in range(len(per_rank[0]))]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_each_global_batch_contiguously(world):
    n, B = 37, 8
    single = global_batches(n, B, seed=3, epoch=1)
    assert global_batches(n, B, seed=3, epoch=1, world=world) == single
    assert len(single) == n // B and all(len(b) == B for b in single)
    flat = sum(single, [])
    assert len(set(flat)) == len(flat) and set(flat) <= set(range(n))
    # rank 0 holds the first B/world images of every global batch
    s0 = ResumableSampler(n, B, 3, rank=0, world_size=world)
    s0.set_epoch(1)
    first = list(s0)[: B // world]
    assert first == single[0][: B // world]


def test_epochs_and_seeds_give_different_deterministic_orders():
    a = global_batches(50, 10, seed=0, epoch=0)
    assert a == global_batches(50, 10, seed=0, epoch=0)
    assert a != global_batches(50, 10, seed=0, epoch=1)
    assert a != global_batches(50, 10, seed=1, epoch=0)
    assert sum(a, []) != list(range(50))  # shuffled
    assert sorted(sum(a, [])) == list(range(50))  # 50 = 5 full batches: a permutation


def test_drop_last_false_pads_the_last_global_batch():
    batches = global_batches(23, 8, seed=0, epoch=0, world=2, drop_last=False)
    assert len(batches) == 3 and all(len(b) == 8 for b in batches)
    assert set(sum(batches, [])) == set(range(23))


def loader_batches(sampler, per_rank):
    data = list(range(1000))
    loader = DataLoader(data, batch_size=per_rank, sampler=sampler, drop_last=True)
    return [b.tolist() for b in loader]


def test_resume_mid_epoch_continues_the_exact_order():
    """What train() does on resume: set_epoch, then set_start_batch from the step count."""
    n, B, world = 40, 8, 2
    for rank in range(world):
        full = ResumableSampler(n, B, 7, rank=rank, world_size=world)
        full.set_epoch(2)
        reference = loader_batches(full, B // world)

        first = ResumableSampler(n, B, 7, rank=rank, world_size=world)
        first.set_epoch(2)
        it = iter(DataLoader(list(range(1000)), batch_size=B // world, sampler=first))
        seen = [next(it).tolist() for _ in range(3)]  # stopped after 3 steps

        resumed = ResumableSampler(n, B, 7, rank=rank, world_size=world)
        resumed.set_epoch(2)
        resumed.set_start_batch(3)
        rest = loader_batches(resumed, B // world)
        assert seen + rest == reference
        # after a completed epoch the sampler starts the next pass from batch 0
        resumed.set_epoch(3)
        assert len(loader_batches(resumed, B // world)) == n // B


def test_start_batch_is_the_global_batch_of_the_epoch():
    s = ResumableSampler(16, 4, 0)
    s.set_epoch(0)
    s.set_start_batch(3)
    assert list(s) == list(torch.tensor(global_batches(16, 4, 0, 0)[3]).tolist())
    assert len(list(s)) == 16  # the next pass starts from batch 0 again
    s.set_start_batch(2)
    s.set_epoch(1)  # a new epoch resets the start
    assert len(list(s)) == 16


def test_sampler_errors_are_clear():
    with pytest.raises(PretrainDataError, match="multiple of the 3 ranks"):
        ResumableSampler(100, 8, 0, rank=0, world_size=3)
    with pytest.raises(PretrainDataError, match="cannot fill one global batch"):
        ResumableSampler(5, 8, 0)
    s = ResumableSampler(32, 8, 0)
    with pytest.raises(PretrainDataError, match="outside the epoch's 4 batches"):
        s.set_start_batch(5)


# ------------------------------------------------------------------------- datasets

R = 32


def cfgs(root, masks_name="fh", masks_path=None, kind="mask", resolution=R):
    from detlab.platform.config import AugConfig, DataConfig, MasksConfig

    data = DataConfig(root=str(root), format="auto")
    masks = MasksConfig(
        name=masks_name, path=None if masks_path is None else str(masks_path), kind=kind
    )
    return data, masks, AugConfig(resolution=resolution)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_mask_batches_have_the_contract_shapes(tiny_shapes, band_masks):
    from detlab.methods.data import build_pretrain_dataset

    ds = build_pretrain_dataset(*cfgs(tiny_shapes, "fh", band_masks), "mask", seed=0)
    assert len(ds) == 24 and ds.store is not None and ds.images.fingerprint
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=ds.collate)))
    assert set(batch) == {"view1", "view2", "mask1", "mask2", "index"}
    assert batch["view1"].shape == batch["view2"].shape == (4, 3, R, R)
    assert batch["view1"].dtype == torch.float32
    assert batch["mask1"].shape == (4, R, R) and batch["mask1"].dtype == torch.long
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["index"].dtype == torch.long
    # masks come from the store: horizontal bands 0..5, in order from top to bottom (no
    # vertical flips), so every row of a view's mask holds a single id
    m = batch["mask1"]
    assert m.max() <= 5 and (m == m[:, :, :1]).all()
    assert (m[:, 1:] >= m[:, :-1]).all()


def test_box_batches_have_the_contract_shapes(tiny_shapes, box_store):
    from detlab.methods.data import build_pretrain_dataset

    ds = build_pretrain_dataset(
        *cfgs(tiny_shapes, "ss", box_store, kind="boxes"), "boxes", seed=0, num_boxes=3
    )
    batch = next(iter(DataLoader(ds, batch_size=4, collate_fn=ds.collate)))
    assert batch["v1"].shape == batch["v2"].shape == (4, 3, R, R)
    assert batch["v3"].shape == (4, 3, R // 2, R // 2)
    for k in ("boxes1", "boxes2", "boxes3"):
        assert batch[k].shape == (4, 3, 4) and batch[k].dtype == torch.float32
    assert batch["box_valid"].shape == (4, 3) and batch["box_valid"].dtype == torch.bool
    assert batch["box_valid"].any(1).all()
    assert batch["index"].tolist() == [0, 1, 2, 3]


def test_global_none_and_grid_sources(tiny_shapes):
    from detlab.methods.data import build_pretrain_dataset, grid_mask

    for name, kind in (("global", "mask"), ("none", "none")):
        ds = build_pretrain_dataset(*cfgs(tiny_shapes, name, None, kind), "mask", seed=0)
        assert ds.store is None and ds[0]["mask1"].eq(0).all()
    ds = build_pretrain_dataset(*cfgs(tiny_shapes, "grid", None), "mask", seed=0)
    ids = ds[3]["mask1"].unique().tolist()
    assert len(ids) > 1 and set(ids) <= set(range(16))
    g = grid_mask(8, 12, 2)
    assert g.tolist() == [[0] * 6 + [1] * 6] * 4 + [[2] * 6 + [3] * 6] * 4
    # masks.grid_size is a schema key: composed (struct mode) and read by the dataset
    from detlab.platform.compose import compose

    cfg = compose(["masks=grid", "masks.path=null", "masks.grid_size=2"])
    data, _, aug = cfgs(tiny_shapes)
    ds = build_pretrain_dataset(data, cfg.masks, aug, "mask", seed=0)
    assert set(ds[3]["mask1"].unique().tolist()) <= {0, 1, 2, 3}


def test_same_seed_epoch_index_gives_identical_views(tiny_shapes, band_masks):
    from detlab.methods.data import build_pretrain_dataset

    args = (*cfgs(tiny_shapes, "fh", band_masks), "mask")
    a, b = build_pretrain_dataset(*args, seed=5), build_pretrain_dataset(*args, seed=5)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    x = a[7]
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    a[3]  # order does not matter
    assert same(x, b[7])
    assert not torch.equal(x["view1"], a[8]["view1"])  # different index
    b.set_epoch(1)
    assert not torch.equal(x["view1"], b[7]["view1"])  # different epoch
    b.set_epoch(0)
    assert same(x, b[7])
    c = build_pretrain_dataset(*args, seed=6)
    assert not torch.equal(x["view1"], c[7]["view1"])  # different seed


@pytest.mark.slow
def test_workers_do_not_change_the_batches(tiny_shapes, band_masks, box_store):
    """num_workers=0 and 2, with the resumable sampler: bit-identical batches.

    At 224 px some reductions (the contrast jitter's mean) are split across threads in the
    main process but not in the single-threaded workers: the dataset must pin one thread.
    """

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _compare_worker_counts(tiny_shapes, band_masks, box_store)
    finally:
        torch.set_num_threads(threads)


def _compare_worker_counts(tiny_shapes, band_masks, box_store):
    from detlab.methods.data import build_pretrain_dataset

    for kind, store, masks_name in (("mask", band_masks, "fh"), ("boxes", box_store, "ss")):
        c = cfgs(tiny_shapes, masks_name, store, kind=kind, resolution=224)
        ds = build_pretrain_dataset(*c, kind, seed=1)
        ds.set_epoch(2)
        runs = []
        for workers in (0, 2):
            sampler = ResumableSampler(len(ds), 8, seed=1)
            sampler.set_epoch(2)
            loader = DataLoader(
                ds, batch_size=8, sampler=sampler, num_workers=workers, collate_fn=ds.collate
            )
            runs.append(list(loader))
        assert len(runs[0]) == 3
        for x, y in zip(*runs, strict=True):
            assert same(x, y)


def test_fingerprint_mismatch_is_reported_up_front(other_shapes, band_masks):
    from detlab.methods.data import build_pretrain_dataset
    from detlab.pipelines.masks import MaskStoreError

    with pytest.raises(MaskStoreError):
        build_pretrain_dataset(*cfgs(other_shapes, "fh", band_masks), "mask", seed=0)


def test_configuration_errors_name_the_key(tiny_shapes, tmp_path, band_masks, box_store):
    from detlab.methods.data import PretrainDataError, build_pretrain_dataset

    missing = tmp_path / "missing"
    with pytest.raises(PretrainDataError) as err:
        build_pretrain_dataset(*cfgs(tiny_shapes, "fh", missing), "mask", seed=0)
    # the command named builds the set of this dataset, where it was looked for
    assert f"masks.path={missing} " in str(err.value)
    assert (f"`python -m detlab.pipelines.masks.run --method fh --data {tiny_shapes} "
            f"--out {missing}`") in str(err.value)  # fmt: skip
    command = shlex.split(str(err.value).split("`")[1])
    subprocess.run([sys.executable, *command[1:]], check=True, capture_output=True)
    assert len(build_pretrain_dataset(*cfgs(tiny_shapes, "fh", missing), "mask", seed=0)) > 0
    with pytest.raises(PretrainDataError, match="SoCo needs box proposals"):
        build_pretrain_dataset(*cfgs(tiny_shapes, "fh", band_masks), "boxes", seed=0)
    with pytest.raises(PretrainDataError, match="per-pixel masks"):
        build_pretrain_dataset(*cfgs(tiny_shapes, "ss", box_store, kind="boxes"), "mask", seed=0)
    with pytest.raises(PretrainDataError, match="input_kind"):
        build_pretrain_dataset(*cfgs(tiny_shapes, "global"), "pixels", seed=0)


def test_eval_dataset(tiny_shapes):
    from detlab.methods.data import build_eval_dataset
    from detlab.platform.config import DataConfig

    ds = build_eval_dataset(DataConfig(root=str(tiny_shapes)), "val", 32)
    assert len(ds) == 8
    x, label = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(label, int)
    assert label == ds.images.records[0].label
    assert torch.equal(ds[0][0], x)  # deterministic

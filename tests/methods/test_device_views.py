"""Views made on the training device (aug.views=device) against the CPU path they replace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detlab.methods.augment import build_pair_transform, build_soco_transform
from detlab.methods.config import AugConfig
from detlab.methods.device_views import DeviceViews, pad_collate
from detlab.methods.resample import resized_crop, resized_crop_nearest

# Views are normalised (ImageNet std ~0.225: one uint8 level is ~0.017). The uint8 CPU
# resize rounds in fixed point, the device path in float: a pixel may differ by one level
# before colour, which contrast and saturation may amplify a few times.
MAX_DIFF, MEAN_DIFF = 0.15, 0.01


def smooth_images(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        x = torch.randint(0, 256, (1, 3, h, w), generator=g).float()
        x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)[0]
        out.append(x.round().to(torch.uint8).permute(1, 2, 0).numpy().copy())  # [H, W, 3]
    return out


def test_resized_crop_equals_torchvision_per_sample():
    """Each window's antialiased bicubic resize (down and up) and flip, one batched op,
    within one uint8 level of torchvision's resized_crop; masks exactly its nearest."""
    h, w, r = 90, 120, 40
    x = torch.from_numpy(np.stack(smooth_images([(h, w)] * 5))).permute(0, 3, 1, 2)
    m = torch.randint(0, 9, (5, h, w))
    windows = torch.tensor([[0, 0, h, w], [10, 20, 50, 35], [3, 4, 20, 18], [0, 0, 40, 40],
                            [7, 9, 80, 100]])  # fmt: skip
    flip = torch.tensor([False, True, False, True, True])
    y, ym = resized_crop(x, windows, r, flip), resized_crop_nearest(m, windows, r, flip)
    for b in range(5):
        t, left, hh, ww = windows[b].tolist()
        ref = F.resized_crop(tv_tensors.Image(x[b]), t, left, hh, ww, [r, r],
                             interpolation=v2.InterpolationMode.BICUBIC, antialias=True)  # fmt: skip
        ref_m = F.resized_crop(tv_tensors.Mask(m[b]), t, left, hh, ww, [r, r])
        if flip[b]:
            ref, ref_m = F.horizontal_flip(ref), F.horizontal_flip(ref_m)
        assert (y[b] - ref.float()).abs().max() <= 1.0, b
        assert torch.equal(ym[b], ref_m.as_subclass(torch.Tensor)), b
    # a whole square image at its own size is itself
    square = x[:, :, :, :h]
    assert resized_crop(square, torch.tensor([[0, 0, h, h]] * 5), h).equal(square.float())


def views_both_ways(aug, images, masks, seed=100):
    cpu = build_pair_transform(aug, batched=True)
    dev = build_pair_transform(aug, batched=True, device_side=True)
    a, b = [], []
    for i, (im, m) in enumerate(zip(images, masks, strict=True)):
        torch.manual_seed(seed + i)
        a.append(cpu(im, m))
        torch.manual_seed(seed + i)
        b.append(dev(im, m))
    photo = torch.stack([s["photo1"] for s in a]), torch.stack([s["photo1"] for s in b])
    return cpu.finish(default_collate(a)), DeviceViews(dev)(pad_collate(b)), photo


@pytest.mark.parametrize("with_masks", [True, False])
def test_pair_views_on_the_device_equal_the_cpu_path(with_masks):
    """Same per-sample seed -> the same draws; images of different sizes in one batch."""
    aug = AugConfig(resolution=32, crop_scale=[0.2, 1.0], blur_p=[0.5, 0.5],
                    solarize_p=[0.3, 0.3])  # fmt: skip
    images = smooth_images([(48, 64), (60, 40), (48, 48), (70, 90), (33, 50), (64, 64)])
    masks = [np.random.default_rng(i).integers(0, 6, im.shape[:2]) for i, im in enumerate(images)]
    cpu, dev, (p_cpu, p_dev) = views_both_ways(aug, images, masks if with_masks else [None] * 6)
    assert torch.equal(p_cpu, p_dev)  # the colour parameters: the same draws
    for k in ("view1", "view2"):
        assert dev[k].shape == cpu[k].shape == (6, 3, 32, 32)
        diff = (dev[k] - cpu[k]).abs()
        assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, (k, diff.max(), diff.mean())
    for k in ("mask1", "mask2"):
        assert dev[k].dtype == torch.int64 and torch.equal(dev[k], cpu[k])  # geometry exact


def test_parameter_statistics_are_torchvisions():
    """The windows drawn for the device follow RandomResizedCrop's law: area fraction and
    aspect ratio moments match an independent torchvision sample of the same size."""
    aug = AugConfig(resolution=32, crop_scale=[0.25, 1.0])
    dev = build_pair_transform(aug, device_side=True)
    img = np.zeros((80, 120, 3), np.uint8)
    torch.manual_seed(0)
    g = torch.stack([dev(img)["geom1"] for _ in range(3000)]).double()
    rrc = v2.RandomResizedCrop(32, scale=(0.25, 1.0))
    torch.manual_seed(1)
    ref = [rrc.make_params([tv_tensors.Image(torch.zeros(3, 80, 120))]) for _ in range(3000)]
    ref = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in ref]).double()
    for x in (g, ref):  # the windows stay inside the image
        assert (x[:, 0] >= 0).all() and (x[:, 0] + x[:, 2] <= 80).all()
        assert (x[:, 1] >= 0).all() and (x[:, 1] + x[:, 3] <= 120).all()
    area = g[:, 2] * g[:, 3] / 9600, ref[:, 2] * ref[:, 3] / 9600
    ratio = (g[:, 3] / g[:, 2]).log(), (ref[:, 3] / ref[:, 2]).log()
    for a, b in (area, ratio):  # ~4-5 standard errors of the mean
        assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() - b.std()) < 0.02
    assert 0.4 < g[:, 4].mean() < 0.6  # flips


def test_soco_views_on_the_device_equal_the_cpu_path():
    aug = AugConfig(resolution=32)
    cpu, dev = build_soco_transform(aug, 4), build_soco_transform(aug, 4, device_side=True)
    images = smooth_images([(64, 80), (48, 48), (90, 60)])
    boxes = np.array([[5, 5, 40, 40], [10, 20, 60, 44], [0, 0, 30, 47]], np.float32)
    a, b = [], []
    for i, im in enumerate(images):
        torch.manual_seed(7 + i)
        a.append(cpu(im, boxes))
        torch.manual_seed(7 + i)
        b.append(dev(im, boxes))
    a, b = default_collate(a), DeviceViews(dev)(pad_collate(b))
    for k in ("boxes1", "boxes2", "boxes3", "box_valid"):
        assert torch.equal(a[k], b[k]), k
    for k, side in (("v1", 32), ("v2", 32), ("v3", 16)):
        assert b[k].shape == (3, 3, side, side)
        diff = (a[k] - b[k]).abs()
        assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, (k, diff.max(), diff.mean())


def test_device_views_refuse_a_cpu_transform():
    with pytest.raises(ValueError, match="device_side=True"):
        DeviceViews(build_pair_transform(AugConfig(resolution=32)))


class _Sizes(torch.utils.data.Dataset):
    """Images [3, H, W] as decoders give them (views of HWC memory), H varying."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        image = torch.randint(0, 255, (20 + i, 30, 3), dtype=torch.uint8, generator=g)
        return {
            "image": image.permute(2, 0, 1),
            "mask": torch.full((20 + i, 30), i + 1),
            "index": i,
        }


@pytest.mark.parametrize("workers", [0, 2])
def test_pad_collate_pads_with_zeros_and_ships_from_workers(workers):
    """Each sample at the top left of a zero canvas of the batch's largest size, the
    decoder's HWC layout kept, in shared memory when a worker collates it."""
    loader = torch.utils.data.DataLoader(_Sizes(), batch_size=3, collate_fn=pad_collate,
                                         num_workers=workers)  # fmt: skip
    for batch in loader:
        image, mask = batch["image"], batch["mask"]
        assert image.shape[1:] == (3, image.shape[2], 30) and image.stride(1) == 1  # HWC
        assert image.is_shared() == (workers > 0)
        for b, i in enumerate(batch["index"].tolist()):
            h = 20 + i
            assert torch.equal(image[b, :, :h], _Sizes()[i]["image"])
            assert (image[b, :, h:] == 0).all() and (mask[b, h:] == 0).all()
            assert (mask[b, :h] == i + 1).all()


@pytest.mark.parametrize("kind", ["pair", "soco"])
def test_device_views_read_nothing_on_the_host(kind):
    """The GPU path (sync_free) hands no tensor value to Python: no sync per batch."""
    from tests.methods.test_host_reads import HostReads

    aug = AugConfig(resolution=32)
    images = smooth_images([(48, 64), (60, 40), (40, 40)])
    if kind == "pair":
        t = build_pair_transform(aug, device_side=True)
        samples = [t(im, np.ones(im.shape[:2], np.uint8)) for im in images]
    else:
        t = build_soco_transform(aug, 4, device_side=True)
        samples = [t(im, np.array([[2, 2, 30, 30]], np.float32)) for im in images]
    batch = pad_collate(samples)
    with HostReads() as reads:
        DeviceViews(t, sync_free=True)(batch)
    assert not reads.found, reads.found

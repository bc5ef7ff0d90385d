"""`detlab import-weights`: checkpoints built here in each source's exact layout (tiny
widths, random values) convert to torchvision names with every tensor where it must be;
DetCon's Haiku weights reproduce a Haiku-layout forward written independently below."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet as tv

from detlab.methods.weights import build_resnet, tf_same
from detlab.platform.cli import main

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ a Haiku DetCon file


def haiku_resnet(layers, channels, stem=8, root="res_net50/~/") -> dict:
    """Haiku names as google-deepmind/detcon's ResNetTorso (bottleneck v1) lays them out."""

    def conv(k, cin, cout):
        return {"w": RNG.normal(0, 1 / math.sqrt(k * k * cin), (k, k, cin, cout)).astype("f4")}

    def bn(c, path, tree):
        tree[path] = {"scale": RNG.uniform(0.5, 1.5, (1, 1, 1, c)).astype("f4"),
                      "offset": RNG.normal(0, 0.1, (1, 1, 1, c)).astype("f4")}  # fmt: skip
        for ema, value in (
            ("mean_ema", RNG.normal(0, 0.1, c)),
            ("var_ema", RNG.uniform(0.5, 2, c)),
        ):
            tree[f"{path}/~/{ema}"] = {"average": value.reshape(1, 1, 1, c).astype("f4"),
                                       "hidden": np.zeros((1, 1, 1, c), "f4"),
                                       "counter": np.array(7, "i4")}  # fmt: skip

    tree = {f"{root}initial_conv": conv(7, 3, stem)}
    bn(stem, f"{root}initial_batchnorm", tree)
    cin = stem
    for g, (n, c) in enumerate(zip(layers, channels, strict=True)):
        for b in range(n):
            p = f"{root}block_group_{g}/~/block_{b}/~/"
            if b == 0:
                tree[p + "shortcut_conv"] = conv(1, cin, c)
                bn(c, p + "shortcut_batchnorm", tree)
            for i, (k, a, z) in enumerate(((1, cin, c // 4), (3, c // 4, c // 4), (1, c // 4, c))):
                tree[p + f"conv_{i}"] = conv(k, a, z)
                bn(z, p + f"batchnorm_{i}", tree)
            cin = c
    tree["projector/~/linear"] = {"w": np.ones((cin, 4), "f4"), "b": np.zeros(4, "f4")}
    tree["predictor/~/linear"] = {"w": np.ones((4, 4), "f4"), "b": np.zeros(4, "f4")}
    tree["classifier"] = {"w": RNG.normal(0, 1, (cin, 5)).astype("f4"),
                          "b": RNG.normal(0, 1, 5).astype("f4")}  # fmt: skip
    return tree


def haiku_forward(tree: dict, x: torch.Tensor, root="res_net50/~/") -> torch.Tensor:
    """Haiku's ResNet v1 forward, eval mode, NHWC, SAME padding: [B, H, W, 3] -> [B, C]."""

    def same(x, k, s, value=0.0):  # TF: pad_total = max((ceil(n/s)-1)*s + k - n, 0)
        pads = []
        for n in (x.shape[2], x.shape[1]):  # W then H, F.pad's order (NHWC: dims -2, -3)
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.pad(x, (0, 0, *pads), value=value)

    def conv(x, path, s):
        w = torch.from_numpy(tree[path]["w"])  # [kh, kw, in, out]
        y = F.conv2d(same(x, w.shape[0], s).permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), stride=s)
        return y.permute(0, 2, 3, 1)

    def bn(x, path):
        p, m = tree[path], tree[f"{path}/~/mean_ema"]["average"]
        v = tree[f"{path}/~/var_ema"]["average"]
        return (x - torch.from_numpy(m)) / torch.sqrt(torch.from_numpy(v) + 1e-5) * \
            torch.from_numpy(p["scale"]) + torch.from_numpy(p["offset"])  # fmt: skip

    x = torch.relu(bn(conv(x, f"{root}initial_conv", 2), f"{root}initial_batchnorm"))
    x = F.max_pool2d(same(x, 3, 2, float("-inf")).permute(0, 3, 1, 2), 3, 2).permute(0, 2, 3, 1)
    g = 0
    while f"{root}block_group_{g}/~/block_0/~/conv_0" in tree:
        b = 0
        while (p := f"{root}block_group_{g}/~/block_{b}/~/") + "conv_0" in tree:
            s = 2 if g > 0 and b == 0 else 1
            short = bn(conv(x, p + "shortcut_conv", s), p + "shortcut_batchnorm") if b == 0 else x
            y = torch.relu(bn(conv(x, p + "conv_0", 1), p + "batchnorm_0"))
            y = torch.relu(bn(conv(y, p + "conv_1", s), p + "batchnorm_1"))
            x = torch.relu(bn(conv(y, p + "conv_2", 1), p + "batchnorm_2") + short)
            b += 1
        g += 1
    return x.mean(dim=(1, 2))


@pytest.fixture
def detcon_file(tmp_path):
    tree = haiku_resnet([1, 2, 1, 1], [16, 32, 32, 64])
    path = tmp_path / "resnet50_detcon_b_imagenet_1k.npy"
    np.save(path, tree, allow_pickle=True)
    return path, tree


def test_detcon_weights_land_in_torchvision_names(detcon_file, tmp_path, capsys):
    src, tree = detcon_file
    out = tmp_path / "detcon.pt"
    assert main(["import-weights", "format=detcon", f"src={src}", f"out={out}",
                 "keep_head=true"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "build_resnet" in printed and "tf_same" in printed
    sd = torch.load(out, weights_only=True)
    r = "res_net50/~/"
    w = torch.from_numpy(tree[f"{r}initial_conv"]["w"]).permute(3, 2, 0, 1)
    assert torch.equal(sd["conv1.weight"], w)
    blk = f"{r}block_group_1/~/block_1/~/"
    assert torch.equal(sd["layer2.1.conv2.weight"],
                       torch.from_numpy(tree[blk + "conv_1"]["w"]).permute(3, 2, 0, 1))  # fmt: skip
    assert torch.equal(sd["layer2.1.bn3.weight"],
                       torch.from_numpy(tree[blk + "batchnorm_2"]["scale"]).flatten())  # fmt: skip
    assert torch.equal(sd["layer3.0.downsample.1.running_var"], torch.from_numpy(
        tree[f"{r}block_group_2/~/block_0/~/shortcut_batchnorm/~/var_ema"]["average"]).flatten())  # fmt: skip
    assert torch.equal(sd["fc.weight"], torch.from_numpy(tree["classifier"]["w"]).T)
    info = json.loads((tmp_path / "detcon.pt.json").read_text())
    assert info["layers"] == [1, 2, 1, 1] and info["widths"] == [16, 32, 32, 64]
    assert info["dropped"] == ["predictor/~/linear", "projector/~/linear"]


def test_exact_mode_reproduces_the_haiku_forward(detcon_file, tmp_path):
    src, tree = detcon_file
    out = tmp_path / "detcon.pt"
    assert main(["import-weights", "format=detcon", f"src={src}", f"out={out}"]) == 0
    sd = torch.load(out, weights_only=True)
    x = torch.randn(2, 64, 64, 3)
    expect = haiku_forward(tree, x)
    exact = tf_same(build_resnet(sd)).eval()
    plain = build_resnet(sd).eval()
    with torch.no_grad():
        got = exact(x.permute(0, 3, 1, 2))
        shifted = plain(x.permute(0, 3, 1, 2))
    assert torch.allclose(got, expect, atol=1e-5, rtol=1e-4), (got - expect).abs().max()
    gap = ((shifted - expect).abs().max() / expect.abs().max()).item()
    assert gap > 1e-3  # torchvision's symmetric padding is not the same network
    print(f"torchvision padding vs Haiku SAME on the same weights: max |diff| / max |out| = "
          f"{gap:.3f}")  # fmt: skip


def test_resnet200_depth_is_read_from_the_weights(tmp_path):
    tree = haiku_resnet([3, 24, 36, 3], [8, 8, 8, 8], stem=4, root="res_net200/~/")
    np.save(tmp_path / "r200.npy", tree, allow_pickle=True)
    assert main(["import-weights", "format=detcon", f"src={tmp_path}/r200.npy",
                 f"out={tmp_path}/r200.pt"]) == 0  # fmt: skip
    info = json.loads((tmp_path / "r200.pt.json").read_text())
    assert info["arch"] == "resnet200" and info["layers"] == [3, 24, 36, 3]


def test_an_unmatched_encoder_key_is_listed(detcon_file, tmp_path, capsys):
    src, tree = detcon_file
    tree["res_net50/~/block_group_0/~/block_0/~/squeeze_excite"] = {"w": np.ones((1, 1, 4, 4))}
    np.save(src, tree, allow_pickle=True)
    assert main(["import-weights", "format=detcon", f"src={src}", f"out={tmp_path}/o.pt"]) == 2
    err = capsys.readouterr().err
    assert "unmatched keys" in err and "block_0/~/squeeze_excite" in err
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("fmt", ["detcon", "soco"])
def test_a_file_whose_pickle_would_run_code_is_refused(fmt, tmp_path, capsys, hostile_payload):
    target = tmp_path / "pwned"
    src = tmp_path / ("evil.npy" if fmt == "detcon" else "evil.pth")
    if fmt == "detcon":
        np.save(
            src, {"res_net50/~/initial_conv": {"w": hostile_payload(target)}}, allow_pickle=True
        )
    else:
        torch.save({"model": {"x": hostile_payload(target)}}, src)
    assert main(["import-weights", f"format={fmt}", f"src={src}", f"out={tmp_path}/o.pt"]) == 2
    assert "could run code" in capsys.readouterr().err
    assert not target.exists()


# ------------------------------------------------------------------ PyTorch codebases


def tiny_tv(cifar: bool = False) -> nn.Module:
    model = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=7)
    if cifar:  # solo-learn's CIFAR stem
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    for p in model.state_dict().values():
        if p.is_floating_point():
            p.copy_(torch.randn_like(p).abs() + 0.1)
    return model


def layouts(model: nn.Module) -> dict[str, dict]:
    """Each codebase's checkpoint of ``model`` as its own code lays it out."""
    sd = model.state_dict()
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    seq = nn.Sequential(*list(model.children())[:-1]).state_dict()  # lightly's backbone
    mlp = {"fc.0.weight": torch.ones(8, 512), "fc.2.weight": torch.ones(4, 8)}
    return {
        "soco": {"model": {**{f"module.encoder.{k}": v for k, v in body.items()},
                           **{f"module.encoder_k.{k}": v + 1 for k, v in body.items()},
                           "module.neck.fc.weight": torch.ones(3, 3)},
                 "opt": argparse.Namespace(lr=0.03, arch="resnet50")},
        "solo_learn": {"state_dict": {**{f"backbone.{k}": v for k, v in body.items()},
                                      "projector.0.weight": torch.ones(2, 2)}, "epoch": 3},
        "lightly": {"state_dict": {**{f"backbone.{k}": v for k, v in seq.items()},
                                   "projection_head.layers.0.weight": torch.ones(2, 2)}},
        "mmselfsup": {"state_dict": {**{f"backbone.{k}": v for k, v in body.items()},
                                     "neck.mlp.0.weight": torch.ones(2, 2)},
                      "meta": {"epoch": 200, "mmselfsup_version": "0.11"}},
        "mocov2": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in body.items()},
                                  **{f"module.encoder_q.{k}": v for k, v in mlp.items()},
                                  **{f"module.encoder_k.{k}": v for k, v in body.items()}}},
        "torchvision": sd,
    }  # fmt: skip


@pytest.mark.parametrize("fmt", ["soco", "solo_learn", "lightly", "mmselfsup", "mocov2",
                                 "torchvision"])  # fmt: skip
def test_every_tensor_of_the_encoder_lands_where_it_must(fmt, tmp_path):
    model = tiny_tv()
    src = tmp_path / "src.pth"
    torch.save(layouts(model)[fmt], src)
    assert main(["import-weights", f"format={fmt}", f"src={src}", f"out={tmp_path}/o.pt"]) == 0
    sd = torch.load(tmp_path / "o.pt", weights_only=True)
    expect = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert sorted(sd) == sorted(expect)
    assert all(torch.equal(sd[k], v) for k, v in expect.items())
    loaded = build_resnet(sd).eval()
    model.eval().fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))


def test_torchvision_head_is_kept_when_asked_and_solo_learn_cifar_stem(tmp_path):
    model = tiny_tv()
    torch.save(model.state_dict(), tmp_path / "tv.pth")
    assert main(["import-weights", "format=torchvision", f"src={tmp_path}/tv.pth",
                 f"out={tmp_path}/tv.pt", "keep_head=true"]) == 0  # fmt: skip
    assert torch.equal(torch.load(tmp_path / "tv.pt")["fc.weight"], model.fc.weight)
    cifar = tiny_tv(cifar=True)
    body = {f"encoder.{k}": v for k, v in cifar.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": body}, tmp_path / "solo.ckpt")  # solo-learn's older names
    assert main(["import-weights", "format=solo_learn", f"src={tmp_path}/solo.ckpt",
                 f"out={tmp_path}/solo.pt"]) == 0  # fmt: skip
    info = json.loads((tmp_path / "solo.pt.json").read_text())
    assert info["stem"] == "cifar"
    loaded = build_resnet(torch.load(tmp_path / "solo.pt", weights_only=True)).eval()
    cifar.eval().fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), cifar(x))


def test_a_standard_resnet_loads_into_plain_torchvision(tmp_path, capsys):
    model = tv.resnet18()
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "moco.pth.tar")  # fmt: skip
    assert main(["import-weights", "format=mocov2", f"src={tmp_path}/moco.pth.tar",
                 f"out={tmp_path}/r18.pt"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "torchvision.models.resnet18()" in printed and "nn.Identity()" in printed
    fresh = tv.resnet18()
    fresh.fc = nn.Identity()
    fresh.load_state_dict(torch.load(tmp_path / "r18.pt", weights_only=True))  # strict


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["import-weights", "format=detcon", "src=/nope.npy", f"out={tmp_path}/o"]) == 2
    assert "src=/nope.npy does not exist" in capsys.readouterr().err
    assert main(["import-weights", "format=caffe", "src=x", "out=y"]) == 2
    assert "format='caffe' is not one of" in capsys.readouterr().err
    assert main(["import-weights", "format=detcon", "src=x", "outt=y"]) == 2
    assert "unknown argument(s) ['outt']" in capsys.readouterr().err

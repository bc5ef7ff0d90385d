"""Fashion-MNIST offline: IDX files (written here in the format's layout) -> ImageFolder,
read by the ordinary readers; evaluations and fine-tuning of imported weights on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet as tv

from detlab.methods.datasets import DatasetError, open_dataset
from detlab.methods.datasets.fashion_mnist import CLASSES, DEBIAN_DIR, export, main, read_idx
from detlab.platform.cli import main as cli


def test_export_is_an_image_folder_with_the_right_pixels_and_labels(idx_dir, tmp_path):
    src, data = idx_dir
    out = export(src, tmp_path / "fm", progress=False)
    train = open_dataset(out, "train")
    val = open_dataset(out, "val")
    assert (len(train), len(val)) == (40, 20) and train.classes == CLASSES
    images, labels = data["train"]
    for record_index, record in enumerate(train.records):
        k = int(Path(record.path).stem)  # files are named by their index in the IDX file
        assert record.label == labels[k]
        pixels = train.load_image(record_index)
        assert pixels.shape == (28, 28, 3) and np.array_equal(pixels[..., 1], images[k])


def test_resize_and_subset(idx_dir, tmp_path):
    src, _ = idx_dir
    out = export(src, tmp_path / "fm", size=32, max_per_split=15, progress=False)
    ds = open_dataset(out, "train")
    assert len(ds) == 15 and ds.load_image(0).shape == (32, 32, 3)


def test_missing_files_name_the_debian_package(tmp_path, capsys):
    assert main(["--src", str(tmp_path), "--out", str(tmp_path / "fm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0]
    assert not (tmp_path / "fm").exists()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DatasetError, match="cannot read IDX"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")


def test_the_debian_package_holds_the_full_dataset():
    if not DEBIAN_DIR.is_dir():  # .ci/run installs it
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    images = read_idx(DEBIAN_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.parametrize(("protocol", "extra"), [("linear", ["eval.epochs=50"]),
                                                 ("finetune", ["eval.epochs=10"])])  # fmt: skip
def test_imported_weights_evaluate_on_fashion_mnist(protocol, extra, idx_dir, tmp_path, capsys):
    """The slides' transfer task as one command: weights imported from torchvision (any
    source converted by import-weights), evaluated on Fashion-MNIST; the backbone config is
    read from the weights."""
    src, _ = idx_dir
    root = export(src, tmp_path / "fm", size=32, progress=False)
    torch.manual_seed(0)
    torch.save(tv.resnet18().state_dict(), tmp_path / "r18.pth")
    assert cli(["import-weights", "format=torchvision", f"src={tmp_path}/r18.pth",
                f"out={tmp_path}/r18.pt"]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli(["eval", f"eval={protocol}", f"checkpoint={tmp_path}/r18.pt", "data=fashion_mnist",
                f"data.root={root}", "eval.resolution=32", "eval.batch_size=20",
                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *extra]) == 0  # fmt: skip
    out = capsys.readouterr().out
    top1 = float(out.split(f"{protocol}_top1")[1].split()[0])
    assert "imported:torchvision" in out and 0.0 <= top1 <= 1.0
    assert top1 > 0.1  # chance is 0.1: the bars are easy to tell apart

"""Bad input refused before compute, in one line, with exit status 2, and nothing created:
a truncated image, a mask store made for another dataset, a checkpoint whose pickle would
run code (through `detlab pretrain` resuming it and `detlab eval` reading it)."""

from __future__ import annotations

import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient

from detlab.platform.cli import main

TINY = ["experiment=tiny", "train.batch_size=4", "train.steps=2"]


def no_runs(uri: str) -> bool:
    client = MlflowClient(uri)
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_truncated_image_is_refused_before_the_run_in_one_line(tiny_shapes, tmp_path, capsys,
                                                                 monkeypatch):  # fmt: skip
    """A PNG cut to 200 bytes passes the header check; pretraining decodes every image once
    before creating its MLflow run and names the file; the verdict is cached afterwards."""
    data = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, data)
    monkeypatch.setenv("DETLAB_CACHE_DIR", str(tmp_path / "cache"))
    bad = sorted((data / "images" / "train").rglob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:200])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["pretrain", *TINY, "masks=global", f"data.root={data}", f"train.out_dir={tmp_path}/o",
            f"tracking.uri={uri}"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: cannot decode image" in err[0], err
    client = MlflowClient(uri)
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not (tmp_path / "o" / "checkpoint.pt").exists()
    assert not list((tmp_path / "cache").rglob("*"))  # no verdict cached for a bad split
    shutil.copy(tiny_shapes / bad.relative_to(data), bad)  # repaired: runs, verdict cached
    assert main(argv) == 0
    assert len(list((tmp_path / "cache" / "decoded").iterdir())) == 1


def test_a_mask_store_of_another_dataset_is_refused_before_the_run(tiny_shapes, tmp_path, capsys):
    from detlab.methods.datasets.shapes import generate_shapes
    from detlab.pipelines.masks import generate

    other = generate_shapes(tmp_path / "other", seed=5, num_train=24, num_val=8,
                            image_size=48, max_objects=3)  # fmt: skip
    store = generate("grid", other, tmp_path / "grid", progress=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["pretrain", *TINY, "method=detcon_b", "method.num_masks=4", "masks=grid",
            f"masks.path={store}", f"data.root={tiny_shapes}", f"train.out_dir={tmp_path}/o",
            f"tracking.uri={uri}"]  # fmt: skip
    assert main(argv) == 2
    assert str(store) in one_line(capsys)
    assert not (tmp_path / "mlflow.db").exists() or no_runs(uri)
    assert not (tmp_path / "o" / "checkpoint.pt").exists()


@pytest.mark.parametrize("command", ["pretrain", "eval"])
def test_a_checkpoint_that_would_run_code_is_refused_by_the_cli(command, tiny_shapes, tmp_path,
                                                                capsys, hostile_payload):  # fmt: skip
    target = tmp_path / "pwned"
    bad = tmp_path / "o" / "checkpoint.pt"
    bad.parent.mkdir()
    torch.save({"format": 1, "backbone": {}, "payload": hostile_payload(target)}, bad)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [*TINY, f"data.root={tiny_shapes}", f"tracking.uri={uri}"]
    if command == "pretrain":  # resuming the checkpoint found in the output folder
        argv = ["pretrain", *common, "masks=global", f"train.out_dir={bad.parent}"]
    else:
        argv = ["eval", *common, "eval=knn", f"checkpoint={bad}"]
    assert main(argv) == 2
    line = one_line(capsys)
    assert str(bad) in line and "could run code" in line
    assert not target.exists()  # nothing in the pickle ran
    assert not (tmp_path / "mlflow.db").exists() or no_runs(uri)

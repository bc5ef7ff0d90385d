"""The training loop on tiny `shapes` data: every method, exact resume, NaN, export, bf16."""

from __future__ import annotations

import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from detlab.methods.registry import METHODS
from detlab.platform import checkpoint as ckpt
from detlab.platform.checkpoint import export_command
from detlab.platform.compose import compose
from detlab.platform.train import NonFiniteLossError, train


@pytest.fixture
def tiny_cfg(tiny_overrides):
    def make(data_root, run_dir, *extra: str, method="detcon_b", masks="global", steps=6):
        return compose(tiny_overrides(run_dir, *extra, method=method, masks=masks, steps=steps))

    return make


def loss_history(cfg, run_id):
    hist = MlflowClient(cfg.tracking.uri).get_metric_history(run_id, "loss")
    return {m.step: m.value for m in hist}


def method_masks(name, mask_sets):
    if name == "soco":
        return "ss", [f"masks.path={mask_sets['ss']}"]
    if name.startswith("detcon"):
        return "fh", [f"masks.path={mask_sets['fh']}"]
    return "global", []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_logs(name, tiny_shapes, tiny_mask_sets, tmp_path, tiny_cfg):
    masks, extra = method_masks(name, tiny_mask_sets)
    cfg = tiny_cfg(tiny_shapes, tmp_path, *extra, method=name, masks=masks, steps=4)
    res = train(cfg)
    assert res.status == "completed" and res.step == 4
    losses = loss_history(cfg, res.run_id)
    assert sorted(losses) == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    run = MlflowClient(cfg.tracking.uri).get_run(res.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == name
    assert run.data.params["cluster.name"] == "local"  # and no SLURM settings of a local run
    assert not [
        k for k in run.data.params if k.startswith(("cluster.", "eval.")) and k != "cluster.name"
    ]
    assert run.data.tags["detlab.data_fingerprint"]
    for key in ("lr", "images_per_s", "data_wait_frac"):
        assert key in run.data.metrics
    state = ckpt.load(res.checkpoint)
    assert state["step"] == 4 and state["method_name"] == name


@pytest.mark.slow
def test_loss_falls_over_a_short_run(tiny_shapes, tmp_path, tiny_cfg):
    cfg = tiny_cfg(tiny_shapes, tmp_path, "optim.lr=0.2", method="byol", steps=40)
    losses = list(loss_history(cfg, train(cfg).run_id).values())
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8


@pytest.mark.slow
def test_resume_is_exact(tiny_shapes, tmp_path, tiny_cfg):
    """Stopped at step 3 and resumed == never stopped: same losses, same final weights."""
    straight = tiny_cfg(
        tiny_shapes, tmp_path / "a", "train.checkpoint_every=100", method="detcon_b", steps=6
    )
    a = train(straight)
    calls = {"n": 0}

    def stop_after_3():
        calls["n"] += 1
        return calls["n"] == 3

    stopped = tiny_cfg(
        tiny_shapes, tmp_path / "b", "train.checkpoint_every=100", method="detcon_b", steps=6
    )
    b1 = train(stopped, stop_requested=stop_after_3)
    assert b1.status == "stopped" and b1.step == 3
    b2 = train(stopped)  # resumes from <out_dir>/checkpoint.pt, continues the same run
    assert b2.status == "completed" and b2.run_id == b1.run_id
    la, lb = loss_history(straight, a.run_id), loss_history(stopped, b2.run_id)
    assert sorted(lb) == list(range(1, 7))
    for step in range(1, 7):
        assert la[step] == pytest.approx(lb[step], abs=0, rel=1e-6), step
    sa, sb = ckpt.load(a.checkpoint)["method"], ckpt.load(b2.checkpoint)["method"]
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_nan_loss_fails_run_with_reason(tiny_shapes, tmp_path, tiny_cfg):
    cfg = tiny_cfg(tiny_shapes, tmp_path, "optim.lr=1e30", method="simclr", steps=6)
    with pytest.raises(NonFiniteLossError, match="lower optim.lr"):
        train(cfg)
    client = MlflowClient(cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["failure_reason"]


def test_bf16_autocast_runs_on_cpu(tiny_shapes, tmp_path, tiny_cfg):
    """bf16 autocast really computes in bf16 (the loss differs from fp32's, slightly)."""
    from detlab.platform.train import autocast_for

    losses = {}
    for precision in ("bf16", "fp32"):
        cfg = tiny_cfg(tiny_shapes, tmp_path / precision, f"train.precision={precision}",
                       "train.channels_last=true", method="byol", steps=2)  # fmt: skip
        res = train(cfg)
        assert res.status == "completed"
        losses[precision] = res.metrics["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)
    assert losses["bf16"] != losses["fp32"]
    with autocast_for("bf16", torch.device("cpu")):
        y = torch.nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))
    assert y.dtype == torch.bfloat16


def test_export_loads_into_torchvision(tiny_shapes, tmp_path, tiny_cfg):
    cfg = tiny_cfg(
        tiny_shapes,
        tmp_path,
        "backbone.width=1.0",
        "backbone.small_stem=false",
        method="simclr",
        steps=1,
    )
    res = train(cfg)
    out = tmp_path / "bb.pt"
    export = compose(
        [f"checkpoint={res.run_id}", f"export_path={out}", f"tracking.uri={cfg.tracking.uri}"]
    )
    assert export_command(export) == 0
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(out))  # strict: every key, every shape
    trained = ckpt.load(res.checkpoint)["backbone"]
    assert torch.equal(model.conv1.weight, trained["conv1.weight"])


@pytest.mark.parametrize("geometry", ["torchvision", "small"])
def test_export_prints_a_load_line_that_works(tiny_shapes, tmp_path, tiny_cfg, capsys, geometry):
    extra = ["backbone.width=1.0", "backbone.small_stem=false"] if geometry == "torchvision" else []
    cfg = tiny_cfg(tiny_shapes, tmp_path, *extra, method="simclr", steps=1)
    res = train(cfg)
    out = tmp_path / "bb.pt"
    capsys.readouterr()
    export = compose(
        [f"checkpoint={res.run_id}", f"export_path={out}", f"tracking.uri={cfg.tracking.uri}"]
    )
    assert export_command(export) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("load with: "))
    exec(line.removeprefix("load with: "), {})  # strict load_state_dict: raises on any mismatch
    assert ("torchvision.models.resnet18()" in line) == (geometry == "torchvision")


def test_redirected_output_gets_periodic_progress_lines(tiny_shapes, tmp_path, tiny_cfg, capsys):
    cfg = tiny_cfg(tiny_shapes, tmp_path, "train.progress=true", "train.progress_every_s=0",
                   method="byol", steps=3)  # fmt: skip
    train(cfg)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ": step " in ln]
    assert [ln.split(": step ")[1].split()[0] for ln in lines] == ["1/3", "2/3", "3/3", "3/3"]
    assert lines[0].startswith(cfg.tracking.run_name or "byol") and "img/s" in lines[0]


def test_on_metrics_reason_halts_the_run(tiny_shapes, tmp_path, tiny_cfg):
    """A reason returned by on_metrics (a sweep's pruning) ends the run at that monitor step,
    KILLED in MLflow with the reason; train() itself knows nothing of Optuna."""
    cfg = tiny_cfg(tiny_shapes, tmp_path, "train.knn_every=2", method="simclr", steps=6)
    seen = []

    def judge(step, metrics):
        seen.append(step)
        return f"pruned at step {step}" if step >= 4 else None

    res = train(cfg, on_metrics=judge)
    assert (res.status, res.step, seen) == ("halted", 4, [2, 4])
    run = MlflowClient(cfg.tracking.uri).get_run(res.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "pruned at step 4"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detcon_b", "soco", "simclr"])
def test_views_made_on_the_device_train_as_the_cpu_path(
    name, tiny_shapes, tiny_mask_sets, tmp_path, tiny_cfg
):
    """aug.views=device (the CUDA default, here on the CPU device) trains every input kind.
    The views equal the CPU path's up to rounding (tests/methods/test_device_views.py); a
    tiny random-init network moves its loss by ~1-3% for such differences (a 0.003 noise on
    the views: 0.8%), so the first step's loss agrees within 10%."""
    masks, extra = method_masks(name, tiny_mask_sets)
    losses = {}
    for views in ("cpu", "device"):
        cfg = tiny_cfg(tiny_shapes, tmp_path / views, *extra, f"aug.views={views}",
                       method=name, masks=masks, steps=3)  # fmt: skip
        res = train(cfg)
        assert res.status == "completed" and res.step == 3
        losses[views] = loss_history(cfg, res.run_id)
    first_cpu, first_dev = losses["cpu"][1], losses["device"][1]
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all() for v in losses.values())
    assert abs(first_dev - first_cpu) <= 0.1 * max(abs(first_cpu), 1.0), (first_cpu, first_dev)


def test_unknown_views_setting_is_refused(tiny_shapes, tmp_path, tiny_cfg):
    cfg = tiny_cfg(tiny_shapes, tmp_path, "aug.views=gpu", steps=1)
    with pytest.raises(ValueError, match="aug.views='gpu' is not one of: auto, cpu, device"):
        train(cfg)

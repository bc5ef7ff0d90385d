import os
import re

import pytest

from detlab.platform.cli import main
from detlab.platform.compose import ConfigError, compose, flatten, group_options


def test_default_composes_with_every_group():
    cfg = compose()
    assert cfg.method.name == "detcon_b" and cfg.masks.name == "fh"
    assert cfg.optim.name == "lars" and cfg.cluster.name == "local"


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_yaml_fits_the_schema(method):
    """Each method's YAML is typed by its own dataclass, the one its class names."""
    from omegaconf import OmegaConf

    from detlab.methods.registry import METHODS

    cfg = compose([f"method={method}"])
    assert cfg.method.name == method
    assert OmegaConf.get_type(cfg.method) is METHODS[method].config_class


def test_a_methods_own_keys_belong_to_it_alone():
    """DetCon's mask count is not SimCLR's: refused, naming the method and listing its keys
    (the README's example); MoCo's queue is set only with MoCo."""
    with pytest.raises(ConfigError) as err:
        compose(["method=simclr", "method.num_masks=8"])
    msg = str(err.value)
    assert "'num_masks' is not a key of method (simclr)" in msg and "temperature" in msg
    assert "queue_size" not in msg
    assert compose(["method=mocov2", "method.queue_size=128"]).method.queue_size == 128
    assert compose(["method=detcon_s", "method.num_masks=8"]).method.num_masks == 8


def test_tiny_preset_sizes_each_methods_own_fields():
    """experiment=tiny: the shared sizes for every method, a method's own from
    experiment/per_method/tiny_<method>.yaml, and keys given beside it still win."""
    assert compose(["experiment=tiny", "method=mocov2"]).method.queue_size == 64
    soco = compose(["experiment=tiny", "method=soco"]).method
    assert (soco.fpn_channels, soco.head_hidden, soco.proj_hidden) == (32, 64, 64)
    assert compose(["experiment=tiny", "method=simclr"]).method.proj_hidden == 64
    assert compose(["method=mocov2"]).method.queue_size == 65536  # no preset: the YAML's
    assert (
        compose(["experiment=tiny", "method=detcon_b", "method.num_masks=2"]).method.num_masks == 2
    )


def test_unknown_key_names_key_and_valid_choices():
    with pytest.raises(ConfigError) as err:
        compose(["train.stepz=3"])
    msg = str(err.value)
    assert "train.stepz" in msg and "steps" in msg and "batch_size" in msg


def test_unknown_nested_section():
    with pytest.raises(ConfigError, match="'trian' is not a key of <root>"):
        compose(["trian.steps=3"])


def test_unknown_group_option_lists_options():
    with pytest.raises(ConfigError) as err:
        compose(["method=detcon_c"])
    message = str(err.value)
    assert message.startswith("method=detcon_c is not an option: choose one of byol, detcon_b")
    assert "simclr" in message and "schema" not in message  # no internal schema entries
    assert "\n" not in message


def test_help_lists_commands_groups_and_their_options(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "pretrain" in out and "sweep" in out
    method = next(line for line in out.splitlines() if line.strip().startswith("method "))
    assert "detcon_b" in method and "soco" in method and "schema" not in out


def test_errors_after_composing_print_one_line_and_exit_non_zero(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    argv = ["pretrain", "backbone=tiny", f"data.root={missing}", f"train.out_dir={tmp_path}/o"]
    assert main(argv) == 2  # bad input: exit 2, as for a config error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "--verbose" in err[0]
    with pytest.raises(Exception, match="nowhere"):  # the traceback on request
        main([*argv, "--verbose"])


def test_wrong_type_is_rejected_with_the_reason():
    with pytest.raises(ConfigError, match="steps"):
        compose(["train.steps=many"])
    with pytest.raises(ConfigError, match=r"batch_size=abc: .*'abc'.*could not be converted"):
        compose(["train.batch_size=abc"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=-5", "train.steps=-5 must be >= 1"),
        ("train.batch_size=0", "train.batch_size=0 must be >= 1"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1"),
        ("optim.lr=0", "optim.lr=0.0 must be > 0"),
        ("method.temperature=-0.1", "method.temperature=-0.1 must be > 0"),
        ("aug.resolution=4", "aug.resolution=4 must be >= 8"),
    ],
)
def test_impossible_values_are_refused_naming_the_key(override, message, capsys):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose([override])
    assert main(["pretrain", override]) == 2  # before any compute: no run, no checkpoint
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_flatten_has_dotted_keys():
    flat = flatten(compose(["method=simclr"]))
    assert flat["method.name"] == "simclr" and flat["train.batch_size"] == 256


def test_cli_config_error_exit_code(capsys):
    assert main(["config", "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err


LIST_IMPORTS = """
import atexit, sys
atexit.register(lambda: print("IMPORTED", sorted(m for m in sys.modules
                                                 if m.split(".")[0] in HEAVY), file=sys.stderr))
HEAVY = {"torch", "torchvision", "timm", "skimage", "sklearn"}
sys.argv = ["detlab", *sys.argv[1:]]
from detlab.platform.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("args", [
    ["--help"],
    ["config", "method=detcon_b", "masks=gt"],
    ["config", "method=soco", "experiment=tiny"],
    ["jobs"],
    ["sweep", "status", "sweep=temperature"],
])  # fmt: skip
def test_commands_that_neither_train_nor_evaluate_import_no_torch(args, tmp_path):
    """`detlab config`, `jobs`, `sweep status` and `--help` answer without loading torch
    (~3 s of a 2-core machine's start-up): the config schema, the run states and the
    sweep storage are torch-free. The import list is checked, not the time."""
    import subprocess
    import sys

    script = tmp_path / "list_imports.py"
    script.write_text(LIST_IMPORTS)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    line = [x for x in done.stderr.splitlines() if x.startswith("IMPORTED")]
    assert line, done.stderr[-2000:]
    assert line[-1] == "IMPORTED []", (args, line[-1], done.stderr[-500:])
    if args[0] != "sweep":  # no sweep exists in tmp_path: that one answers with an error
        assert done.returncode == 0, done.stderr[-1000:]

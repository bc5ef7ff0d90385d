"""Every command in the README's code blocks is run by a test, as written.

The local commands run here, in order, in a scratch folder laid out like a checkout after
`dvc repro` (``data/shapes`` and ``data/masks/<set>``, the tiny versions) with a fresh
``mlflow.db``. As the README says, each gets the tiny-compute overrides of ``TINY`` for
the keys it does not set itself, ``<run id>`` is the run of the README's tiny pretraining
example and ``/data/my_small_dataset`` a small ImageFolder. The SLURM commands run on the
local cluster (marker ``slurm``); the two set-up commands are run by CI and by
``tests/pipelines/test_dvc.py``. A README command that no test runs fails
``test_every_readme_command_is_run_by_a_test``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# appended to a command for each key it does not set (the README quotes these)
TINY = {
    "pretrain": ["experiment=tiny", "train.steps=2"],
    "eval": ["eval.epochs=2", "eval.max_images=16"],
    "sweep": ["experiment=tiny", "train.steps=2", "sweep.n_trials=2", "sweep.n_workers=1"],
    "config": [],
    "export": [],
    "jobs": [],
}  # fmt: skip
ELSEWHERE = {  # command -> where it runs
    "pip install -c requirements.lock -e '.[dev]' && dvc repro": ".ci/run installs; "
    "tests/pipelines/test_dvc.py runs `dvc repro` with tiny params",
    "python3 -m pytest": ".ci/run (this suite)",
    **{
        f"dvc repro ablations/dvc.yaml:{study}": "tests/pipelines/test_dvc.py, with tiny params"
        for study in (
            "mask_count",
            "soco_proposals",
            "methods",
            "methods_fmnist",
            "soco_proposals_fmnist",
        )
    },
    "python3 -m pytest -m faults -s": "a part of `python3 -m pytest` (.ci/run)",
    "dvc repro masks@fh": "tests/pipelines/test_masks_slurm.py, with masks.cluster: slurm, "
    "tiny params and the local cluster",
    "detlab import-weights format=detcon src=resnet50_detcon_b_imagenet_1k.npy "
    "out=detcon_r50.pt": "tests/methods/test_weights.py, on a file in the release's layout "
    "(the release itself is a download)",
    "detlab eval eval=linear checkpoint=detcon_r50.pt data=fashion_mnist eval.resolution=32": (
        "tests/pipelines/test_fashion_mnist.py, with weights imported from torchvision"
    ),
    "bash platform/slurm/cluster.sh install && bash platform/slurm/cluster.sh start": (
        "the slurm_conf fixture (tests/conftest.py)"
    ),
}


def on_cluster(section: str, command: str) -> bool:
    """The SLURM section, and the sweep commands on the cluster or its shared storage."""
    return section.startswith("## SLURM") or "cluster=slurm" in command or "/shared/" in command


RUN_ID = re.compile(r"<(path or MLflow run id|run id)>")


def readme_commands() -> list[tuple[str, str]]:
    """(section heading, command) for every command line of every ```bash block, with
    continuation lines joined and trailing comments dropped."""
    out, section = [], ""
    for part in re.split(r"(```bash\n.*?```)", README.read_text(), flags=re.S):
        if not part.startswith("```bash"):
            headings = re.findall(r"^## .*$", part, flags=re.M)
            section = headings[-1] if headings else section
            continue
        body = part[len("```bash\n") : -3].replace("\\\n", " ")
        for line in body.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                out.append((section, " ".join(line.split())))
    return out


def with_tiny(command: str) -> str:
    """``command`` plus the TINY overrides of its kind for keys it does not set."""
    words = command.split()
    if words[0] != "detlab":
        return command
    kind = words[1]
    keys = {w.split("=")[0] for w in words if "=" in w}
    extra = [o for o in TINY[kind] if o.split("=")[0] not in keys]
    if "--wait" in words:  # keep the flag last, as written
        words.remove("--wait")
        extra.append("--wait")
    return " ".join([*words, *extra])


def run(command: str, cwd: Path, env: dict, timeout: int = 900) -> str:
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def latest_run_id(tracking_uri: str, run_name_prefix: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, order_by=["attributes.start_time DESC"])
    return next(r.info.run_id for r in runs if r.info.run_name.startswith(run_name_prefix))


def test_every_readme_command_is_run_by_a_test():
    commands = [c for _, c in readme_commands()]
    assert len(commands) >= 20
    for command in commands:
        words = command.split()
        if command in ELSEWHERE or command.startswith(("export ", "mlflow server")):
            continue
        if command.startswith("python -m detlab."):  # a stage program, run as written
            continue
        assert words[0] == "detlab" and words[1] in TINY, f"no test runs `{command}`"


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A folder like a checkout after `dvc repro`, with a small dataset (enough images for
    the README's batch of 32) and its mask sets."""
    from detlab.methods.datasets.shapes import generate_shapes
    from detlab.pipelines.masks import generate

    work = tmp_path / "checkout"
    generate_shapes(work / "data/shapes", seed=0, num_train=40, num_val=8, image_size=48,
                    max_objects=3)  # fmt: skip
    for name in ("fh", "gt", "ss"):
        generate(name, work / "data/shapes", work / "data/masks" / name, progress=False)
    small = tmp_path / "my_small_dataset"  # <root>/{train,val}/<class>/<image>
    for split in ("train", "val"):
        shutil.copytree(work / "data/shapes/images" / split, small / split)
    return work


def local_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("SLURM_CONF", None)
    return env


@pytest.mark.slow
def test_readme_local_commands_run_as_written(scratch, tmp_path, monkeypatch):
    """Pretraining, config, evaluation, transfer and the local sweep, in README order."""
    env, run_id, exported = local_env(), None, 0
    for section, command in readme_commands():
        if command in ELSEWHERE or on_cluster(section, command):
            continue
        command = with_tiny(command).replace(
            "/data/my_small_dataset", str(tmp_path / "my_small_dataset")
        )
        if RUN_ID.search(command):
            assert run_id, f"`{command}` needs a run: the README's pretraining example runs first"
            command = RUN_ID.sub(run_id, command)
        out = run(command, scratch, env)
        if command.startswith("detlab pretrain") and "backbone=tiny aug.resolution=64" in command:
            run_id = latest_run_id(f"sqlite:///{scratch}/mlflow.db", "detcon_b-gt-r64")
        if command.startswith("detlab config"):
            assert "name: simclr" in out
        if command.startswith("detlab eval"):
            assert f"logged to MLflow run {run_id}" in out
        if command.startswith("detlab export"):  # the printed line loads the weights (strict)
            line = next(x for x in out.splitlines() if x.startswith("load with: "))
            monkeypatch.chdir(scratch)  # the printed path is relative to where it ran
            exec(line.removeprefix("load with: "), {})
            exported += 1
    assert run_id, "the README's tiny pretraining example did not run"
    assert exported, "the README's export example did not run"


@pytest.mark.slurm
@pytest.mark.slow
def test_readme_slurm_commands_run_as_written(scratch, tmp_path, slurm_conf):
    """The SLURM and sweep sections on the local two-node cluster: an MLflow server, a
    2-node pretraining job, `detlab jobs`, a sweep with journal storage and its status."""
    env = local_env()
    server = None
    try:
        for section, command in readme_commands():
            if command in ELSEWHERE or not on_cluster(section, command):
                continue
            if command.startswith("export "):
                name, value = command[len("export ") :].split("=", 1)
                assert Path(value) == slurm_conf
                env[name] = value
                continue
            if command.startswith("mlflow server"):
                server = subprocess.Popen(command.rstrip("&").split(), cwd=scratch, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                wait_for_port(5000)
                continue
            command = with_tiny(command).replace("/shared/", f"{tmp_path}/shared/")
            out = run(command, scratch, env)
            if command.startswith("detlab jobs"):
                assert "detcon_b" in out or "pretrain" in out
            if "--cluster slurm" in command:  # the mask stage as a job array
                assert "SLURM job array" in out and "data/masks/slic: 40 images" in out
            if command.startswith("detlab sweep status"):
                assert "study temperature" in out
    finally:
        drain_queue(env)
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def drain_queue(env: dict, timeout: float = 300.0) -> None:
    """Let the submitted jobs finish (the next tests share the cluster), then cancel."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        queue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
        if not queue.stdout.strip():
            return
        time.sleep(3)
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")], env=env)


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing listens on port {port} after {timeout:.0f} s")


if __name__ == "__main__":  # list what the README asks to run
    for section, command in readme_commands():
        print(f"{section:<28} {with_tiny(command)}", file=sys.stdout)

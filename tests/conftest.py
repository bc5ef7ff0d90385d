"""Shared fixtures: a tiny generated `shapes` dataset and mask sets made by the real
mask generators (subfolders may override ``tiny_shapes`` with their own sizes), a tiny
Fashion-MNIST (IDX files in the format's layout, exported as its ImageFolder), the local
SLURM cluster, a real `mlflow server`, and tiny pretraining and sweep settings."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """24 train / 8 val images of 48 px, up to 3 objects (read-only: copy to modify)."""
    from detlab.methods.datasets.shapes import generate_shapes

    root = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    return Path(
        generate_shapes(root, seed=0, num_train=24, num_val=8, image_size=48, max_objects=3)
    )


@pytest.fixture(scope="session")
def tiny_mask_sets(tiny_shapes, tmp_path_factory) -> dict[str, Path]:
    """Mask stores for ``tiny_shapes`` (train split) made by the `masks` stage's code."""
    from detlab.pipelines.masks import generate

    out = tmp_path_factory.mktemp("tiny_masks")
    return {
        name: Path(generate(name, tiny_shapes, out / name, workers=1, progress=False))
        for name in ("fh", "ss", "gt")
    }


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> tuple[Path, dict]:
    """40 train / 20 test 28x28 images; class k is a bright bar at row 2k (learnable)."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    data = {}
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 7, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[prefix] = (images.astype(np.uint8), labels)
    return root, data


@pytest.fixture(scope="session")
def tiny_fmnist(idx_dir, tmp_path_factory) -> Path:
    """``idx_dir`` exported as Fashion-MNIST's ImageFolder at 32 px (read-only!)."""
    from detlab.methods.datasets.fashion_mnist import export

    return export(idx_dir[0], tmp_path_factory.mktemp("fmnist") / "fm", size=32, progress=False)


TINY_TRAIN = ["experiment=tiny"]  # platform/conf/experiment/tiny.yaml


@pytest.fixture
def tiny_overrides(tiny_shapes):
    """overrides(run_dir, *extra, method=, masks=, steps=) -> Hydra overrides of a tiny run
    on ``tiny_shapes`` with its own MLflow SQLite store and output folder under run_dir."""

    def make(run_dir, *extra: str, method="detcon_b", masks="global", steps=6) -> list[str]:
        return [
            f"method={method}",
            f"masks={masks}",
            f"data.root={tiny_shapes}",
            f"train.steps={steps}",
            f"train.out_dir={run_dir}/run",
            f"tracking.uri=sqlite:///{run_dir}/mlflow.db",
            *TINY_TRAIN,
            *extra,
        ]

    return make


SLURM_DIR = Path(os.environ.get("DETLAB_SLURM_DIR", "/tmp/detlab-slurm"))


@pytest.fixture(scope="session")
def slurm_conf() -> Path:
    """The local two-node cluster (platform/slurm/cluster.sh): installed on first use
    (Debian packages, needs root) and started once per session; its slurm.conf path."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, daemons)")
    script = Path(__file__).resolve().parents[1] / "platform/slurm/cluster.sh"
    for action in ("install", "start"):
        done = subprocess.run(["bash", str(script), action], capture_output=True, text=True)
        if done.returncode:
            pytest.fail(f"cluster.sh {action} failed:\n{done.stderr[-3000:]}")
    return SLURM_DIR / "etc/slurm.conf"


@pytest.fixture(autouse=True)
def _slurm_env(request, monkeypatch):
    """Tests marked `slurm` get the cluster started and SLURM_CONF pointing at it."""
    if request.node.get_closest_marker("slurm"):
        conf = request.getfixturevalue("slurm_conf")
        monkeypatch.setenv("SLURM_CONF", str(conf))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real tracking server (SQLite backend) on 127.0.0.1, on a port and store that stay
    the same when it is killed and started again (the tracking-outage fault test)."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = Path(root), free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"sqlite:///{self.root}/mlflow.db", "--default-artifact-root",
             str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self.url
            except OSError:
                time.sleep(0.3)
        self.stop(signal.SIGKILL)
        pytest.fail("mlflow server did not come up")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server's URL, one per test module."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    yield server.start()
    server.stop()


@pytest.fixture
def restartable_mlflow_server(tmp_path):
    """A real tracking server this test may kill (``stop(signal.SIGKILL)``) and start again."""
    server = MlflowServer(tmp_path / "mlflow_server")
    server.start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def slurm_cfg(tiny_overrides, tmp_path, mlflow_server, slurm_conf, monkeypatch):
    """cfg(*extra, method=, steps=, nodes=) -> a tiny run's composed config for the local
    cluster, logging to ``mlflow_server``; detlab's job registry kept in tmp_path."""
    from detlab.platform.compose import compose

    monkeypatch.setenv("DETLAB_HOME", str(tmp_path / "home"))

    def make(*extra, method="byol", steps=6, nodes=1):
        overrides = tiny_overrides(tmp_path, method=method, steps=steps)
        overrides = [o for o in overrides if not o.startswith("tracking.uri")]
        return compose([*overrides, "cluster=slurm", f"cluster.nodes={nodes}",
                        "cluster.time_min=10", "cluster.cpus_per_task=1",
                        f"cluster.slurm_conf={slurm_conf}", f"cluster.log_dir={tmp_path}/logs",
                        f"tracking.uri={mlflow_server}", *extra])  # fmt: skip

    return make


@pytest.fixture
def sweep_args(tiny_overrides, tmp_path):
    """CLI args of a tiny sweep run in tmp_path (trial settings + sweep overrides)."""

    def make(*extra: str, name="t", steps=4) -> list[str]:
        trial = tiny_overrides(tmp_path, method="detcon_b", masks="grid", steps=steps)
        trial = [o for o in trial if not o.startswith(("train.out_dir", "masks="))]
        return [
            *trial,
            "masks=grid",
            "masks.path=null",
            "train.knn_max_images=24",
            f"sweep.name={name}",
            f"sweep.out_dir={tmp_path}/sweeps/{name}",
            "sweep.heartbeat_s=2",
            *extra,
        ]

    return make


class _TouchesWhenUnpickled:
    """Unpickling this calls pathlib.Path.touch: what a hostile checkpoint could do."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


@pytest.fixture
def hostile_payload():
    """payload(target) -> an object whose unpickling creates the file ``target``."""
    return _TouchesWhenUnpickled

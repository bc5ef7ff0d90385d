"""The distribution maps every code folder into one `detlab` namespace, and the repo root
never shadows the standard library's `platform` (see ../shared/DESIGN.md)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("platform", "methods", "sweeps", "pipelines")


def python_folders() -> set[str]:
    found = set()
    for top in TOP_LEVEL:
        for py in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in py.parts:
                found.add(py.parent.relative_to(ROOT).as_posix())
    return found


def test_top_level_folders_have_no_init():
    for top in TOP_LEVEL:
        assert not (ROOT / top / "__init__.py").exists(), f"{top}/__init__.py must not exist"


def test_import_platform_from_repo_root_is_stdlib():
    code = "import platform, sysconfig; print(platform.__file__); print(platform.system())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert Path(out[0]).parent == Path(__import__("sysconfig").get_paths()["stdlib"])
    assert out[1] == "Linux"


def test_import_torch_and_detlab_from_repo_root():
    code = "import torch, detlab.platform.config, detlab.platform.train; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_wheel_contains_every_python_folder_and_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("detlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    dirs = {Path(n).parent.as_posix() for n in names if n.endswith(".py")}
    expected = {"detlab/" + folder for folder in python_folders()}
    assert expected <= dirs, f"missing from wheel: {sorted(expected - dirs)}"
    assert "detlab/platform/conf/config.yaml" in names
    assert any(n.startswith("detlab/platform/conf/method/") for n in names)
    assert any(n.startswith("detlab/sweeps/conf/sweep/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    listed = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sweeps = detlab.sweeps.schema:CONFIG_DIR" in listed  # the sweep group's folder
    for top in TOP_LEVEL:
        assert f"detlab/{top}/__init__.py" not in names


def _name(requirement: str) -> str:
    import re

    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_lock_pins_every_dependency_and_install_paths_use_it():
    """A new upstream release must change nothing until the lock is updated on purpose: the
    lock pins every direct dependency exactly, and both install paths apply it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = {
        _name(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    }
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version
    assert direct <= set(pins), f"not pinned: {sorted(direct - set(pins))}"
    assert all(v and "*" not in v for v in pins.values())
    install = "-c requirements.lock -e '.[dev]'"
    assert install in (ROOT / ".ci/run").read_text()
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert install in first_block  # the README's first command

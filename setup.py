"""Package discovery for detlab.

The repository root holds four code folders that become subpackages of one import
namespace: ``platform/`` -> ``detlab.platform`` and so on. The folders themselves carry no
``__init__.py`` (a ``platform/__init__.py`` would shadow the standard library's
``platform`` whenever the repo root is on sys.path); every Python subfolder inside them is
mapped explicitly here so that a built wheel holds all of them.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
TOP_LEVEL = ("platform", "methods", "sweeps", "pipelines")
SKIP = {"__pycache__"}


def discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for top in TOP_LEVEL:
        for folder in sorted([ROOT / top, *(ROOT / top).rglob("*")]):
            if not folder.is_dir() or SKIP & set(folder.relative_to(ROOT).parts):
                continue
            if not any(folder.glob("*.py")):
                continue
            rel = folder.relative_to(ROOT)
            name = "detlab." + ".".join(rel.parts)
            packages.append(name)
            package_dir[name] = rel.as_posix()
    return packages, package_dir


packages, package_dir = discover()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "detlab.platform": [
            "conf/*.yaml",
            "conf/**/*.yaml",
            "slurm/*.sh",
            "slurm/*.tmpl",
            "slurm/*.conf",
        ],
        "detlab.sweeps": ["conf/**/*.yaml"],
    },
    include_package_data=True,
)

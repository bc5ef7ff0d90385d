"""Every DVC stage that runs a pipeline lists, among its deps, each file of detlab.pipelines
that its command imports (transitively through pipelines/, lazy imports included):
otherwise DVC calls a stage up to date after the code that computes it changed. The layers
below (methods/, platform/) are listed whole by the stages that train; a mask stage reaches
them only to submit SLURM arrays, so its outputs do not depend on the training code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def module_file(module: str) -> Path | None:
    """detlab.pipelines.masks.run -> pipelines/masks/run.py (or the package's __init__);
    None outside detlab.pipelines."""
    parts = module.split(".")
    if parts[:2] != ["detlab", "pipelines"]:
        return None
    base = REPO.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path.relative_to(REPO)
    return None


def imported_files(start: Path) -> set[Path]:
    """The pipelines files ``start`` imports, transitively (``start`` included)."""
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse((REPO / path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            todo += [f for f in map(module_file, names) if f is not None]
    return seen


def stages() -> list[tuple[str, str, list[str]]]:
    out = []
    for dvcfile in ("dvc.yaml", "ablations/dvc.yaml"):
        for name, stage in yaml.safe_load((REPO / dvcfile).read_text())["stages"].items():
            body = stage.get("do", stage)
            out.append((f"{dvcfile}:{name}", body["cmd"], body.get("deps", [])))
    return out


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


STAGES = stages()


@pytest.mark.parametrize("stage,cmd,deps", STAGES, ids=[s[0] for s in STAGES])
def test_a_stage_depends_on_every_detlab_file_its_command_imports(stage, cmd, deps):
    modules = re.findall(r"python -m (detlab\.[\w.]+)", cmd)
    assert modules, f"{stage} runs no `python -m detlab...`: {cmd!r}"
    entries = [f for f in map(module_file, modules) if f is not None]  # pipelines only
    missing = sorted(str(f) for e in entries for f in imported_files(e) if not covered(f, deps))
    assert not missing, f"{stage} does not list {missing} among its deps"


def test_the_import_walk_follows_lazy_imports():
    # study.py imports the runner inside main(); the runner imports report_terms
    files = imported_files(Path("pipelines/study.py"))
    assert {Path("pipelines/study_runner.py"), Path("pipelines/report_terms.py")} <= files
    assert Path("pipelines/report_ablations.py") not in files

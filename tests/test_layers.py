"""The import layers, read from the source (issue 13's target), lowest first:

    data access (methods/datasets: readers, the mask store) -> methods -> platform
    -> sweeps and pipelines (what to run)

No module may import from a higher layer, lazily inside a function included. A layer above
reaches into a lower one only through the lower one's extension points: ``detlab sweep``
is a ``detlab.commands`` entry point (pyproject.toml) that the platform's CLI loads, and the
sweep group's schema a ``detlab.config_groups`` one that the platform's config stores."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("methods", "platform", "sweeps", "pipelines")
RANK = {"data": 0, "methods": 1, "platform": 2, "top": 3}


def layer(module: str) -> str:
    parts = module.split(".")[1:]  # drop "detlab"
    if parts[:2] == ["methods", "datasets"]:
        return "data"
    if parts[0] in ("methods", "platform"):
        return parts[0]
    return "top"


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("detlab.")}


def upward_imports(root: Path = REPO) -> set[tuple[str, str]]:
    found = set()
    for folder in FOLDERS:
        for path in (root / folder).rglob("*.py"):
            rel = path.relative_to(root)
            here = layer("detlab." + ".".join(rel.with_suffix("").parts))
            for module in imports(path):
                if RANK[layer(module)] > RANK[here]:
                    found.add((rel.as_posix(), module))
    return found


def test_no_upward_imports():
    found = upward_imports()
    assert not found, f"imports from a higher layer (see this file's docstring): {sorted(found)}"


def test_no_import_by_name_around_the_check():
    """importlib.import_module("detlab...") would hide an import from the check above."""
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            assert 'import_module("detlab' not in path.read_text(), path


def test_layers_above_extend_the_platform_through_entry_points():
    """`detlab sweep` and the sweep group's schema come from pyproject's entry points, not
    imports: the command is found, and the schema types the group (an unknown key fails)."""
    import pytest

    from detlab.platform.cli import plugins
    from detlab.platform.compose import ConfigError, compose

    assert plugins()["sweep"].subcommands == ("status", "run", "worker")
    assert compose(["sweep=temperature"]).sweep.max_retries == 2  # a schema default
    with pytest.raises(ConfigError, match="n_trails.*Valid keys of sweep: .*n_trials"):
        compose(["sweep=temperature", "sweep.n_trails=3"])


def test_an_upward_import_is_caught(tmp_path):
    """The check itself: a methods module importing the platform's training loop is found."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "methods" / "x.py").write_text("from detlab.platform.train import train\n")
    (tmp_path / "platform" / "y.py").write_text("import detlab.methods.registry\n")
    (tmp_path / "methods" / "z.py").write_text("from detlab.methods.datasets.mask_store import S\n")
    (tmp_path / "methods" / "datasets").mkdir()
    (tmp_path / "methods" / "datasets" / "r.py").write_text("import detlab.methods.data\n")
    assert upward_imports(tmp_path) == {
        ("methods/x.py", "detlab.platform.train"),
        ("methods/datasets/r.py", "detlab.methods.data"),  # data access below the science
    }


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the detlab modules it imports, at the top or inside a function."""
    paths = {"detlab." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(
        ".__init__"): p for folder in FOLDERS for p in (root / folder).rglob("*.py")}  # fmt: skip

    def targets(path: Path) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & paths.keys()
                out |= subs or {node.module}  # `from package import module`: the module
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out & paths.keys()

    return {m: targets(p) - {m} for m, p in paths.items()}


def import_cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


# Circles held together by imports inside functions (issue 30 broke the last: a name both
# sides need lives in a module both import, e.g. pipelines/report_terms.py); a new one fails.
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_no_new_import_cycles():
    """Modules that import each other (a lazy import inside a function counts) are a
    circle the layer test above cannot see; only the known ones remain."""
    assert import_cycles(import_graph()) == KNOWN_CYCLES


def test_the_cycle_finder_sees_a_lazy_circle(tmp_path):
    for name, body in (("a.py", "from detlab.methods.b import x\n"),
                       ("b.py", "def f():\n    from detlab.methods.a import y\n")):  # fmt: skip
        (tmp_path / "methods").mkdir(exist_ok=True)
        (tmp_path / "methods" / name).write_text(body)
    for folder in FOLDERS[1:]:
        (tmp_path / folder).mkdir()
    cycles = import_cycles(import_graph(tmp_path))
    assert cycles == {frozenset({"detlab.methods.a", "detlab.methods.b"})}

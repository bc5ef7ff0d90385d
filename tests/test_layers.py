"""The import layers, read from the source (issue 13's target), lowest first:

    data access (methods/datasets: readers, the mask store) -> methods -> platform
    -> sweeps and pipelines (what to run)

No module may import from a higher layer, lazily inside a function included, nor reach it
through a string: a module named in one (``importlib.import_module("detlab...")``,
``find_spec("detlab...")``, ``__import__``, ``python -m detlab...``, ``"detlab.x:attr"``)
counts as an import of it, and a path into a higher layer's folder (``"sweeps/conf"``) as
one of that layer. A call that loads a module by a name the check cannot read fails too.
A layer above reaches into a lower one only through the lower one's extension points:
``detlab sweep`` is a ``detlab.commands`` entry point (pyproject.toml) that the platform's
CLI loads, the sweep group's schema a ``detlab.config_groups`` one that the platform's
config stores, and the sweep group's YAML folder a ``detlab.config_dirs`` one that the
platform's compose puts on Hydra's search path."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("methods", "platform", "sweeps", "pipelines")
RANK = {"data": 0, "methods": 1, "platform": 2, "top": 3}
# a detlab module named in a string: "detlab.sweeps", "detlab.sweeps.schema:SweepConfig"
NAMED = re.compile(rf"(detlab\.(?:{'|'.join(FOLDERS)})(?:\.\w+)*)(?::[\w.]+)?")
LOADERS = {"import_module", "find_spec", "__import__", "spec_from_file_location", "run_module"}


def layer(module: str) -> str:
    parts = module.split(".")[1:]  # drop "detlab"
    if parts[:2] == ["methods", "datasets"]:
        return "data"
    if parts[0] in ("methods", "platform"):
        return parts[0]
    return "top"


def strings(tree: ast.AST) -> list[str]:
    """Every string literal in ``tree`` (docstrings too: they never match a whole name)."""
    constants = (n for n in ast.walk(tree) if isinstance(n, ast.Constant))
    return [n.value for n in constants if isinstance(n.value, str)]


def named_in_strings(tree: ast.AST) -> set[str]:
    """The detlab modules a string names whole (an import by name, ``-m``, an entry point)."""
    return {m.group(1) for text in strings(tree) if (m := NAMED.fullmatch(text))}


def folder_paths(tree: ast.AST) -> set[str]:
    """A path into a code folder written as a string (``"sweeps"``, ``"sweeps/conf"``), as
    that folder's package: the same reach as importing it."""
    heads = [text.split("/") for text in strings(tree)]
    return {"detlab." + ("methods.datasets" if h[:2] == ["methods", "datasets"] else h[0])
            for h in heads if h[0] in FOLDERS}  # fmt: skip


def imports(path: Path) -> set[str]:
    """The detlab modules ``path`` imports, names in a string or reaches by a path."""
    tree = ast.parse(path.read_text())
    out = named_in_strings(tree) | folder_paths(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("detlab.")}


def unreadable_loads(root: Path = REPO) -> list[str]:
    """Calls that load a module by a name that is not a string literal (the checks here
    cannot tell which module), as ``path:line``."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                literal = node.args and isinstance(node.args[0], ast.Constant)
                if name in LOADERS and not literal:
                    found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return found


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


def test_no_import_by_a_name_the_check_cannot_read():
    """``importlib.import_module(name)`` would hide an import from the check above."""
    assert not unreadable_loads(), "import the module, or name it in a string literal"


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


def test_an_upward_reach_through_a_string_is_caught(tmp_path):
    """The reach issue 30 found (the platform finding the sweeps' config tree through
    ``find_spec("detlab.sweeps")``) and its variants fail the layer check; the tag names
    that merely start with ``detlab.`` and the entry point loads do not."""
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    reaches = {
        "find_spec.py": 'import importlib.util\nimportlib.util.find_spec("detlab.sweeps")\n',
        "by_name.py": 'import importlib\nimportlib.import_module("detlab.pipelines.study")\n',
        "dunder.py": '__import__("detlab.sweeps.worker")\n',
        "module.py": 'import sys\ncmd = [sys.executable, "-m", "detlab.sweeps.worker"]\n',
        "path.py": 'from pathlib import Path\nconf = Path(__file__).parents[1] / "sweeps/conf"\n',
    }
    for name, body in reaches.items():
        (tmp_path / "platform" / name).write_text(body)
    (tmp_path / "platform" / "fine.py").write_text(
        "from importlib.metadata import entry_points\n"
        'tags = {"detlab.state": "requeued", "detlab.study": "x"}\n'
        'dirs = [ep.load() for ep in entry_points(group="detlab.config_dirs")]\n'
    )
    (tmp_path / "sweeps" / "up.py").write_text('TARGET = "detlab.platform.cli:main"\n')
    assert upward_imports(tmp_path) == {
        ("platform/find_spec.py", "detlab.sweeps"),
        ("platform/by_name.py", "detlab.pipelines.study"),
        ("platform/dunder.py", "detlab.sweeps.worker"),
        ("platform/module.py", "detlab.sweeps.worker"),
        ("platform/path.py", "detlab.sweeps"),
    }
    (tmp_path / "methods" / "hidden.py").write_text(
        'import importlib\nfor name in ["detlab.platform"]:\n    importlib.import_module(name)\n'
    )
    assert unreadable_loads(tmp_path) == ["methods/hidden.py:3"]


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the detlab modules it imports, at the top or inside a function."""
    paths = {"detlab." + ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(
        ".__init__"): p for folder in FOLDERS for p in (root / folder).rglob("*.py")}  # fmt: skip

    def targets(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        out = named_in_strings(tree)
        for node in ast.walk(tree):
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

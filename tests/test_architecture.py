"""Layering of ``src/dualsparse``: imports point down the layer order, no cycles, no lazy imports.

Layers, bottom to top (mirrored in ``docs/architecture.md``; a test keeps the two equal)::

    core < base < middle < apps < top

A module may import modules of its own layer or of layers below, never above; in addition
``engine`` never imports ``train`` or ``apps`` (inference only). Imports are collected with
``ast`` at module level *and* inside functions. Inside functions only the optional heavy
dependencies in ``LAZY_ALLOWED`` may be imported, and a module-level ``__getattr__`` (PEP 562
lazy export) may import the names it exports; each such import carries a comment saying why.
Cycles are refused between modules and between the units of the table (``models`` <->
``embedded`` is a cycle even when no two single modules form one).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "dualsparse"
LAYER_ORDER = ("core", "base", "middle", "apps", "top")

#: Unit (module or subpackage, relative to ``dualsparse``; "" is the package itself) -> layer.
LAYERS: dict[str, str] = {
    "atomic": "core",
    "validation": "core",
    "serialisation": "core",
    "version": "core",
    "malloc": "core",
    "models": "base",
    "data": "base",
    "embedded": "base",
    "accounting": "middle",
    "accounting_report": "middle",
    "neurobench_metrics": "middle",
    "sparsity": "middle",
    "rtrl": "middle",
    "engine": "middle",
    "train": "middle",
    "apps": "apps",
    "experiments": "top",
    "analysis": "top",
    "cli": "top",
    "__main__": "top",
    "": "top",
}
#: Imports refused although the layer order allows them: (importer unit, imported unit).
FORBIDDEN: frozenset[tuple[str, str]] = frozenset({("engine", "train"), ("engine", "apps")})
#: Modules (and their submodules) that may be imported inside a function: the optional heavy
#: dependencies.
LAZY_ALLOWED = ("ray", "matplotlib", "tensorboard", "torch.utils.tensorboard", "triton")
MAX_LINES = 400


@dataclass(frozen=True)
class Import:
    """One imported name: ``importer`` module, ``target`` (dotted), where.

    ``from a import b`` gives ``target="a.b"``, ``parent="a"``: the import is of ``a.b`` when
    that is a module, else of ``a`` (``b`` is an attribute).
    """

    importer: str
    target: str
    parent: str | None
    line: int
    in_function: bool
    commented: bool
    lazy_export: bool = False


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` file of ``package`` under ``src``."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def parse_imports(module: str, path: Path) -> list[Import]:
    """Every imported name in a file, at module level and inside functions."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source, filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, lazy_export: bool) -> None:
        for child in ast.iter_child_nodes(node):
            is_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            nested = in_function or is_function
            in_getattr = lazy_export or (is_function and not in_function
                                         and isinstance(node, ast.Module)
                                         and child.name == "__getattr__")
            if isinstance(child, ast.Import | ast.ImportFrom):
                commented = "#" in lines[child.lineno - 1] or (
                    child.lineno > 1 and lines[child.lineno - 2].strip().startswith("#"))
                if isinstance(child, ast.Import):
                    names = [(a.name, None) for a in child.names]
                else:
                    base = _absolute(module, path.name == "__init__.py", child)
                    names = [(f"{base}.{a.name}", base) if a.name != "*" else (base, None)
                             for a in child.names]
                for name, parent in names:
                    found.append(Import(module, name, parent, child.lineno, in_function,
                                        commented, lazy_export))
            visit(child, nested, in_getattr)

    visit(tree, False, False)
    return found


def unit_of(module: str) -> str:
    """The ``LAYERS`` key a module belongs to (its first component below the package)."""
    parts = module.split(".")[1:]
    return parts[0] if parts else ""


@dataclass
class Report:
    """Violations found, one line each (``path:line: what``)."""

    upward: list[str]
    cycles: list[str]
    lazy: list[str]
    unmapped: list[str]
    too_long: list[str]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def check_tree(src: Path, package: str, layers: dict[str, str],
               forbidden: frozenset[tuple[str, str]] = FORBIDDEN,
               max_lines: int = MAX_LINES) -> Report:
    """Run every rule on the package ``src/package``; returns the violations found."""
    files = module_files(src, package)
    rank = {name: LAYER_ORDER.index(layer) for name, layer in layers.items()}
    report = Report([], [], [], [], [])
    graph: dict[str, set[str]] = {m: set() for m in files}
    unit_graph: dict[str, set[str]] = {}
    for module, path in files.items():
        where = path.relative_to(src)
        n_lines = len(path.read_text().splitlines())
        if n_lines > max_lines:
            report.too_long.append(f"{where}: {n_lines} lines > {max_lines}")
        unit = unit_of(module)
        if unit not in rank:
            report.unmapped.append(f"{where}: unit {unit!r} has no layer")
            continue
        unit_graph.setdefault(unit, set())
        seen: set[tuple[int, str]] = set()
        for imp in parse_imports(module, path):
            target = imp.target if imp.parent is None or imp.target in files else imp.parent
            if (imp.line, target) in seen:
                continue
            seen.add((imp.line, target))
            top = target.split(".")[0]
            if imp.in_function and top != package:
                if not any(target == m or target.startswith(m + ".") for m in LAZY_ALLOWED):
                    report.lazy.append(f"{where}:{imp.line}: import of {target} inside a "
                                       f"function")
                elif not imp.commented:
                    report.lazy.append(f"{where}:{imp.line}: lazy import of {target} "
                                       f"without a comment saying why")
                continue
            if target not in files:
                continue
            if imp.in_function and not (imp.lazy_export and imp.commented):
                report.lazy.append(f"{where}:{imp.line}: import of {target} inside a "
                                   f"function" + (" (lazy export without a comment)"
                                                  if imp.lazy_export else ""))
            graph[module].add(target)
            target_unit = unit_of(target)
            if target_unit == unit or target_unit not in rank:
                continue
            unit_graph[unit].add(target_unit)
            if rank[target_unit] > rank[unit] or (unit, target_unit) in forbidden:
                report.upward.append(
                    f"{where}:{imp.line}: {unit} ({layers[unit]}) imports {target} "
                    f"({layers[target_unit]})")
    for comp in _strongly_connected(graph):
        report.cycles.append("module cycle: " + " <-> ".join(comp))
    for comp in _strongly_connected(unit_graph):
        report.cycles.append("package cycle: " + " <-> ".join(u or package for u in comp))
    return report


@pytest.fixture(scope="module")
def report() -> Report:
    return check_tree(SRC, PACKAGE, LAYERS)


def test_every_module_has_a_layer(report):
    assert not report.unmapped, "\n".join(report.unmapped)


def test_imports_point_down_the_layers(report):
    assert not report.upward, "\n".join(report.upward)


def test_no_import_cycles(report):
    assert not report.cycles, "\n".join(report.cycles)


def test_no_imports_inside_functions(report):
    assert not report.lazy, "\n".join(report.lazy)


def test_no_module_over_the_line_limit(report):
    assert not report.too_long, "\n".join(report.too_long)


def test_docs_mirror_the_layer_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w.]*)` +\| (\w+) +\|$", text, flags=re.MULTILINE)
    documented = {("" if name == PACKAGE else name.removeprefix(f"{PACKAGE}.")): layer
                  for name, layer in rows}
    assert documented == LAYERS


# ------------------------------------------------------------ the checker on planted trees
FAKE_LAYERS = {"core": "core", "low": "base", "high": "middle", "": "top"}


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in {"pkg/__init__.py": "", **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_accepts_a_clean_tree(tmp_path):
    src = _plant(tmp_path, {
        "pkg/core.py": "import json\n",
        "pkg/low/__init__.py": "from pkg.low.a import f\n",
        "pkg/low/a.py": "from pkg import core\n\ndef f():\n    import ray  # optional: sweeps\n",
        "pkg/high.py": "from .low import a\nfrom pkg.low.a import f\n",
    })
    assert check_tree(src, "pkg", FAKE_LAYERS) == Report([], [], [], [], [])


def test_checker_catches_a_planted_upward_import(tmp_path):
    src = _plant(tmp_path, {
        "pkg/core.py": "",
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "def f():\n    pass\n\nfrom pkg.high import g\n",
        "pkg/high.py": "def g():\n    pass\n",
    })
    report = check_tree(src, "pkg", FAKE_LAYERS)
    assert report.upward == ["pkg/low/a.py:4: low (base) imports pkg.high (middle)"]
    assert report.cycles == [] and report.lazy == []


def test_checker_catches_an_upward_import_inside_a_function(tmp_path):
    src = _plant(tmp_path, {
        "pkg/low.py": "def f():\n    from . import high\n    return high\n",
        "pkg/high.py": "",
    })
    report = check_tree(src, "pkg", FAKE_LAYERS)
    assert [u.split(":")[:2] for u in report.upward] == [["pkg/low.py", "2"]]
    assert report.lazy == ["pkg/low.py:2: import of pkg.high inside a function"]


def test_checker_catches_a_planted_cycle(tmp_path):
    src = _plant(tmp_path, {
        "pkg/low/__init__.py": "",
        "pkg/low/a.py": "from pkg.low import b\n",
        "pkg/low/b.py": "from pkg.low.c import x\n",
        "pkg/low/c.py": "import pkg.low.a\nx = 1\n",
    })
    report = check_tree(src, "pkg", FAKE_LAYERS)
    assert report.cycles == ["module cycle: pkg.low.a <-> pkg.low.b <-> pkg.low.c"]
    assert report.upward == []


def test_checker_catches_a_cycle_between_packages_of_one_layer(tmp_path):
    layers = {"one": "base", "two": "base", "": "top"}
    src = _plant(tmp_path, {
        "pkg/one/__init__.py": "",
        "pkg/one/a.py": "from pkg.two.b import y\nx = 1\n",
        "pkg/two/__init__.py": "",
        "pkg/two/b.py": "y = 2\n",
        "pkg/two/c.py": "from pkg.one.a import x\n",
    })
    report = check_tree(src, "pkg", layers)
    assert report.cycles == ["package cycle: one <-> two"]


def test_checker_refuses_lazy_imports_and_uncommented_heavy_ones(tmp_path):
    src = _plant(tmp_path, {
        "pkg/core.py": ("def f():\n    import json\n\n"
                        "def g():\n    import matplotlib.pyplot as plt\n    return plt\n\n"
                        "class C:\n    def h(self):\n        # tensorboard is optional\n"
                        "        from tensorboard import x\n        return x\n"),
    })
    report = check_tree(src, "pkg", FAKE_LAYERS)
    assert report.lazy == [
        "pkg/core.py:2: import of json inside a function",
        "pkg/core.py:5: lazy import of matplotlib.pyplot without a comment saying why",
    ]


def test_checker_allows_commented_lazy_exports_only_in_module_getattr(tmp_path):
    src = _plant(tmp_path, {
        "pkg/__init__.py": ("def __getattr__(name):\n"
                            "    from pkg.high import g  # lazy export: heavy\n"
                            "    from pkg.high import h\n"
                            "    return g\n\n"
                            "def other():\n"
                            "    from pkg.high import g  # not a lazy export\n"),
        "pkg/high.py": "g = h = 1\n",
    })
    report = check_tree(src, "pkg", FAKE_LAYERS)
    assert report.lazy == [
        "pkg/__init__.py:3: import of pkg.high inside a function (lazy export without a comment)",
        "pkg/__init__.py:7: import of pkg.high inside a function",
    ]
    assert report.upward == []


def test_checker_flags_long_modules_and_unmapped_units(tmp_path):
    src = _plant(tmp_path, {"pkg/core.py": "x = 1\n" * 11, "pkg/stray.py": ""})
    report = check_tree(src, "pkg", FAKE_LAYERS, max_lines=10)
    assert report.too_long == ["pkg/core.py: 11 lines > 10"]
    assert report.unmapped == ["pkg/stray.py: unit 'stray' has no layer"]


def test_checker_honours_forbidden_pairs_within_a_layer(tmp_path):
    layers = {"engine": "middle", "train": "middle", "": "top"}
    src = _plant(tmp_path, {"pkg/engine.py": "import pkg.train\n", "pkg/train.py": ""})
    report = check_tree(src, "pkg", layers)
    assert report.upward == ["pkg/engine.py:1: engine (middle) imports pkg.train (middle)"]

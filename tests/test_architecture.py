"""The package's layout rules, checked on its source with `ast` (nothing is imported).

Stages, in the order imports may point (a module imports from its own stage or earlier ones):

    0 base        tl_culture/_version.py, _io.py, errors.py
    1 model/      2 data/       3 counting/   4 selection/  5 explore/
    6 intervene/  7 evaluation/ 8 experiment/ 9 report/     10 cli/

``tl_culture/__init__.py`` (the public API) and ``tl_culture/__main__.py`` are the top: they may
import any stage. Every import counts, at module level and inside functions, classes or
``if TYPE_CHECKING:`` blocks; relative imports are resolved; dynamic imports (`importlib`) are not
seen. The rules:

1. imports point down the stage order;
2. nothing inside the package imports the package root (``import tl_culture`` or
   ``from tl_culture import X``): import the concrete module, ``tl_culture.<stage>.<module>``;
3. no import cycles between modules;
4. no module over `MAX_MODULE_LINES` lines;
5. no function or method over `MAX_FUNCTION_LINES` lines (from its ``def`` line to its last
   line, docstring included) unless its docstring says why with the marker `LONG_MARKER`, e.g.
   "Long because the steps share twelve local variables; split, they would pass them around.".

Each test lists every violation as ``path:line: what``.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

PACKAGE = "tl_culture"
ROOT = REPO / PACKAGE
STAGES = {
    "_version": 0,
    "_io": 0,
    "errors": 0,
    "model": 1,
    "data": 2,
    "counting": 3,
    "selection": 4,
    "explore": 5,
    "intervene": 6,
    "evaluation": 7,
    "experiment": 8,
    "report": 9,
    "cli": 10,
}
STAGE_NAMES = {v: k for k, v in STAGES.items() if k not in ("_version", "_io")} | {0: "base"}
TOP = {PACKAGE, f"{PACKAGE}.__main__"}  # may import any stage
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LONG_MARKER = "Long because"


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the package."""

    source: str  # importing module, dotted
    target: str  # imported module, dotted (a submodule when ``from pkg import submodule``)
    line: int


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _base(module: str, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _imports(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a package module in ``path``, anywhere in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [Import(module, a.name, node.lineno) for a in node.names if _inside(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            if base is None or not _inside(base):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(module, sub if sub in known else base, node.lineno))
    return list(dict.fromkeys(out))  # one entry per (target, line)


def _inside(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def _stage(module: str) -> int | None:
    """Stage of a package module; None for one outside every stage."""
    parts = module.split(".")
    return STAGES.get(parts[1]) if len(parts) > 1 else None


def _all_imports() -> tuple[dict[str, Path], list[Import]]:
    mods = _modules()
    known = set(mods)
    return mods, [imp for m, p in mods.items() for imp in _imports(m, p, known)]


def test_every_module_belongs_to_a_stage():
    bad = [
        f"{_rel(p)}:1: not in any stage of the layout (stages: {', '.join(STAGES)})"
        for m, p in _modules().items()
        if m not in TOP and _stage(m) is None
    ]
    assert not bad, "\n".join(bad)


def test_imports_point_down_the_stage_order():
    mods, imports = _all_imports()
    bad = []
    for imp in imports:
        if imp.source in TOP or imp.target == PACKAGE:
            continue  # the top may import anything; root imports are the next test's
        src, dst = _stage(imp.source), _stage(imp.target)
        if src is not None and dst is not None and dst > src:
            bad.append(
                f"{_rel(mods[imp.source])}:{imp.line}: {imp.source} (stage {src} {STAGE_NAMES[src]}) "
                f"imports {imp.target} (stage {dst} {STAGE_NAMES[dst]}), a later stage"
            )
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_package_root():
    mods, imports = _all_imports()
    bad = [
        f"{_rel(mods[imp.source])}:{imp.line}: {imp.source} imports the package root {PACKAGE}; "
        f"import the concrete module ({PACKAGE}.<stage>.<module>)"
        for imp in imports
        if imp.target == PACKAGE and imp.source != PACKAGE
    ]
    assert not bad, "\n".join(bad)


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _cycle_path(start: str, comp: set[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest import path from ``start`` back to itself inside one component (BFS)."""
    prev: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(edges.get(v, {})):
            if w not in comp:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return [start]


def test_no_import_cycles():
    mods, imports = _all_imports()
    edges: dict[str, dict[str, int]] = {}
    for imp in imports:
        if imp.target != imp.source and imp.target in mods:
            edges.setdefault(imp.source, {}).setdefault(imp.target, imp.line)
    bad = []
    for comp in _cycles(edges):
        path = _cycle_path(comp[0], set(comp), edges)
        steps = [f"  {_rel(mods[a])}:{edges[a][b]}: {a} imports {b}" for a, b in zip(path, path[1:])]
        bad.append(f"import cycle among {', '.join(comp)}:\n" + "\n".join(steps))
    assert not bad, "\n".join(bad)


def test_modules_are_short():
    bad = []
    for path in _modules().values():
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_MODULE_LINES:
            bad.append(f"{_rel(path)}:1: {n} lines (at most {MAX_MODULE_LINES}); split it")
    assert not bad, "\n".join(bad)


def test_functions_are_short_or_say_why():
    bad = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and LONG_MARKER not in (ast.get_docstring(node) or ""):
                bad.append(
                    f"{_rel(path)}:{node.lineno}: {module}.{node.name} has {n} lines (at most "
                    f"{MAX_FUNCTION_LINES} unless its docstring says why with {LONG_MARKER!r})"
                )
    assert not bad, "\n".join(bad)


def test_the_walker_sees_every_kind_of_import(tmp_path):
    """The checks above are only as good as the import walker: check it on a made-up module."""
    path = tmp_path / "tl_culture" / "counting" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "import tl_culture\n"
        "from . import stats\n"
        "from ..model.load import load_model\n"
        "def f():\n"
        "    from tl_culture.report import write\n"
        "    import tl_culture.cli.core as core\n",
        encoding="utf-8",
    )
    known = {"tl_culture.counting.stats", "tl_culture.report.write", "tl_culture.cli.core"}
    got = [(i.target, i.line) for i in _imports("tl_culture.counting.x", path, known)]
    assert sorted(got) == sorted(
        [
            ("tl_culture", 1),
            ("tl_culture.counting.stats", 2),
            ("tl_culture.model.load", 3),
            ("tl_culture.report.write", 5),
            ("tl_culture.cli.core", 6),
        ]
    )
    edges = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycle_path("a", {"a", "b", "c"}, edges) == ["a", "b", "c", "a"]

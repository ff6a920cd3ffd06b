"""The import graph of envkit: no cycle, no library module importing upward, a cheap ``import envkit``.

Every ``import`` and ``from ... import`` of an envkit module is read with ``ast``: at module level
("top") and inside functions ("lazy"). Both kinds count: a lazy import hides a cycle from the
interpreter, not from the design. Imports under ``if TYPE_CHECKING:`` are left out (they never
run). ``from envkit.x import y`` is an edge to ``envkit.x.y`` where that is a module, else to
``envkit.x``. Parent packages that Python imports on the way are not edges (their ``__init__``
files import next to nothing, which ``test_package_inits_stay_light`` holds).

Layers, top to bottom; a module may import its own layer or any lower one:
  6  envkit.cli, envkit.commands.*, envkit.__main__
  5  envkit.render, envkit.integrations.*   (Lightning, transformers, accelerate: over checkpoint/)
  4  envkit.checkpoint.*, envkit.conda.*
  3  envkit.distributed           (checkpoint's manager uses its collectives)
  2  envkit.config                (reads [tool.envkit] and builds policy.py's Policy)
  1  envkit.fingerprint.*, envkit.policy, envkit.atomic, envkit.inputs
  0  envkit.errors, envkit (the package: a lazy facade whose attributes load on use)

ALLOWED lists violations, each by the one import edge that makes it (none today); the test fails
on any other violation, and on an entry that is no longer in the code.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "envkit"

LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (6, ("envkit.cli", "envkit.commands", "envkit.__main__")),
    (5, ("envkit.render", "envkit.integrations")),
    (4, ("envkit.checkpoint", "envkit.conda")),
    (3, ("envkit.distributed",)),
    # config.py reads [tool.envkit] and builds the Policy that policy.py defines: it sits above it
    (2, ("envkit.config",)),
    (1, ("envkit.fingerprint", "envkit.policy", "envkit.atomic", "envkit.inputs")),
    (0, ("envkit.errors", "envkit")),
]

# (importer, imported): edges allowed for now; each entry that no longer applies fails the test.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()
ALLOWED_UPWARD_EDGES: set[tuple[str, str]] = set()

HEAVY = ("torch", "click", "yaml", "conda_lock", "rattler", "safetensors", "lightning", "pytorch_lightning",
         "transformers", "accelerate", "fsspec", "s3fs")


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    lazy: bool
    line: int

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} ({'lazy' if self.lazy else 'top'}, {_path(self.importer)}:{self.line})"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _path(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT))


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _edges_of(module: str, path: Path) -> list[Edge]:
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def target(name: str) -> str | None:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name or None

    def add(name: str, lazy: bool, line: int) -> None:
        found = target(name)
        edge = Edge(module, found or "", lazy, line)
        if found is not None and found != module and edge not in edges:
            edges.append(edge)

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub, lazy)
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "envkit":
                        add(alias.name, lazy, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                if source.split(".")[0] != "envkit":
                    continue
                for alias in child.names:
                    sub = f"{source}.{alias.name}"
                    add(sub if sub in MODULES else source, lazy, child.lineno)
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return edges


def _graph() -> list[Edge]:
    return [edge for module, path in MODULES.items() for edge in _edges_of(module, path)]


def _layer(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, layer)
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), rank)
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best[1]


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    succ: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        succ[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(succ[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], edges: list[Edge]) -> str:
    inside = [str(e) for e in edges if e.importer in component and e.imported in component]
    return " <-> ".join(component) + ": " + "; ".join(sorted(inside))


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _layer(module)


def test_no_import_cycle_beyond_the_allowed_ones() -> None:
    edges = [e for e in _graph() if (e.importer, e.imported) not in ALLOWED_CYCLE_EDGES]
    cycles = _cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, edges) for c in cycles)


def test_no_module_level_cycle_at_all_among_top_level_imports() -> None:
    """What Python itself would trip over: a cycle of module-level imports only; no allow-list."""
    edges = [e for e in _graph() if not e.lazy]
    cycles = _cycles(edges)
    assert not cycles, "module-level import cycles:\n" + "\n".join(_describe(c, edges) for c in cycles)


def test_no_library_module_imports_upward_beyond_the_allowed_ones() -> None:
    upward = [e for e in _graph() if _layer(e.imported) > _layer(e.importer) and (e.importer, e.imported) not in ALLOWED_UPWARD_EDGES]
    assert not upward, "upward imports (see LAYERS):\n" + "\n".join(map(str, upward))


def test_every_allowed_edge_is_still_in_the_code() -> None:
    """An entry whose import is gone must be deleted (and one that no longer breaks a cycle or climbs a layer too)."""
    edges = {(e.importer, e.imported) for e in _graph()}
    stale = sorted((ALLOWED_CYCLE_EDGES | ALLOWED_UPWARD_EDGES) - edges)
    assert not stale, f"delete from the allow-lists in {Path(__file__).name}: {stale}"
    for importer, imported in ALLOWED_UPWARD_EDGES:
        assert _layer(imported) > _layer(importer), f"{importer} -> {imported} is not upward: delete it from ALLOWED_UPWARD_EDGES"
    cycles = _cycles(_graph())
    for importer, imported in ALLOWED_CYCLE_EDGES:
        assert any(importer in c and imported in c for c in cycles), f"{importer} -> {imported} closes no cycle: delete it from ALLOWED_CYCLE_EDGES"


def test_package_inits_stay_light() -> None:
    """Python runs envkit/__init__.py and envkit/<pkg>/__init__.py for every import below them."""
    for module in ("envkit", "envkit.checkpoint", "envkit.conda"):
        top = {e.imported for e in _edges_of(module, MODULES[module]) if not e.lazy}
        assert top <= {"envkit.errors"}, f"{_path(module)} imports {sorted(top)} at module level"


def test_the_graph_reader_sees_known_imports() -> None:
    """The reader itself: a top-level, a lazy and a submodule form each found; TYPE_CHECKING left out."""
    edges = {(e.importer, e.imported, e.lazy) for e in _graph()}
    assert ("envkit.checkpoint.reader", "envkit.checkpoint.stamp", False) in edges
    assert ("envkit.checkpoint.reader", "envkit.checkpoint.safe_pickle", False) not in edges  # under TYPE_CHECKING
    assert ("envkit.checkpoint.reader", "envkit.checkpoint.safe_pickle", True) in edges
    assert ("envkit.commands.check", "envkit.checkpoint.resume_check", True) in edges
    assert ("envkit.checkpoint.manager", "envkit.distributed", False) in edges  # from envkit import distributed


def test_import_envkit_imports_no_heavy_dependency() -> None:
    code = "import sys, envkit; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    loaded = set(out.stdout.split())
    assert "envkit" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))

"""The package's shape: one-way imports between its packages, no import cycles
between modules, no module over the size a reader can hold in mind.

Every import counts, including those inside functions (a lazy import is still
a dependency) and under TYPE_CHECKING. The order below is the one in
versionfs/__init__.py's map, bottom first: a package may import only from
packages before it in this list (and from itself).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "versionfs"

LAYERS = ["blob", "meta", "common", "tree", "maint", "bucket", "fs", "cli"]
MAX_LINES = 600


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import mod` imports the module pkg.mod where there is one.
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("versionfs"):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer():
    loose = [m for m in _modules() if _layer(m) is None
             and m not in ("versionfs", "versionfs.__main__")]
    assert loose == [], f"modules outside the layer packages {LAYERS}: {loose}"


def test_imports_only_go_down_the_layers():
    wrong = []
    for module, targets in _graph().items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is None or there is None or here == there:
                continue
            if LAYERS.index(there) > LAYERS.index(here):
                wrong.append(f"{module} -> {target} ({here} is below {there})")
    assert wrong == [], "imports that go up the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components: any component of two or more
    # modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_modules_stay_readable_in_one_sitting():
    big = {m: n for m, p in _modules().items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines (split them by responsibility): {big}"


def test_the_checker_sees_what_it_must():
    """The checks above would catch a violation: the graph is not empty and
    resolves relative, aliased and in-function imports."""
    graph = _graph()
    assert "versionfs.blob.errors" in graph["versionfs.blob.codec"]           # relative
    assert "versionfs.common.state" in graph["versionfs.bucket.session"]     # aliased
    assert "versionfs.blob.url" in graph["versionfs.common.state"]           # inside a function
    assert "versionfs.tree.schema" in graph["versionfs.maint.fsck"]          # from pkg import mod

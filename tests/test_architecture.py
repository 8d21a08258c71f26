"""The rooms of docs/architecture.md: module-level imports inside fastdisco form no cycle, and the
lower rooms never import the higher ones (imports only point down)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "fastdisco"

# a room may import only rooms of a lower or equal rank (module-level imports)
RANK = {"errors": 0, "io": 0, "_compat": 0, "provenance": 0, "distributed": 0, "config": 1, "kernels": 1,
        "dataset": 2, "augment": 2, "loader": 3, "models": 4, "evaluation": 5, "engine": 5,
        "export": 6, "mine": 6, "demo": 7, "cli": 8, "__main__": 9, "__init__": 9}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """fastdisco modules imported at module level (not inside functions: those are deliberate, lazy)."""
    tree = ast.parse(path.read_text())
    found = set()
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph():
    mods = _modules()
    return {n: _top_level_imports(p, n, set(mods)) for n, p in mods.items()}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for m in graph[n]:
            if m.startswith(n + "."):  # a package importing its own submodules (its public face)
                continue
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if state.get(m) is None:
                visit(m, stack + [m])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_imports_point_down():
    bad = []
    for n, deps in _graph().items():
        room = n.split(".")[1] if "." in n else "__init__"
        for m in deps:
            other = m.split(".")[1] if "." in m else "__init__"
            if RANK[other] > RANK[room]:
                bad.append(f"{n} imports {m}")
    assert not bad, bad

"""The package's layout promises: no import cycle (at module level or inside functions), a thin cli.py, and
every engine reached through the one interface."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "resnet_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, anywhere in its body (lazy imports count: a cycle through a
    function-level import is still a cycle)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    root = ".".join(base + ([node.module] if node.module else []))
                else:
                    root = node.module or ""
                targets = [root] + [f"{root}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    # A package's __init__ importing its own submodules (commands/ registering them) is how packages work,
    # not a cycle between concerns; everything else counts.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and name != "resnet_cli")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_cli_only_declares_the_command_line():
    """cli.py imports no engine, job or model code: it registers commands/, maps errors to exit codes and
    escapes what it prints (console.printable)."""
    imported = import_graph()["resnet_cli.cli"]
    assert imported <= {"resnet_cli", "resnet_cli.commands", "resnet_cli.errors", "resnet_cli.console"}, imported


def test_engines_share_one_entry_point_and_import_no_command():
    graph = import_graph()
    for engine in ("resnet_cli.engines.local", "resnet_cli.engines.ray"):
        tree = ast.parse((PACKAGE / "engines" / f"{engine.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8"))
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert [a.arg for a in functions["records"].args.args] == ["job", "stop"], engine
        assert not any(t.startswith("resnet_cli.commands") for t in graph[engine]), engine

"""The package's layout promises: layers as folders with no import from a lower layer to a higher one, no import
cycle (at module level or inside functions), a thin command line, and every engine reached through the one
interface."""

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
    allowed = {"resnet_cli", "resnet_cli.cli.commands", "resnet_cli.core.errors", "resnet_cli.core.console"}
    assert imported <= allowed, imported


def test_engines_share_one_entry_point_and_import_no_command():
    graph = import_graph()
    for engine in ("resnet_cli.run.engines.local", "resnet_cli.run.engines.ray"):
        tree = ast.parse((PACKAGE / "run" / "engines" / f"{engine.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8"))
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert [a.arg for a in functions["records"].args.args] == ["job", "stop"], engine
        assert not any(t.startswith("resnet_cli.cli.commands") for t in graph[engine]), engine


# The layers, lowest first: a module may import its own layer and the ones below it, never one above
# (docs/development.md draws them). The package's face (resnet_cli/__init__.py, api.py, __main__.py) sits
# between the library and the command line.
LAYERS = ["core", "inputs", "models", "run", "outputs", "analysis", "serve", "api", "cli"]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "api", "__main__"):
        return "api" if parts[-1] != "__main__" else "cli"
    return parts[1]


def test_every_module_sits_in_a_layer_folder():
    stray = [m for m in import_graph() if layer_of(m) not in LAYERS]
    assert not stray, f"modules outside the layer folders {LAYERS}: {stray}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [(m, t) for m, targets in import_graph().items() for t in targets
              if LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m))]
    assert not upward, "imports that run back up: " + ", ".join(f"{m} -> {t}" for m, t in upward)


def test_the_layer_check_finds_an_upward_import():
    assert LAYERS.index(layer_of("resnet_cli.cli.commands.classify")) > LAYERS.index(layer_of("resnet_cli.core.errors"))
    assert layer_of("resnet_cli.run.engines.ray") == "run" and layer_of("resnet_cli") == "api"

"""The package's shape: no import cycles (module-level or inside functions), and the deployment package
``tpp.serve`` is imported only by itself, the CLI and the Python API (``tpp.api.deploy``, the CLI's counterpart in
a notebook; ``tpp/__init__`` reaches it lazily): training never depends on serving."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"tpp": REPO / "tpp", "tpp.adapters": REPO / "adapters", "tpp.recipes": REPO / "recipes"}


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for file in root.rglob("*.py"):
            parts = [p for p in file.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = file
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the tpp modules it imports anywhere in its code (a package's own __init__ excluded)."""
    mods = modules()

    def owner(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, file in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tpp"):
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else owner(node.module)
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {owner(a.name) for a in node.names if a.name.startswith("tpp")}
        graph[name] = {d for d in deps if d and d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tpp_has_no_import_cycles():
    assert cycles(import_graph()) == []


def test_only_the_cli_and_the_api_import_the_deployment_package():
    users = {m for m, deps in import_graph().items() if any(d.startswith("tpp.serve") for d in deps)}
    assert {u for u in users if not u.startswith("tpp.serve")} == {"tpp.cli", "tpp.api.deploy"}


def private_imports() -> set[tuple[str, str]]:
    """(module, the private name it imports from another tpp module: ``module._name``), anywhere in its code."""
    found = set()
    for name, file in modules().items():
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tpp"):
                found |= {(name, f"{node.module}.{a.name}") for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__") and node.module != name}
    return found


def test_no_module_imports_another_modules_private_name():
    """A name another module imports is public: named without the underscore (``run_folder.some_entries``,
    ``config.parse.section_mapping``, ``data.folders.image_folder`` ...), so a change to it is seen as one."""
    assert not private_imports(), sorted(private_imports())

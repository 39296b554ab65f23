"""The layers of janustls, checked from the source (ast): no import cycle, no upward import,
and no import inside a function unless it is listed below with its reason.

The rule (README, "Layout"): each layer imports only itself and the layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "janustls"

#: Lowest first.  A module's layer is the first prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("bottom", ("janustls.errors", "janustls._reactor")),
    ("core", ("janustls.core",)),
    ("events", ("janustls.events",)),  # names the refusal reasons of the core
    ("tls", ("janustls.tls",)),
    ("ports", ("janustls.ports",)),
    ("ops", ("janustls.ops",)),
    ("top", ("janustls.cli", "janustls.plugin", "janustls.pki", "janustls.explain", "janustls")),
]

#: (importing module, imported module) -> why the import is inside a function.
FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    (
        "janustls._reactor",
        "twisted.internet",
    ): "importing the global reactor installs it; twistd or a test may install another first",
    (
        "janustls.ops.service",
        "janustls.ops.status",
    ): "prometheus-client fixes its value class at import; --workers sets PROMETHEUS_MULTIPROC_DIR first",
    (
        "janustls.ops.workers",
        "janustls.ops.status",
    ): "prometheus-client fixes its value class at import; set PROMETHEUS_MULTIPROC_DIR first",
    (
        "janustls.ops.workers",
        "janustls.ops.metrics",
    ): "prometheus-client fixes its value class at import; set PROMETHEUS_MULTIPROC_DIR first",
    (
        "janustls.ops.workers",
        "prometheus_client",
    ): "prometheus-client fixes its value class at import; set PROMETHEUS_MULTIPROC_DIR first",
    (
        "janustls.ports.web.actions",
        "twisted.web.proxy",
    ): "twisted.web.proxy imports the global reactor, which installs it; asgi rules need the asyncio reactor installed first",
    (
        "janustls.cli",
        "janustls.ops.status",
    ): "status pulls in prometheus-client, which fixes its value class at import: only `janustls status` needs it",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The janustls modules an import statement names (a package's submodule when it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    names = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        names.append(sub if sub in MODULES else base)
    return names


def imports() -> list[tuple[str, str, int, bool]]:
    """(importer, imported, line, inside a function) for every import statement in janustls."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))

        def visit(node: ast.AST, in_function: bool, module: str = module) -> None:
            for child in ast.iter_child_nodes(node):
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for name in _resolve(module, child):
                        found.append((module, name, child.lineno, in_function))
                visit(child, inner, module)

        visit(tree, False)
    return found


def internal(name: str) -> bool:
    return name == "janustls" or name.startswith("janustls.")


def test_no_upward_import():
    upward = []
    for importer, imported, line, _ in imports():
        if internal(imported) and layer_of(imported) > layer_of(importer):
            upward.append(f"{MODULES[importer].relative_to(ROOT)}:{line} {importer} ({LAYERS[layer_of(importer)][0]}) "
                          f"imports {imported} ({LAYERS[layer_of(imported)][0]})")  # fmt: skip
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for importer, imported, _, _ in imports():
        if internal(imported) and imported != importer and imported != "janustls":
            graph[importer].add(imported)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_are_listed_with_a_reason():
    unlisted = []
    used = set()
    for importer, imported, line, in_function in imports():
        if not in_function:
            continue
        key = next(
            (k for k in FUNCTION_IMPORTS if k[0] == importer and (imported == k[1] or imported.startswith(k[1] + "."))),
            None,
        )
        if key is None:
            unlisted.append(f"{MODULES[importer].relative_to(ROOT)}:{line} imports {imported} inside a function")
        else:
            used.add(key)
    assert not unlisted, (
        "imports inside functions (hoist them, or list them in FUNCTION_IMPORTS with a reason):\n" + "\n".join(unlisted)
    )
    assert used == set(FUNCTION_IMPORTS), f"listed but no longer there: {set(FUNCTION_IMPORTS) - used}"


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)

"""The package's layout rules (docs/architecture.md), checked on the source with ``ast``.

- no import cycle between modules (every ``import``, lazy ones inside functions included);
- packages are layered: a package imports only packages below it (LAYERS);
- no private name (``_x``, or a name from a ``_module``) is imported from another package;
- the maths (ops, controllers) and the light layers import no Lightning / transformers / vLLM / TRL;
- no function is longer than MAX_FUNCTION_LINES, except the ones listed (each may only shrink).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "entropyctl"

#: Bottom to top. A package may import its own modules and packages of a lower layer, never higher ones.
#: ``entropyctl`` is the package root (the public API re-exported); only the adapters use it.
LAYERS: list[set[str]] = [
    {"validation", "cache"},
    {"ops"},
    {"controllers"},
    {"rewards"},
    {"data"},
    {"rollout"},
    {"models"},
    {"config"},
    {"trainer"},
    {"experiments"},
    {"entropyctl"},
    {"integrations"},
    {"cli"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}

HEAVY = {"lightning", "transformers", "vllm", "trl"}
#: Third-party frameworks each package must not import (the maths stays framework-free).
FORBIDDEN = {
    "validation": HEAVY,
    "cache": HEAVY,
    "ops": HEAVY,
    "controllers": HEAVY,
    "rewards": HEAVY,
    "data": HEAVY,
    "config": HEAVY,
    "rollout": {"lightning", "trl"},
    "models": {"lightning", "trl"},
}

MAX_FUNCTION_LINES = 80
#: Functions still over MAX_FUNCTION_LINES: "module:qualified name" -> its length today. A function may
#: only get shorter; a new long function fails the test (split it instead of adding it here).
LONG_FUNCTIONS: dict[str, int] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _package(module: str) -> str:
    """The top-level package of a module (``entropyctl.trainer.run`` -> ``trainer``); ``entropyctl``
    for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "entropyctl"


def _resolve(name: str) -> str:
    """The module a dotted import path lands in (``entropyctl.config.RunConfig`` -> ``entropyctl.config``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(tree: ast.Module) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every entropyctl import, lazy ones included."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "entropyctl" or node.module.startswith("entropyctl."):
                for alias in node.names:
                    found.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "entropyctl" or alias.name.startswith("entropyctl."):
                    found.append((alias.name, "", node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, tree in TREES.items():
        for module, imported, _ in _imports(tree):
            target = f"{module}.{imported}" if f"{module}.{imported}" in MODULES else _resolve(module)
            if target and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in MODULES:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
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
                    work.append((child, iter(sorted(edges.get(child, ())))))
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


def test_the_walk_sees_the_package() -> None:
    # A walk that finds nothing would pass every rule below.
    assert {"entropyctl.trainer.module", "entropyctl.controllers.registry", "entropyctl.cli"} <= set(MODULES)
    assert "entropyctl.controllers.base" in _edges()["entropyctl.trainer.module"]
    assert {_package(m) for m in MODULES} <= set(LAYER), "a new package: give it a layer in LAYERS"


def test_cycle_finder_finds_a_planted_cycle() -> None:
    edges = {m: set(targets) for m, targets in _edges().items()}
    edges["entropyctl.ops.entropy"] = edges.get("entropyctl.ops.entropy", set()) | {"entropyctl.ops.losses"}
    assert ["entropyctl.ops.entropy", "entropyctl.ops.losses"] in _cycles(edges)


def test_no_import_cycles() -> None:
    assert _cycles(_edges()) == []


def test_packages_import_only_lower_layers() -> None:
    upward = []
    for name, tree in TREES.items():
        source = _package(name)
        for module, _, line in _imports(tree):
            target = _package(_resolve(module))
            if target != source and LAYER[target] >= LAYER[source]:
                upward.append(f"{MODULES[name].relative_to(SRC.parent)}:{line}: {source} imports {target}")
    assert upward == []


def test_no_private_name_crosses_a_package() -> None:
    crossing = []
    for name, tree in TREES.items():
        for module, imported, line in _imports(tree):
            if _package(_resolve(module)) == _package(name):
                continue
            private = [
                p for p in [*module.split("."), imported] if p.startswith("_") and not p.startswith("__")
            ]
            if private:
                crossing.append(f"{MODULES[name].relative_to(SRC.parent)}:{line}: {module} {imported}")
    assert crossing == []


def test_layers_import_no_forbidden_framework() -> None:
    bad = []
    for name, tree in TREES.items():
        forbidden = FORBIDDEN.get(_package(name), set())
        for node in ast.walk(tree):
            roots = []
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            bad += [f"{name}:{node.lineno}: {root}" for root in roots if root in forbidden]
    assert bad == []


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for name, tree in TREES.items():

        def visit(node: ast.AST, prefix: str, module: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert child.end_lineno is not None
                    lengths[f"{module}:{prefix}{child.name}"] = child.end_lineno - child.lineno + 1
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

        visit(tree, "")
    return lengths


def test_no_new_long_function() -> None:
    lengths = _function_lengths()
    too_long = {
        key: n for key, n in lengths.items() if n > MAX_FUNCTION_LINES and n > LONG_FUNCTIONS.get(key, 0)
    }
    assert too_long == {}, f"over {MAX_FUNCTION_LINES} lines (or longer than its allow-list entry)"


def test_allow_list_entries_are_still_needed() -> None:
    # A function split below the limit (or removed) leaves the list: it cannot be re-lengthened silently.
    lengths = _function_lengths()
    stale = [key for key in LONG_FUNCTIONS if lengths.get(key, 0) <= MAX_FUNCTION_LINES]
    assert stale == [], f"drop from LONG_FUNCTIONS: {stale}"

"""Print the figures that keep the package readable: longest functions, largest modules, import cycles.

    python scripts/code_stats.py [--top 5]

Every ``import`` in a module counts, including those inside functions (a function-level import still
ties the two modules together; the hidden cli ⇄ pipeline cycle of issue 10 was one). The same
functions back ``tests/test_architecture.py``.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spectrafm_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the package."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve_relative(current: str, is_package: bool, level: int, target: str | None) -> str:
    base = current.split(".")
    base = base if is_package else base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules imported anywhere in ``path`` (``from x import y`` counts ``x.y`` if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else _resolve_relative(name, is_package, node.level, node.module)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            # the deepest package module that the target names
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def _is_package_init_reexport(name: str, target: str) -> bool:
    """A package's ``__init__`` importing its own submodules is not a cycle of concern."""
    return target.startswith(name + ".")


def function_lengths() -> list[tuple[int, str]]:
    """(lines, 'module:qualified name') for every function and method, longest first."""
    result = []

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                result.append((child.end_lineno - child.lineno + 1, f"{prefix}{child.name}"))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    for name, path in package_modules().items():
        walk(ast.parse(path.read_text(encoding="utf-8")), f"{name}:")
    return sorted(result, reverse=True)


def module_lengths() -> list[tuple[int, str]]:
    return sorted(((len(p.read_text(encoding="utf-8").splitlines()), n) for n, p in package_modules().items()),
                  reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    print("longest functions (lines):")
    for lines, name in function_lengths()[: args.top]:
        print(f"  {lines:5d}  {name}")
    print("largest modules (lines):")
    for lines, name in module_lengths()[: args.top]:
        print(f"  {lines:5d}  {name}")
    cycles = import_cycles(import_graph())
    print(f"import cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " ⇄ ".join(cycle))


if __name__ == "__main__":
    main()

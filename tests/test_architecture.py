"""The package keeps its shape: no import cycles, no reads outside the package, short functions.

The layer contract itself (imports only point down) is checked by ``lint-imports`` (``.importlinter``),
which CI runs beside these tests; here are the properties import-linter does not express.
"""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spectrafm_hf"


def _code_stats():
    spec = importlib.util.spec_from_file_location("code_stats", REPO / "scripts" / "code_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_even_through_function_level_imports():
    stats = _code_stats()
    graph = stats.import_graph()
    assert "spectrafm_hf.pipeline" in graph and graph["spectrafm_hf.cli"], "the graph must see the package"
    assert stats.import_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    stats = _code_stats()
    assert stats.import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_the_cli():
    graph = _code_stats().import_graph()
    importers = [name for name, targets in graph.items() if "spectrafm_hf.cli" in targets]
    assert importers == []


def test_no_path_outside_the_package_is_named():
    """A pip-installed package has no ``../shared`` beside it: no code or docstring may point there."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for needle in ("../shared", "/shared/", "parents[2]", "docs/simulator.md"):
            if needle in text:
                offenders.append(f"{path.relative_to(REPO)}: {needle}")
    assert offenders == []


def test_functions_stay_readable_in_one_screen():
    """No function or method of the package is longer than 80 lines (docstring included)."""
    too_long = [(lines, name) for lines, name in _code_stats().function_lengths() if lines > 80]
    assert too_long == []

"""The house rules of the package layout (README, "Layout"), read from the source with `ast`.

Imports flow one way through the groups; no private name crosses a module; no import cycle; the report
knows no experiment; modules stay small. A new top-level module must be placed in a group here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "interp"
GROUPS = {  # in import order: a module may import from its own group and the groups before it
    "model": ("models", "chat", "hooked", "runner", "activations", "activation_shards", "directions", "vectors", "steering",
              "nnsight_adapter"),
    "data": ("datasets", "corpus"),
    "methods": ("ab_prompts", "aggregators", "caa", "refusal", "hf_weights", "weight_edit", "weight_diff", "melbo", "dictionaries",
                "sparse", "splice", "sae_training", "features", "probes", "optimise", "export"),
    "evaluation": ("evaluators", "capability", "classify", "sweeps", "selfexplain", "browser", "recipes"),
    "results": ("headlines", "report", "experiments", "cli", "__main__"),
}
LEAVES = ("metrics", "plots", "_io", "_checks", "_timing", "display", "provenance")  # importable from anywhere; they import only leaves
MAX_LINES = 550  # "about 500"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> list[ast.ImportFrom]:
    """`from interp... import` statements, function-level ones included, `if TYPE_CHECKING:` blocks excluded."""
    found: list[ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "interp":
                found.append(child)
            visit(child)

    visit(tree)
    return found


SOURCES = {_module_name(path): ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_top_level_module_has_a_group():
    placed = {name for names in GROUPS.values() for name in names} | set(LEAVES) | {""}
    missing = sorted({_top(module) for module in SOURCES} - placed)
    assert not missing, f"place these modules in a group of tests/test_architecture.py and the README layout: {missing}"


def test_imports_flow_down_the_groups():
    order = {name: index for index, names in enumerate(GROUPS.values()) for name in names}
    wrong = []
    for module, tree in SOURCES.items():
        here = _top(module)
        for node in _runtime_imports(tree):
            there = _top(node.module)
            if here in order and there in order and order[there] > order[here]:
                wrong.append(f"{module} -> {node.module}")
            elif here in LEAVES and there in order:
                wrong.append(f"{module} -> {node.module} (a leaf imports a group)")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_private_name_crosses_a_module():
    crossing = [
        f"{module}: from {node.module} import {alias.name}"
        for module, tree in SOURCES.items()
        for node in _runtime_imports(tree)
        for alias in node.names
        if alias.name.startswith("_") and node.module != module
    ]
    assert not crossing, "\n".join(crossing)


def test_no_library_module_imports_an_experiment():
    offenders = [
        f"{module} -> {node.module}"
        for module, tree in SOURCES.items()
        if not module.startswith("interp.experiments") and module != "interp.cli"
        for node in _runtime_imports(tree)
        if node.module.startswith("interp.experiments.")
    ]
    assert not offenders, "\n".join(offenders)


def test_there_is_no_import_cycle():
    graph = {
        module: {node.module for node in _runtime_imports(tree) if node.module in SOURCES and node.module != module}
        for module, tree in SOURCES.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                return path[path.index(dependency):] + [dependency]
            if dependency not in state:
                found = cycle_from(dependency, path + [dependency])
                if found:
                    return found
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = cycle_from(module, [module])
            assert found is None, "import cycle: " + " -> ".join(found)


def test_the_report_names_no_experiment():
    text = (PACKAGE / "report.py").read_text()
    names = [path.stem for path in (PACKAGE / "experiments").glob("*.py") if path.stem not in ("__init__", "common")]
    named = [name for name in names if name in text]
    assert not named, f"report.py should render whatever experiments register, but names {named}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines; split it by job (about 500 at most)"

"""Every public function and class of interp has a docstring, and the cheap examples in docstrings run.

The public API, read from the source (nothing imported, so optional dependencies need not be installed): every
module whose dotted path has no part starting with `_`; in each, the names in its `__all__` (followed to the module
that defines them, private ones included: `interp._timing.progress_bar` exported by a public module is public), or,
without `__all__`, every function and class defined at its top level whose name does not start with `_`. Module
constants are not checked (a docstring cannot be attached to one).

The doctests: the modules in DOCTEST_MODULES run their examples (`>>>`) with the standard library's doctest.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "interp"
# The modules whose examples run here: cheap ones (no model, no file outside a temporary folder).
DOCTEST_MODULES = ("interp.metrics", "interp.directions", "interp.headlines", "interp.splice", "interp.sparse.inputs",
                   "interp.experiments")


def module_path(name: str) -> Path | None:
    """The source file of dotted module `name` under interp/, or None."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_public_module(name: str) -> bool:
    return not any(part.startswith("_") for part in name.split("."))


class Module:
    """One parsed module: its top-level definitions, its imports by local name, and its `__all__`."""

    def __init__(self, name: str):
        self.name, self.path = name, module_path(name)
        tree = ast.parse(self.path.read_text(), str(self.path))
        self.definitions = {node.name: node for node in tree.body
                            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.imports: dict[str, tuple[str, str]] = {}  # local name -> (module, name there)
        self.exports: list[str] | None = None
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("interp"):
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                package = self.name.split(".") if self.path.name == "__init__.py" else self.name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = (base, alias.name)
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                try:
                    self.exports = [str(name) for name in ast.literal_eval(node.value)]
                except ValueError:  # built, not literal (e.g. `[*_LAZY]`): read what literal strings it lists
                    self.exports = [n.value for n in ast.walk(node.value) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


_modules: dict[str, Module] = {}


def parsed(name: str) -> Module | None:
    if name not in _modules and module_path(name) is not None:
        _modules[name] = Module(name)
    return _modules.get(name)


def resolve(module: Module, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
    """Where `name` (as `module` sees it) is defined as a function or class: (module, node), or None."""
    if name in module.definitions:
        return module.name, module.definitions[name]
    if name in module.imports and depth < 10:
        source, original = module.imports[name]
        target = parsed(source)
        if target is not None:
            return resolve(target, original, depth + 1)
    return None  # a constant, a module (`from interp import recipes`) or a name from outside interp


def public_api() -> dict[str, ast.AST]:
    """`module.name` -> the function or class node, for every public function and class (by definition site)."""
    api: dict[str, ast.AST] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if not is_public_module(name):
            continue
        module = parsed(name)
        if module.exports is not None:
            names = module.exports
        else:
            names = [n for n in module.definitions if not n.startswith("_")]
        for exported in names:
            found = resolve(module, exported)
            if found is None and exported in LAZY_EXPORTS.get(name, {}):  # a module-level __getattr__ re-export
                found = resolve(parsed(LAZY_EXPORTS[name][exported]), exported)
            if found is not None:
                where, node = found
                api[f"{where}.{node.name}"] = node
    return api


# `interp/__init__.py` exports the recipes lazily (a module `__getattr__`), so no import statement names them.
LAZY_EXPORTS = {"interp": {"steering_vector": "interp.recipes", "compare": "interp.recipes", "Comparison": "interp.recipes"}}


def undocumented(api: dict[str, ast.AST]) -> list[str]:
    missing = []
    for qualified, node in sorted(api.items()):
        docstring = ast.get_docstring(node)
        if not docstring or not docstring.strip():
            module = qualified.rsplit(".", 1)[0]
            missing.append(f"{qualified} ({module_path(module).relative_to(ROOT)}:{node.lineno})")
    return missing


def test_the_public_api_is_found():
    api = public_api()
    # Known names from each kind of listing: __all__ of a package (followed into its modules), a module without
    # __all__, the lazy re-exports of interp itself, a private module's name exported by a public one.
    for name in ("interp.directions.Direction", "interp.steering.Steer", "interp.runner.generation.generate",
                 "interp.dictionaries.readers.load_dictionary", "interp.recipes.steering_vector",
                 "interp.sparse.reconstruct.code_direction", "interp.models.load_model"):
        assert name in api, name
    assert len(api) > 500
    assert not any(qualified.rsplit(".", 1)[1].startswith("_") for qualified in api
                   if is_public_module(qualified.rsplit(".", 1)[0]) and parsed(qualified.rsplit(".", 1)[0]).exports is None)


def test_every_public_function_and_class_has_a_docstring():
    missing = undocumented(public_api())
    assert not missing, f"{len(missing)} public functions and classes without a docstring:\n" + "\n".join(missing)


def test_the_check_fails_on_a_public_function_without_a_docstring(tmp_path, monkeypatch):
    package = tmp_path / "interp"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "tool.py").write_text('"""A module."""\n\ndef documented():\n    """Does it."""\n\n'
                                     'def bare(x):\n    return x\n\ndef _private():\n    pass\n\n'
                                     'class Thing:\n    pass\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    monkeypatch.setattr(sys.modules[__name__], "_modules", {})
    assert undocumented(public_api()) == ["interp.tool.Thing (interp/tool.py:12)", "interp.tool.bare (interp/tool.py:6)"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples: take it out of DOCTEST_MODULES or add one"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m doctest -v)"

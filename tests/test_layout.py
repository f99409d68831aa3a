"""The package's shape: one exception tree, in errors.py, which imports nothing of it; no
module over 400 lines."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import batchrun

#: Past this a module does more than one stage: split it along its seams.
MAX_LINES = 400


def _modules() -> list[ModuleType]:
    names = [
        info.name
        for info in pkgutil.walk_packages(batchrun.__path__, "batchrun.")
        # A __main__ runs its command when imported.
        if not info.name.endswith(".__main__")
    ]
    return [importlib.import_module(name) for name in names]


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_exception_of_the_package_is_defined_in_errors() -> None:
    modules = _modules()
    assert len(modules) > 50  # the walk did import the package
    # Every subclass alive once all modules are imported: also finds classes defined inside
    # a function or a class body that ran at import, which a look at module globals misses.
    elsewhere = sorted(
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _subclasses(BaseException)
        if cls.__module__.startswith("batchrun.") and cls.__module__ != "batchrun.errors"
    )
    assert elsewhere == []


def test_errors_imports_nothing_of_the_package() -> None:
    # fastjson, images and the send path import their exceptions from it: any import of the
    # package here would be a cycle, or load a stage for every module that raises.
    path = Path(batchrun.__file__).parent / "errors.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["batchrun"]
        else:
            continue
        assert not [n for n in names if n.split(".")[0] == "batchrun"], names


def test_no_module_is_over_400_lines() -> None:
    root = Path(batchrun.__file__).parent
    sizes = {
        str(path.relative_to(root.parent)): len(path.read_text(encoding="utf-8").splitlines())
        for path in root.rglob("*.py")
    }
    assert len(sizes) > 50  # the walk did find the package
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}

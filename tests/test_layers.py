"""Layers one way: no module imports from a layer above its own (at module level or inside a
function). viz draws what evaluate computes, and evaluate never imports viz."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "drasclr_toolkit"

#: lowest first; a module may import from its own layer and the ones before it
LAYERS = [
    {"errors", "constants", "io_utils", "locks"},
    {"config", "landmarks", "patch_source", "runtime"},
    {"data"},
    {"preprocess"},
    {"ssl", "models"},
    {"train"},
    {"embed"},
    {"evaluate"},
    {"viz"},
    {"datasets"},
    {"probe", "workspace", "lab", "notebooks"},
    {"cli"},
    {"__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

#: the library core: the stages up to viz. What is not core (the synthetic cohort and sample
#: scans in datasets/, the notebook set-up and runner in notebooks/) sits above it.
CORE = set().union(*LAYERS[:LAYERS.index({"viz"}) + 1])
NOT_CORE = {"datasets", "notebooks"}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, 'drasclr_toolkit.<top>...') of every absolute import of the package in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.startswith("drasclr_toolkit.")]
    return found


def test_every_top_level_module_has_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    tops -= {"configs"}
    assert tops <= set(RANK), f"give these a layer in tests/test_layers.py: {tops - set(RANK)}"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for line, name in imports_of(path):
            target = name.split(".")[1]
            if RANK.get(target, -1) > RANK[top]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_core_imports_neither_datasets_nor_notebook_tooling():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0].removesuffix(".py") not in CORE:
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
                  for line, name in imports_of(path) if name.split(".")[1] in NOT_CORE]
        # relative imports too (``from ..datasets import ...``)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                if node.module.split(".")[0] in NOT_CORE:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports "
                                 f"{'.' * node.level}{node.module}")
    assert CORE >= {"data", "preprocess", "evaluate", "viz"} and not CORE & NOT_CORE
    assert not found, "the core imports what is not core:\n" + "\n".join(found)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from drasclr_toolkit.viz.evaluation import km_figure\n")
    assert imports_of(bad) == [(2, "drasclr_toolkit.viz.evaluation")]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_imports_inside_the_package_are_absolute():
    relative = [f"{p.relative_to(PACKAGE.parent)}:{node.lineno}"
                for p in sorted(PACKAGE.rglob("*.py"))
                for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                if isinstance(node, ast.ImportFrom) and node.level > 0]
    assert not relative, f"relative imports (write drasclr_toolkit.…): {relative}"


def test_no_private_name_is_imported_from_another_module():
    """A leading underscore means "this module only": a private module may be used inside its
    own package (datasets/_phantom.py by datasets/synthetic.py), a private name nowhere else."""
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(p)
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("drasclr_toolkit")):
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if not private or node.module == here:
                    continue
                submodule = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / (submodule.replace(".", "/") + ".py")).is_file() and \
                        here.rsplit(".", 1)[0] == node.module:
                    continue          # a private module of the importer's own package
                found.append(f"{here}:{node.lineno} imports {node.module}.{alias.name}")
    assert not found, found

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
    {"probe", "workspace", "lab", "notebook", "notebook_runner"},
    {"cli"},
    {"__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


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


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from drasclr_toolkit.viz.evaluation import km_figure\n")
    assert imports_of(bad) == [(2, "drasclr_toolkit.viz.evaluation")]

"""The set-up files agree with each other: pyproject, environment.yml, README, CI."""

from __future__ import annotations

import re
import tomllib

import yaml


def _requirements(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["dependencies"] + project["optional-dependencies"]["dev"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject(repo_root):
    env = yaml.safe_load((repo_root / "environment.yml").read_text(encoding="utf-8"))
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    from_env = {_name(r): r for r in pip_section if not r.startswith("-e")}
    from_pyproject = {_name(r): r for r in _requirements(repo_root)}
    assert from_env == from_pyproject


def test_torch_is_pinned_exactly(repo_root):
    torch_reqs = [r for r in _requirements(repo_root) if _name(r) == "torch"]
    assert torch_reqs and re.fullmatch(r"torch==\d+\.\d+\.\d+", torch_reqs[0])


def test_ci_runs_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    assert commands, "README has no shell block with the set-up commands"
    first_block = [line for line in commands[0].splitlines() if line and not line.startswith("#")]
    assert first_block == ["make demo", "make test"]
    ci = (repo_root / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, flags=re.M)


def test_console_script_is_declared(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["scripts"]["drasclr"] == "drasclr_toolkit.cli.main:main"


# Declared but never imported by name, on purpose: the notebook stack and what plotly's
# FigureWidget needs at run time.
NOT_IMPORTED_ON_PURPOSE = {"jupyterlab", "ipykernel", "nbclient", "anywidget", "pytest-timeout"}
UNINSTALLED_MODULE_TO_DISTRIBUTION = {"ants": "antspyx"}


def _imported_distributions(repo_root) -> set[str]:
    import ast
    import importlib.metadata
    import json
    import sys

    sources = [p.read_text(encoding="utf-8") for p in (repo_root / "drasclr_toolkit").rglob("*.py")]
    sources += [p.read_text(encoding="utf-8") for p in (repo_root / "tests").glob("*.py")]
    for notebook in (repo_root / "notebooks").glob("*.ipynb"):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        sources += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    modules = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
        # optional back-ends probed with find_spec / importorskip
        modules |= set(re.findall(r"""(?:find_spec|importorskip)\(["'](\w+)["']\)""", source))
    modules -= set(sys.stdlib_module_names) | {"drasclr_toolkit", "conftest"}
    # the project's own helper scripts imported by tests (tests/browser.py, benchmarks/*.py)
    modules -= {p.stem for folder in ("tests", "benchmarks") for p in (repo_root / folder).glob("*.py")}
    by_module = importlib.metadata.packages_distributions()
    return {_name(by_module.get(m, [m])[0]) for m in modules}


def test_declared_dependencies_are_what_the_code_imports(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    # An optional back-end that is not installed here keeps its module name.
    imported = {UNINSTALLED_MODULE_TO_DISTRIBUTION.get(d, d)
                for d in _imported_distributions(repo_root)}
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    assert declared - imported - NOT_IMPORTED_ON_PURPOSE == set(), "declared but never imported"

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

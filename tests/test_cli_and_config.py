"""The command line and the named configurations."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drasclr_toolkit.cli.main import build_parser, main
from drasclr_toolkit.config import load_config


def test_packaged_configs_have_every_stage():
    for name in ("tiny", "gpu"):
        config = load_config(name)
        assert {"synthetic", "preprocess", "pretrain", "embed"} <= set(config)


def test_missing_config_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a packaged name"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain: [1, 2]\n")
    with pytest.raises(ValueError, match="section 'pretrain' must be a mapping"):
        load_config(bad)


def test_demo_is_a_subcommand():
    parser = build_parser()
    args = parser.parse_args(["demo", "--out", "x", "--only", "00"])
    assert args.out == "x" and args.only == ["00"] and callable(args.func)


def test_console_script_help_runs():
    result = subprocess.run([sys.executable, "-m", "drasclr_toolkit.cli.main", "--help"],
                            capture_output=True, text=True, check=True)
    assert "demo" in result.stdout


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out

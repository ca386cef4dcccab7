"""Run the reliability script (tests/reliability.py) as a user would and require every case
to come out as expected. The script prints the table that the README's reliability
section shows; on failure it is in the assertion message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_bad_input_and_fault_is_handled(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, str(REPO / "tests" / "reliability.py"),
                          "--workdir", str(tmp_path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    table = res.stdout
    assert "| input | expected outcome | outcome | result |" in table, res.stderr[-3000:]
    failed = [line for line in table.splitlines() if line.endswith("| FAIL |")]
    assert res.returncode == 0 and not failed, "\n".join(failed) + "\n" + res.stderr[-3000:]

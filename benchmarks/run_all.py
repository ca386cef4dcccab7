"""Run every benchmark script in this folder on this machine (``make bench``).

Each ``bench_*.py`` prints its table and writes JSON into ``benchmarks/results/`` with the
machine it ran on. Extra arguments are passed to every script (e.g. ``--device cuda``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    failures = 0
    for script in sorted(here.glob("bench_*.py")):
        print(f"\n=== {script.name} ===", flush=True)
        failures += subprocess.run([sys.executable, str(script), *argv]).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The prepared GPU benchmark runs end to end (a tiny CPU version), so a lent GPU's few
minutes are never lost to a script that rotted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_pipeline_benchmark_smoke_run(tmp_path):
    out = tmp_path / "result.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu_pipeline.py"),
                          "--device", "cpu", "--quick", "--workers", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["train"][0]["anchor_patches_per_s"] > 0
    assert len(result["profile_top10"]) == 10
    assert result["extract"][0]["subjects_per_s_at_581_landmarks"] > 0

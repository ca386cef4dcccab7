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


def test_calibration_benchmark_smoke_run_and_its_table(tmp_path):
    out = tmp_path / "cal.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_calibration.py"),
                          "--smoke", "--only", "continuous_null_n12", "paired_equal_n40",
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["scenario"] for r in result["rows"]] == ["continuous_null_n12", "paired_equal_n40"]
    assert all(r["failures"] == 0 and r["n_datasets"] == 3 for r in result["rows"])
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_calibration as bc
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    before = {"machine": {"commit": "old", "date": "d0"}, "rows": [
        {"scenario": "risk_groups_null_n60", "type1_p": 0.125, "n_datasets": 200,
         "test": "plain log-rank"}]}
    after = {"machine": {"commit": "new", "date": "d1"}, "rows": [
        {"scenario": "risk_groups_null_n60", "type1_p": 0.037, "n_datasets": 300},
        {"scenario": "survival_3events_n40", "failures": 0, "outside_range": 0.0,
         "coverage": 0.80, "n_datasets": 200}]}
    table = bc.render_table(before, after)
    assert "| 0.125 | 0.037 | ok | 200 / 300 |" in table
    assert "**under-covers**" in table and "plain log-rank" in table
    assert bc.judge("type1", 0.08, 500) == "**too many**"
    assert bc.judge("coverage", 0.99, 500) == "ok (conservative)"


def test_calibration_rows_of_two_runs_pool_by_completed_data_sets(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_calibration as bc
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    # 57 of 60 completed, 2 rejections; then 50 of 50, 3 rejections: 5 / 107 pooled.
    first = {"scenario": "binary_null_n12", "type1_p": 2 / 57, "type1_verdict": 0.0,
             "coverage": None, "failures": 3, "n_datasets": 60, "seconds": 10.0}
    second = {"scenario": "binary_null_n12", "type1_p": 3 / 50, "type1_verdict": 0.02,
              "coverage": None, "failures": 0, "n_datasets": 50, "seconds": 5.0, "offset": 60}
    target = tmp_path / "after.json"
    part = tmp_path / "part.json"
    target.write_text(json.dumps({"label": "after", "machine": {}, "rows": [first]}))
    part.write_text(json.dumps({"label": "after", "machine": {}, "rows": [second]}))
    pooled = bc.pool_files(target, [part])["rows"][0]
    assert pooled["type1_p"] == pytest.approx(5 / 107)
    assert pooled["type1_verdict"] == pytest.approx(1 / 107)
    assert (pooled["n_datasets"], pooled["failures"], pooled["seconds"]) == (110, 3, 15.0)
    assert pooled["coverage"] is None and "0-109" in pooled["pooled"]
    assert json.loads(target.read_text())["rows"][0]["n_datasets"] == 110
    # a part that does not start where the stored rows end is refused (no double counting)
    with pytest.raises(ValueError, match="--offset 110"):
        bc.pool_files(target, [part])

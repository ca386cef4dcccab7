"""The evaluation notebooks run unchanged on a manifest of real scans with partial labels.

The cohort: the two real chest CTs of the sample data (lung1, lung2; fetched once through
pip and cached, the test skips when the registry cannot be reached) plus eight synthetic
scans, with a label table as a clinic would have it: FEV1 % predicted and GOLD for all,
follow-up (time, event) for only some, no visual scores, no per-patch emphysema labels.
So notebook 04 probes what it can, 05 says survival is skipped (too few subjects with
follow-up) and 06 says the dense part is skipped (no per-patch truth), each in a printed
line, and none of them errors.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.notebooks.runner import repository_notebooks_dir, run_notebook

pytestmark = [pytest.mark.slow, pytest.mark.notebook]

NOTEBOOKS = repository_notebooks_dir()
# name -> a line each notebook must print on this cohort (the graceful skips)
EXPECTED_LINES = {
    "04_copd_phenotypes": "probed: ['fev1_pp', 'gold']",
    "05_survival": "skipped survival: only 5 subjects have time and event",
    "06_dense_emphysema_and_finetuning":
        "skipped dense emphysema and label efficiency: no per-patch truth",
}


@pytest.fixture(scope="module")
def real_workspace(tmp_path_factory):
    """A manifest of 2 real + 8 synthetic scans, and a tiny workspace with its products made."""
    from drasclr_toolkit.data import Manifest
    from drasclr_toolkit.datasets import make_synthetic_cohort
    from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct
    from drasclr_toolkit.workspace import Workspace

    try:
        real = {name: real_chest_ct(name) for name in ("lung1", "lung2")}
    except SampleDataUnavailable as exc:
        pytest.skip(f"real sample scans unavailable: {exc}")
    root = tmp_path_factory.mktemp("real_manifest")
    synthetic = make_synthetic_cohort(8, root / "synthetic", seed=3, spacing=2.0, size_scale=0.6)
    rows = [{"subject_id": name, "image": str(path)} for name, path in real.items()]
    rows += [{"subject_id": sid, "image": str(synthetic.image_path(sid))}
             for sid in synthetic.subject_ids]
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    table["fev1_pp"] = np.round(rng.uniform(35, 105, len(table)), 1)
    table["gold"] = [0, 2] * (len(table) // 2)  # two classes of five: probed
    follow_up = np.arange(len(table)) >= len(table) - 5  # follow-up for five subjects only
    table["time"] = np.where(follow_up, np.round(rng.uniform(1, 9, len(table)), 2), np.nan)
    table["event"] = np.where(follow_up, [1, 0] * (len(table) // 2), np.nan)
    manifest = Manifest.from_dataframe(table, base_dir=root)
    manifest_path = manifest.save(root / "manifest.csv")
    ws = Workspace(root / "work", "tiny", manifest=manifest_path)
    ws.embeddings("trained"), ws.embeddings("random-init")  # what notebooks 01-03 would make
    return ws, manifest_path


def _run(notebook_stem: str, ws, manifest_path, out_dir):
    path = NOTEBOOKS / f"{notebook_stem}.ipynb"
    run = run_notebook(path, out_dir, {"work_dir": str(ws.root), "config_name": "tiny",
                                       "manifest": str(manifest_path)}, html=False)
    executed = json.loads(run.executed.read_text(encoding="utf-8"))
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs if o.get("name") == "stdout")
    return run, errors, text


@pytest.mark.parametrize("notebook", sorted(EXPECTED_LINES))
def test_evaluation_notebook_runs_on_a_real_manifest(notebook, real_workspace, tmp_path):
    ws, manifest_path = real_workspace
    run, errors, text = _run(notebook, ws, manifest_path, tmp_path)
    assert run.ok and not errors, f"{notebook} failed on a real manifest: {run.error}"
    assert EXPECTED_LINES[notebook] in text, text[-2000:]


def test_embeddings_notebook_runs_on_a_real_manifest(real_workspace, tmp_path):
    ws, manifest_path = real_workspace
    run, errors, text = _run("03_embeddings_3d", ws, manifest_path, tmp_path)
    assert run.ok and not errors, run.error
    assert "nuisance: none (real cohort)" in text

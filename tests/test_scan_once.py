"""Each scan is read and segmented once per run: the atlas, the patches and the densitometry
of notebooks 04-05 all come from one load_ct and one segment_lungs per subject, and the
densitometry kept in the store equals the one measured from the scan. (The probe's count:
tests/test_probe.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from call_counts import CallCounter

# 3 mm phantoms onto a 2 mm grid: the scan's own resolution differs from preprocessing's.
CONFIG = {
    "synthetic": {"n_subjects": 3, "spacing": 3.0, "size_scale": 0.5, "seed": 3},
    "preprocess": {"spacing": 2.0, "step": 16, "interpolator": "linear",
                   "registration": {"reg_spacing": 6.0, "iterations": 20, "refine_spacing": 0},
                   "qc": {"lung_volume_ml": [50, 9000], "min_frac_lung_patches": 0.0}},
}


def test_workspace_reads_each_scan_once_and_densitometry_comes_from_the_store(
        tmp_path, monkeypatch, caplog):
    import drasclr_toolkit.workspace  # noqa: F401 - imported before the counters wrap
    from drasclr_toolkit.evaluate import cohort_densitometry
    from drasclr_toolkit.preprocess.scans import ScanCache
    from drasclr_toolkit.workspace import Workspace

    monkeypatch.setattr(Workspace, "jobs", property(lambda self: 1))  # counted in-process
    ws = Workspace(tmp_path / "work", CONFIG, verbose=False)
    cohort = ws.cohort()
    ids = list(cohort.subject_ids)
    calls = CallCounter(monkeypatch)

    store = ws.patch_store()          # atlas (median lung volume) + patches
    table = ws.densitometry()         # what notebooks 04-05 use
    assert list(store.subject_ids) == ids
    assert calls.loads == {sid: 1 for sid in ids}
    assert calls.segmentations == len(ids)
    # The images waited on disk only until the patches were written.
    assert not any(ScanCache(ws.preprocess_dir).has_images(sid) for sid in ids)

    # A second run into the same folder reads no scan and leaves every record as it was.
    records = {p: p.read_bytes() for p in (ws.preprocess_dir / "subjects").glob("*.json")}
    calls.reset()
    Workspace(tmp_path / "work", CONFIG, verbose=False).patch_store()
    assert calls.loads == {} and calls.segmentations == 0
    assert {p: p.read_bytes() for p in records} == records

    # The same numbers as measured from the scans (the path the store replaced) ...
    from_scans = cohort_densitometry(cohort, ids)
    assert list(table.columns) == list(from_scans.columns) and len(table.columns) > 40
    np.testing.assert_allclose(table.loc[ids].to_numpy(), from_scans.loc[ids].to_numpy(),
                               rtol=1e-12, atol=1e-9)
    # ... and a record without them (a store written by an older version) falls back.

    class OlderStore:
        subject_ids = ids

        def subject_record(self, sid):
            return {k: v for k, v in store.subject_record(sid).items() if k != "densitometry"}

    calls.reset()
    with caplog.at_level("INFO", logger="drasclr_toolkit.evaluate.densitometry"):
        older = cohort_densitometry(cohort, ids, store=OlderStore())
    assert calls.loads == {sid: 1 for sid in ids}
    assert "measured from their scans" in caplog.text
    np.testing.assert_allclose(older.to_numpy(), table.loc[ids].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="mask_source"):
        cohort_densitometry(cohort, store, mask_source="given")


def test_scan_products_are_ignored_once_the_scan_or_the_settings_change(tmp_path):
    import os

    import SimpleITK as sitk

    from drasclr_toolkit.preprocess import PreprocessConfig
    from drasclr_toolkit.preprocess.pipeline import scan_fingerprint
    from drasclr_toolkit.preprocess.scans import ScanCache, ScanProducts, scan_settings_digest

    scan = tmp_path / "a.nii.gz"
    scan.write_bytes(b"a scan")
    cfg = PreprocessConfig.from_dict({"spacing": 2.0})
    image = sitk.Image(4, 4, 4, sitk.sitkInt16)
    mask = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    made = ScanProducts("a", {"status": "ok"}, image=image, mask=mask,
                        source={**scan_fingerprint(scan, with_hash=False),
                                "settings": scan_settings_digest(cfg)},
                        densitometry={"laa950_pct": 1.5})
    cache = ScanCache(tmp_path / "out")
    cache.save(made)
    back = cache.load("a", scan, cfg)
    assert back.densitometry == {"laa950_pct": 1.5} and back.image.GetSize() == (4, 4, 4)
    assert cache.load("a", scan, PreprocessConfig.from_dict({"spacing": 1.0})) is None
    assert cache.load("a", scan, cfg, mask_path=tmp_path / "mask.nii.gz") is None
    cache.drop_images("a")
    assert cache.load("a", scan, cfg).image is None       # the record stays, the image went
    os.utime(scan, ns=(1, 1))                             # the scan file replaced
    assert cache.load("a", scan, cfg) is None

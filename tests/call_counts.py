"""Counting the scan reads of a run: wrappers around every ``load_ct`` and
``segment_lungs`` the toolkit's modules hold (imported by tests/test_probe.py and
tests/test_scan_once.py)."""

from __future__ import annotations

import sys
from collections import Counter

import drasclr_toolkit.data.ct as ct_module
import drasclr_toolkit.preprocess.lungmask as lungmask_module


class CallCounter:
    """Wraps every ``load_ct`` and ``segment_lungs`` the toolkit's modules hold, counting
    calls (``load_ct`` per subject id)."""

    def __init__(self, monkeypatch) -> None:
        self.loads: Counter = Counter()
        self.segmentations = 0
        load, segment = ct_module.load_ct, lungmask_module.segment_lungs

        def counting_load(path, subject_id=None, **kw):
            self.loads[subject_id] += 1
            return load(path, subject_id=subject_id, **kw)

        def counting_segment(*args, **kw):
            self.segmentations += 1
            return segment(*args, **kw)

        for name, module in list(sys.modules.items()):
            if not name.startswith("drasclr_toolkit") or module is None:
                continue
            if getattr(module, "load_ct", None) is load:
                monkeypatch.setattr(module, "load_ct", counting_load)
            if getattr(module, "segment_lungs", None) is segment:
                monkeypatch.setattr(module, "segment_lungs", counting_segment)

    def reset(self) -> None:
        self.loads.clear()
        self.segmentations = 0

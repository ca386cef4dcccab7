"""Numbers every stage must agree on, defined once.

The network's intensity window: HU clipped to ``[HU_MIN, HU_MAX]`` = [-1024, 240], then
mapped linearly to [-1, 1] (``(HU + 1024) / 632 - 1``), as the reference method does.
``HU_MIN`` is also air: the value read outside the scanned box.

This module imports nothing, so every subpackage can use it.

Example:
    >>> HU_WINDOW
    (-1024, 240)
"""

from __future__ import annotations

__all__ = ["HU_MAX", "HU_MIN", "HU_WINDOW", "POOLINGS"]

HU_MIN = -1024  # air; lower clip of the network window and padding outside the scan
HU_MAX = 240  # upper clip of the network window
HU_WINDOW: tuple[int, int] = (HU_MIN, HU_MAX)

#: patient poolings of patch embeddings (``drasclr_toolkit.evaluate.pool_embeddings``)
POOLINGS = ("mean", "max", "lung_weighted", "zones", "zones_lung_weighted")

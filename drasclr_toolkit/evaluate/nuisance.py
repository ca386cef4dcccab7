"""How strongly a measurement follows a nuisance (scanner noise, HU offset): Spearman ρ
with a subject-bootstrap 95 % CI.

A good disease measure does not move with the scanner. LAA-950 (the share of lung voxels
below -950 HU) is the classical example of one that does: image noise widens the HU
histogram, so more voxels fall below the threshold on a noisier scanner even when the lung
is the same. :func:`nuisance_sensitivity` measures that for every column of a table.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"s{i:02d}" for i in range(40)]
    >>> noise = pd.Series(rng.uniform(10, 60, 40), index=ids)
    >>> table = pd.DataFrame({"laa950_pct": 0.2 * noise + rng.normal(0, 1, 40),
    ...                       "unrelated": rng.normal(size=40)}, index=ids)
    >>> out = nuisance_sensitivity(table, noise, n_boot=200)
    >>> out.set_index("measure").loc["laa950_pct", "verdict"]
    'follows the nuisance (95 % CI excludes 0)'
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError

__all__ = ["nuisance_sensitivity", "spearman_ci"]


def spearman_ci(x, y, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Spearman ρ of paired values (NaN pairs dropped), its p-value from
    scipy and a percentile bootstrap 95 % CI over pairs.

    Example:
        >>> round(spearman_ci([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], n_boot=50)["rho"], 6)
        1.0
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
                "p": float("nan"), "n": n}
    rho, p = spearmanr(x, y)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(int(n_boot)):
        idx = rng.integers(0, n, n)
        if np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
            boot.append(spearmanr(x[idx], y[idx])[0])
    low, high = (np.percentile(boot, [2.5, 97.5]) if len(boot) >= 10 else (np.nan, np.nan))
    return {"rho": float(rho), "ci_low": float(low), "ci_high": float(high), "p": float(p),
            "n": n}


def nuisance_sensitivity(table: pd.DataFrame, nuisance: pd.Series, n_boot: int = 1000,
                         seed: int = 0) -> pd.DataFrame:
    """Spearman ρ (95 % bootstrap CI) of every column of ``table`` with ``nuisance``.

    Rows are matched by subject id, never by position: every subject of ``table`` must have
    a nuisance value (an id missing from ``nuisance`` raises an error naming it); nuisance
    entries for subjects not in ``table`` are ignored. A plain array (no ids) must have one
    value per row of ``table``, in its order. Returns ``measure, rho, ci_low, ci_high, p, n,
    verdict``.
    """
    if not isinstance(nuisance, pd.Series):
        values = np.asarray(nuisance, dtype=np.float64)
        if values.shape != (len(table),):
            raise InputError(f"nuisance has {values.size} values for {len(table)} subjects; "
                             "pass a Series indexed by subject id")
        nuisance = pd.Series(values, index=table.index)
    nuisance = nuisance.set_axis(nuisance.index.astype(str))
    index = table.index.astype(str)
    missing = index[~index.isin(nuisance.index)]
    if len(missing):
        raise InputError(f"nuisance: {len(missing)} subject id(s) of the table have no nuisance "
                         f"value (e.g. {missing[:5].tolist()}; nuisance ids look like "
                         f"{nuisance.index[:3].tolist()}); index both by the same subject ids")
    if nuisance.index.has_duplicates:
        dup = nuisance.index[nuisance.index.duplicated()].unique().tolist()[:5]
        raise InputError(f"nuisance has duplicate subject ids, e.g. {dup}")
    table = table.set_axis(index)
    nuisance = nuisance.reindex(index)
    rows = []
    for column in table.columns:
        stats = spearman_ci(table[column], nuisance, n_boot, seed)
        if not np.isfinite(stats["ci_low"]):
            verdict = "not enough data for an interval"
        elif stats["ci_low"] > 0 or stats["ci_high"] < 0:
            verdict = "follows the nuisance (95 % CI excludes 0)"
        else:
            verdict = "no evidence of dependence (95 % CI includes 0)"
        rows.append({"measure": column, **stats, "verdict": verdict})
    return pd.DataFrame(rows)

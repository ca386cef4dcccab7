"""The statistics every evaluation table shares: calibrated intervals, paired comparisons,
multiplicity, and verdicts that never outrun their numbers.

Each test and interval here has its type-I error or coverage measured by simulation in
``benchmarks/bench_calibration.py`` (results in ``benchmarks/README.md``).

* :func:`corrected_ci`: the Nadeau–Bengio corrected repeated-CV t interval of the mean of
  per-fold metric values, ``mean ± t · sqrt((1/J + n_test/n_train) · s²)`` over the ``J``
  folds, which allows for the overlap of training sets that makes the plain fold spread too
  narrow. A bounded metric (AUC, C-index, accuracy: ``bounds=(0, 1)``) is handled on the
  logit scale, so the interval never leaves its range.
* :func:`paired_difference`: the same corrected t-test on per-fold *differences* between two
  feature sets scored on the same subjects and folds: "A better than B" comes only from
  here, never from the overlap of two intervals.
* :func:`holm`: Holm's step-down adjustment of the p-values of one result table.
* :func:`predictive_verdict`: the words a result may carry. Predictive evidence needs the
  (Holm-adjusted) permutation p ≤ α **and** a 95 % interval above chance; a significant
  association whose value is at or below chance is "association, no predictive gain".
* :func:`stream`: an independent random generator per (seed, purpose, key…), so adding a
  feature set or a target never changes another's permutations.

Example:
    >>> import numpy as np
    >>> lo, hi = corrected_ci(np.array([0.70, 0.72, 0.68, 0.71, 0.69]), 80, 20)
    >>> round(lo, 3), round(hi, 3)
    (0.671, 0.729)
    >>> lo, hi = corrected_ci(np.array([1.0, 0.9, 1.0, 0.8, 1.0]), 24, 6, bounds=(0, 1))
    >>> 0 <= lo < hi <= 1
    True
    >>> holm([0.01, 0.04, 0.03]).round(2).tolist()
    [0.03, 0.06, 0.06]
    >>> predictive_verdict(0.35, 0.12, 0.55, chance=0.0, p=0.002, p_adj=0.004, n_tests=2)[0]
    'evidence (p=0.002, Holm p=0.004 over 2 tests; 95 % CI above chance)'
    >>> predictive_verdict(-0.02, -0.30, 0.01, chance=-0.2, floor=0.0, p=0.01, p_adj=0.01)[0]
    'association, no predictive gain (p=0.01; the value is not above 0)'
"""

from __future__ import annotations

import math
import zlib
from typing import Sequence

import numpy as np
from scipy import stats as _stats

from drasclr_toolkit.errors import InputError

__all__ = ["ALPHA", "MIN_CLASS_SIZE_WARN", "MIN_EVENTS", "MIN_EVENTS_REFUSE", "MIN_SUBJECTS",
           "corrected_ci", "holm", "multiplicity_note", "paired_difference",
           "predictive_verdict", "small_sample_note", "stream"]

ALPHA = 0.05
#: Below this many subjects a result is marked "small sample": one run at this size cannot
#: carry a claim (the calibration benchmark shows intervals and tests hold their level down
#: to n = 12, but their power is low and a single run is one draw of a wide distribution).
MIN_SUBJECTS = 20
#: Survival with fewer events than this is "exploratory" (about 10 events per model is the
#: usual minimum for a Cox model; below it C-indices swing by tenths between folds).
MIN_EVENTS = 10
#: Survival with fewer events than this is not evaluated at all.
MIN_EVENTS_REFUSE = 3
#: A class with fewer subjects than this gets a small-sample warning.
MIN_CLASS_SIZE_WARN = 5
_LOGIT_EPS = 0.01


def stream(seed: int, *keys: object) -> np.random.Generator:
    """An independent random generator for ``seed`` and a purpose named by ``keys``.

    Example:
        >>> a = stream(0, "permutation", "fev1_pp").integers(0, 1000, 3)
        >>> b = stream(0, "permutation", "fev1_pp").integers(0, 1000, 3)
        >>> c = stream(0, "permutation", "gold").integers(0, 1000, 3)
        >>> bool((a == b).all()), bool((a == c).all())
        (True, False)
    """
    key = zlib.crc32("\x1f".join(str(k) for k in keys).encode("utf-8"))
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, key])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS)
    return np.log(p / (1 - p))


def _expit(x: float) -> float:
    return float(1.0 / (1.0 + math.exp(-x)))


def corrected_ci(values: Sequence[float], n_train: float, n_test: float, level: float = 0.95,
                 bounds: tuple[float | None, float | None] | None = None
                 ) -> tuple[float, float]:
    """Nadeau–Bengio corrected repeated-CV interval of the mean of per-fold ``values``.

    ``bounds=(0, 1)``: the interval is made on the logit scale (fold values clipped to
    [0.01, 0.99]) and mapped back, so it stays inside (0, 1). Other bounds clip the ends.
    Fewer than two finite fold values give ``(nan, nan)``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2 or n_train <= 0:
        return float("nan"), float("nan")
    logit = bounds is not None and bounds[0] == 0 and bounds[1] == 1
    work = _logit(v) if logit else v
    var = (1.0 / len(work) + n_test / n_train) * work.var(ddof=1)
    half = float(_stats.t.ppf(0.5 + level / 2, len(work) - 1) * math.sqrt(var))
    centre = float(work.mean())
    lo, hi = centre - half, centre + half
    if logit:
        return _expit(lo), _expit(hi)
    if bounds is not None:
        if bounds[0] is not None:
            lo, hi = max(lo, bounds[0]), max(hi, bounds[0])
        if bounds[1] is not None:
            lo, hi = min(lo, bounds[1]), min(hi, bounds[1])
    return float(lo), float(hi)


def paired_difference(a: Sequence[float], b: Sequence[float], n_train: float, n_test: float,
                      level: float = 0.95) -> dict[str, float]:
    """Corrected repeated-CV t-test of the mean per-fold difference ``a - b``.

    ``a`` and ``b`` are one metric per fold for two feature sets scored on the **same
    subjects and folds** (the caller checks that). Returns ``diff`` (mean difference),
    ``ci_low``, ``ci_high`` (Nadeau–Bengio interval) and the two-sided ``p``.

    Example:
        >>> r = paired_difference([0.60, 0.55, 0.62, 0.58, 0.60, 0.57],
        ...                       [0.40, 0.42, 0.38, 0.41, 0.40, 0.39], 30, 10)
        >>> round(r["diff"], 3), r["p"] < 0.05
        (0.187, True)
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise InputError(f"paired_difference needs one value per fold for both sets; got "
                         f"{a.shape} and {b.shape} (were they scored on the same folds?)")
    d = a - b
    d = d[np.isfinite(d)]
    nan = float("nan")
    if len(d) < 2:
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "p": nan, "n_folds": len(d)}
    mean = float(d.mean())
    var = (1.0 / len(d) + n_test / n_train) * d.var(ddof=1)
    if var <= 0:
        p = 1.0 if mean == 0 else 0.0
        return {"diff": mean, "ci_low": mean, "ci_high": mean, "p": p, "n_folds": len(d)}
    se = math.sqrt(var)
    df = len(d) - 1
    half = float(_stats.t.ppf(0.5 + level / 2, df) * se)
    p = float(2 * _stats.t.sf(abs(mean) / se, df))
    return {"diff": mean, "ci_low": mean - half, "ci_high": mean + half, "p": p,
            "n_folds": len(d)}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries are left out of the count and stay NaN).

    Controls the family-wise error rate over the table at α without assuming independence.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    idx = np.flatnonzero(ok)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _fmt(p: float) -> str:
    return f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def predictive_verdict(value: float, ci_low: float, ci_high: float, *, chance: float,
                       p: float, p_adj: float | None = None, n_tests: int = 1,
                       n_permutations: int | None = None, alpha: float = ALPHA,
                       floor: float | None = None) -> tuple[str, bool]:
    """``(words, evidence)`` for one result.

    ``chance``: the metric of a predictor without information (the training-fold mean for
    R², 0.5 for AUC and C-index, the majority class for accuracy); ``floor``: the level the
    interval must clear for a predictive claim (default ``chance``; R² uses ``max(chance,
    0)``). ``p``: the permutation p-value, ``p_adj``: after Holm over the table's
    ``n_tests`` results. Evidence needs ``p_adj ≤ α`` and ``ci_low > floor``.
    """
    floor = chance if floor is None else floor
    if not np.isfinite(value):
        return "not evaluated", False
    p_adj = p if p_adj is None else p_adj
    ci_ok = bool(np.isfinite(ci_low) and np.isfinite(ci_high))
    above = ci_ok and ci_low > floor
    if not np.isfinite(p):  # a claim needs its test: the interval alone is not enough
        where = "above chance" if above else "reaches chance"
        return f"not tested (no permutation null run; 95 % CI {where})", False
    corrected = n_tests > 1
    ptext = f"p={_fmt(p)}" + (f", Holm p={_fmt(p_adj)} over {n_tests} tests" if corrected else "")
    if p_adj <= alpha:
        if value <= floor:
            return (f"association, no predictive gain ({ptext}; the value is not above "
                    f"{floor:.3g})"), False
        if not above:
            return (f"beats the null but its 95 % CI reaches chance ({ptext}): no predictive "
                    "claim"), False
        return f"evidence ({ptext}; 95 % CI above chance)", True
    reason = ""
    if n_permutations is not None and n_permutations >= 0:
        smallest = 1.0 / (n_permutations + 1)
        if smallest * (n_tests if corrected else 1) > alpha:
            reason = (f"; {n_permutations} permutations cannot reach p<={alpha:g}"
                      + (f" after correction for {n_tests} tests" if corrected else ""))
    if p <= alpha and corrected:
        return f"no evidence after correction ({ptext}{reason})", False
    return f"no evidence ({ptext}{reason})", False


def multiplicity_note(n_tests: int, n_permutations: int, alpha: float = ALPHA) -> str:
    """One sentence on whether the table's permutations allow a corrected claim.

    Example:
        >>> print(multiplicity_note(12, 19))
        12 tests, Holm-corrected: with 19 permutations the smallest p-value is 0.05, so no result can pass the corrected threshold (0.05/12 = 0.0042); use >= 239 permutations for a corrected claim.
    """
    smallest = 1.0 / (n_permutations + 1)
    need = math.ceil(n_tests / alpha) - 1
    if n_tests <= 1:
        return (f"1 test: with {n_permutations} permutations the smallest p-value is "
                f"{smallest:.2g}.")
    if smallest * n_tests <= alpha:
        return (f"{n_tests} tests, Holm-corrected: {n_permutations} permutations allow a "
                f"corrected claim (smallest p {smallest:.2g}).")
    return (f"{n_tests} tests, Holm-corrected: with {n_permutations} permutations the smallest "
            f"p-value is {smallest:.2g}, so no result can pass the corrected threshold "
            f"({alpha:g}/{n_tests} = {alpha / n_tests:.2g}); use >= {need} permutations for a "
            "corrected claim.")


def small_sample_note(n: int, *, n_events: int | None = None,
                      smallest_class: int | None = None) -> str:
    """Empty, or the caution a result at this size carries (documented thresholds:
    :data:`MIN_SUBJECTS`, :data:`MIN_EVENTS`, :data:`MIN_CLASS_SIZE_WARN`).

    Example:
        >>> small_sample_note(12)
        'small sample: 12 subjects (< 20): one run at this size cannot carry a claim'
        >>> small_sample_note(200, n_events=6)
        'exploratory: 6 events (< 10): survival metrics at this size are unstable'
    """
    notes = []
    if n < MIN_SUBJECTS:
        notes.append(f"small sample: {n} subjects (< {MIN_SUBJECTS}): one run at this size "
                     "cannot carry a claim")
    if n_events is not None and n_events < MIN_EVENTS:
        notes.append(f"exploratory: {n_events} events (< {MIN_EVENTS}): survival metrics at "
                     "this size are unstable")
    if smallest_class is not None and smallest_class < MIN_CLASS_SIZE_WARN:
        notes.append(f"small classes: the rarest class has {smallest_class} subjects "
                     f"(< {MIN_CLASS_SIZE_WARN})")
    return "; ".join(notes)

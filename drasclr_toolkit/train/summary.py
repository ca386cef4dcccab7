"""Did a pretraining run learn? A verdict from its metrics log, with chance made explicit.

Contrastive metrics mean little without their chance level: the contrast accuracy of an
encoder that ranks the positive at random among ``1 + n`` candidates is ``1 / (1 + n)``,
and its InfoNCE loss is about ``log(1 + n)``. The loop logs, per step, the mean number of
negatives per anchor (``n_negatives``) and that chance accuracy (``chance_acc``);
:func:`learning_summary` compares the start and the end of a run against them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError


def _window(frame: pd.DataFrame, fraction: float, last: bool) -> pd.DataFrame:
    n = max(1, int(math.ceil(len(frame) * fraction)))
    return frame.iloc[-n:] if last else frame.iloc[:n]


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame.columns:
        return float("nan")
    return float(pd.to_numeric(frame[column], errors="coerce").mean())


def learning_summary(metrics: pd.DataFrame, *, fraction: float = 0.1, loss: str = "loss_local",
                     acc: str = "acc_local", min_ratio: float = 3.0,
                     min_loss_drop: float = 0.05) -> dict[str, Any]:
    """First/last-``fraction`` loss means, final accuracy against chance, and a verdict.

    Args:
        metrics: the metrics log (:func:`drasclr_toolkit.train.read_metrics`), one row per
            logged step.
        fraction: share of the logged steps averaged at each end (0.1: first and last 10 %).
        loss, acc: the loss and accuracy columns judged (the local InfoNCE by default: the
            total loss also moves with β's warm-up).
        min_ratio: final accuracy must reach this multiple of chance.
        min_loss_drop: the last window's loss must be this fraction below the first's.

    Returns a dict: ``steps``, ``loss_first``, ``loss_last``, ``loss_drop`` (relative),
    ``loss_chance_first``/``loss_chance_last`` (``log(1 + n_negatives)``), ``acc_first``,
    ``acc_last``, ``chance_last``, ``n_negatives_last``, ``ratio`` (acc_last / chance_last),
    ``loss_falls``, ``beats_chance`` and ``learning`` (both). Logs written before
    ``n_negatives`` was recorded give NaN chance and ``beats_chance=False``.

    Example:
        >>> df = pd.DataFrame({"step": range(1, 11), "loss_local": np.linspace(3, 2, 10),
        ...                    "acc_local": np.linspace(0.05, 0.3, 10),
        ...                    "n_negatives": 31.0, "chance_acc": 1 / 32})
        >>> s = learning_summary(df)
        >>> round(s["loss_first"], 2), round(s["loss_last"], 2), round(s["ratio"], 1), s["learning"]
        (3.0, 2.0, 9.6, True)
    """
    if not 0 < fraction <= 0.5:
        raise InputError(f"fraction must be in (0, 0.5], got {fraction}")
    if metrics is None or len(metrics) == 0:
        raise InputError("learning_summary: the metrics log is empty; has the run logged a step?")
    if loss not in metrics.columns or acc not in metrics.columns:
        raise InputError(f"learning_summary: metrics need columns {loss!r} and {acc!r}, have "
                         f"{sorted(metrics.columns)}")
    frame = metrics.sort_values("step") if "step" in metrics.columns else metrics
    first, last = _window(frame, fraction, False), _window(frame, fraction, True)
    loss_first, loss_last = _mean(first, loss), _mean(last, loss)
    chance_last = _mean(last, "chance_acc")
    acc_last = _mean(last, acc)
    n_first, n_last = _mean(first, "n_negatives"), _mean(last, "n_negatives")
    ratio = acc_last / chance_last if chance_last > 0 else float("nan")
    drop = (loss_first - loss_last) / loss_first if loss_first > 0 else float("nan")
    loss_falls = bool(np.isfinite(drop) and drop >= min_loss_drop)
    beats_chance = bool(np.isfinite(ratio) and ratio >= min_ratio)
    return {
        "steps": int(len(frame)), "window": int(len(last)),
        "loss_first": loss_first, "loss_last": loss_last, "loss_drop": drop,
        "loss_chance_first": math.log1p(n_first) if np.isfinite(n_first) else float("nan"),
        "loss_chance_last": math.log1p(n_last) if np.isfinite(n_last) else float("nan"),
        "acc_first": _mean(first, acc), "acc_last": acc_last,
        "chance_last": chance_last, "n_negatives_last": n_last, "ratio": ratio,
        "min_ratio": min_ratio, "min_loss_drop": min_loss_drop, "loss_falls": loss_falls, "beats_chance": beats_chance,
        "learning": loss_falls and beats_chance,
    }


def format_learning_summary(summary: dict[str, Any]) -> str:
    """A few lines of text whose words follow the numbers (for notebooks and logs).

    Example:
        >>> print(format_learning_summary(dict(steps=100, window=10, loss_first=2.0,
        ...     loss_last=2.1, loss_drop=-0.05, loss_chance_first=2.2, loss_chance_last=2.8,
        ...     acc_first=0.1, acc_last=0.1, chance_last=0.06, n_negatives_last=15.7,
        ...     ratio=1.7, min_ratio=3.0, loss_falls=False, beats_chance=False,
        ...     learning=False)).splitlines()[-1])
        verdict: no clear learning (loss did not fall by 5 %; accuracy 1.7× chance, below 3×)
    """
    s = summary
    w = s["window"]
    lines = [
        f"local InfoNCE loss: first {w} steps {s['loss_first']:.3f}, last {w} steps "
        f"{s['loss_last']:.3f} ({-100 * s['loss_drop']:+.1f} %); chance level log(1+n) "
        f"{s['loss_chance_first']:.2f} → {s['loss_chance_last']:.2f}",
        f"contrast accuracy, last {w} steps: {s['acc_last']:.3f} vs chance "
        f"{s['chance_last']:.3f} (1/(1+n), n = {s['n_negatives_last']:.1f} negatives per "
        f"anchor): {s['ratio']:.1f}× chance",
    ]
    reasons = []
    need = 100 * s.get("min_loss_drop", 0.05)
    reasons.append(f"loss fell by at least {need:g} %" if s["loss_falls"]
                   else f"loss did not fall by {need:g} %")
    reasons.append(f"accuracy {s['ratio']:.1f}× chance, "
                   + (f"at least {s['min_ratio']:g}×" if s["beats_chance"]
                      else f"below {s['min_ratio']:g}×"))
    verdict = "learning visible" if s["learning"] else "no clear learning"
    lines.append(f"verdict: {verdict} ({'; '.join(reasons)})")
    return "\n".join(lines)

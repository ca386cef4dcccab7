"""Small pieces shared by the probes and the survival evaluation (not public API).

Feature sets come in many shapes (one array, one DataFrame indexed by subject id, an
:class:`~drasclr_toolkit.embed.Embeddings`, or a dict of any of these); everything here
turns them into ``{name: DataFrame indexed by subject id}`` and lines them up with labels.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError

FeatureLike = Any  # np.ndarray | pd.DataFrame | Embeddings
DEFAULT_SET_NAME = "features"


def as_frame(values: FeatureLike, name: str, index: pd.Index | None = None) -> pd.DataFrame:
    """One feature set as a float DataFrame indexed by subject id (strings).

    An ``Embeddings`` is mean-pooled; a plain array takes ``index`` (the labels' subject
    order) and must have as many rows.
    """
    if hasattr(values, "patch") and hasattr(values, "lung_fraction"):  # an Embeddings
        from drasclr_toolkit.evaluate.features import pool_embeddings

        values = pool_embeddings(values, "mean")
    if isinstance(values, pd.Series):
        values = values.to_frame()
    if isinstance(values, pd.DataFrame):
        frame = values.copy()
        frame.index = frame.index.astype(str)
    else:
        array = np.asarray(values, dtype=np.float64)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise InputError(f"feature set {name!r}: expected a 2-D (subjects × features) "
                             f"array, got shape {array.shape}")
        if index is None or len(index) != len(array):
            raise InputError(
                f"feature set {name!r} is a plain array with {len(array)} rows but the "
                f"labels have {0 if index is None else len(index)} subjects; pass a DataFrame "
                "indexed by subject id (e.g. pool_embeddings(emb)) so rows can be matched by id")
        frame = pd.DataFrame(array, index=pd.Index(index).astype(str),
                             columns=[f"f{j}" for j in range(array.shape[1])])
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()].unique().tolist()[:5]
        raise InputError(f"feature set {name!r} has duplicate subject ids, e.g. {dup}")
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise InputError(f"feature set {name!r}: columns {non_numeric[:5]} are not numeric; "
                         "one-hot encode them (pandas.get_dummies) or drop them")
    return frame.astype(np.float64)


def as_feature_sets(features: FeatureLike | Mapping[str, FeatureLike],
                    index: pd.Index | None = None) -> dict[str, pd.DataFrame]:
    """``{name: frame}`` from one feature set or a dict of them."""
    if isinstance(features, Mapping):
        if not features:
            raise InputError("features is an empty dict; give at least one feature set")
        return {str(k): as_frame(v, str(k), index) for k, v in features.items()}
    return {DEFAULT_SET_NAME: as_frame(features, DEFAULT_SET_NAME, index)}


def align(frame: pd.DataFrame, labels: pd.DataFrame, name: str
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of ``frame`` and ``labels`` with the same subject id, in ``labels`` order.

    Subjects present in only one of them are dropped with a warning that counts them.
    """
    common = labels.index[labels.index.isin(frame.index)]
    missing_features = int((~labels.index.isin(frame.index)).sum())
    missing_labels = int((~frame.index.isin(labels.index)).sum())
    if len(common) == 0:
        raise InputError(
            f"feature set {name!r} and the labels share no subject id (features: "
            f"{frame.index[:3].tolist()}…, labels: {labels.index[:3].tolist()}…); index both "
            "by subject id")
    if missing_features or missing_labels:
        warnings.warn(f"feature set {name!r}: {missing_features} labelled subjects have no "
                      f"features and {missing_labels} subjects with features have no labels; "
                      f"using the {len(common)} in both", stacklevel=3)
    return frame.loc[common], labels.loc[common]


def drop_incomplete_features(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Drop subjects with a missing (NaN) feature value, with a warning."""
    bad = frame.isna().any(axis=1)
    if bad.any():
        warnings.warn(f"feature set {name!r}: {int(bad.sum())} subjects have missing feature "
                      f"values and are left out (e.g. {frame.index[bad][:3].tolist()})",
                      stacklevel=3)
        frame = frame.loc[~bad]
    return frame


def permutation_p_value(observed: float, null: np.ndarray, greater_is_better: bool = True
                        ) -> float:
    """(1 + #null at least as good as observed) / (1 + #null): never 0, as in
    ``sklearn.model_selection.permutation_test_score``."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if not np.isfinite(observed) or len(null) == 0:
        return float("nan")
    better = null >= observed if greater_is_better else null <= observed
    return float((1 + better.sum()) / (1 + len(null)))

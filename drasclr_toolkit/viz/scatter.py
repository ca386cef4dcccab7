"""Patient embeddings in 2D (PCA or UMAP), coloured by any label, ids on hover.

Example:
    >>> import numpy as np, pandas as pd
    >>> X = pd.DataFrame(np.random.default_rng(0).normal(size=(6, 4)),
    ...                  index=[f"s{i}" for i in range(6)])
    >>> fig = embedding_scatter(X, labels=np.arange(6.0), method="pca")
    >>> fig.data[0].type, len(fig.data[0].x)
    ('scatter', 6)
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.embed import Embeddings
from drasclr_toolkit.evaluate.features import pool_embeddings

from drasclr_toolkit.viz.landmarks import CATEGORY_COLOURS

__all__ = ["embedding_scatter", "reduce_2d"]


def reduce_2d(X: np.ndarray, method: str = "pca", seed: int = 0,
              n_neighbors: int = 15) -> tuple[np.ndarray, str]:
    """2D coordinates of ``X`` (N, D) and a note naming the method actually used.

    ``umap`` (umap-learn, seeded) falls back to PCA, with a warning, when umap-learn is
    not installed or the cohort is too small for it (fewer than 4 subjects).
    """
    X = np.asarray(X, dtype=np.float64)
    if method not in ("pca", "umap"):
        raise InputError(f"method must be 'pca' or 'umap', got {method!r}")
    if method == "umap":
        reason = None
        if len(X) < 4:
            reason = f"UMAP needs at least 4 subjects, have {len(X)}"
        else:
            try:
                import umap
            except ImportError:
                reason = "umap-learn is not installed (pip install umap-learn)"
        if reason is None:
            reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(X) - 1)),
                                random_state=seed, init="random" if len(X) < 10 else "spectral")
            with warnings.catch_warnings():
                # random_state disables parallelism; umap says so on every call.
                warnings.filterwarnings("ignore", message=".*n_jobs.*")
                return reducer.fit_transform(X), "UMAP"
        warnings.warn(f"embedding_scatter: {reason}; showing PCA instead", stacklevel=3)
        method_note = f"PCA (UMAP unavailable: {reason})"
    else:
        method_note = "PCA"
    from sklearn.decomposition import PCA

    n_comp = min(2, X.shape[1], len(X))
    coords = PCA(n_components=n_comp).fit_transform(X)
    if coords.shape[1] < 2:
        coords = np.c_[coords, np.zeros(len(coords))]
    return coords, method_note


def _as_matrix(embeddings: Any, ids: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if isinstance(embeddings, Embeddings):
        embeddings = pool_embeddings(embeddings, "mean")
    if isinstance(embeddings, pd.DataFrame):
        X = embeddings.to_numpy(dtype=np.float64)
        ids = list(ids) if ids is not None else [str(i) for i in embeddings.index]
    else:
        X = np.asarray(embeddings, dtype=np.float64)
        ids = list(ids) if ids is not None else [str(i) for i in range(len(X))]
    if X.ndim != 2:
        raise InputError(f"embeddings must be (N, D); got shape {X.shape}")
    if len(ids) != len(X):
        raise InputError(f"{len(ids)} ids for {len(X)} embeddings")
    return X, [str(i) for i in ids]


def _align_labels(labels: Any, ids: list[str]) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, pd.Series) and not isinstance(labels.index, pd.RangeIndex):
        labels.index = labels.index.astype(str)
        missing = [i for i in ids if i not in labels.index]
        if missing:
            raise KeyError(f"labels have no value for subjects {missing[:5]}")
        return labels.loc[ids].to_numpy()
    labels = np.asarray(labels)
    if len(labels) != len(ids):
        raise InputError(f"{len(labels)} labels for {len(ids)} subjects")
    return labels


def embedding_scatter(embeddings: Any, labels: Any = None, *, method: str = "pca",
                      ids: Sequence[str] | None = None, label_name: str | None = None,
                      categorical: bool | None = None, seed: int = 0, n_neighbors: int = 15,
                      title: str | None = None, marker_size: float = 9.0) -> go.Figure:
    """Scatter of patient embeddings, coloured by ``labels``, subject ids on hover.

    Args:
        embeddings: :class:`Embeddings` (mean-pooled), a DataFrame (N, D) indexed by
            subject id (``pool_embeddings``), or an array. Input with exactly 2 columns is
            taken as already-reduced coordinates and drawn as is.
        labels: per-subject values: a Series indexed by subject id (aligned by id), or an
            array in row order. Floats get a colour bar; integers, strings and booleans are
            categories (one legend entry each), unless ``categorical`` says otherwise.
        method: ``"pca"`` or ``"umap"`` (seeded; falls back to PCA with a note in the
            title and a warning when umap-learn is unavailable).
    """
    X, ids = _as_matrix(embeddings, ids)
    if X.shape[1] == 2:
        coords, note = X, "given coordinates"
    else:
        coords, note = reduce_2d(X, method, seed, n_neighbors)
    values = _align_labels(labels, ids)
    if label_name is None:
        label_name = getattr(labels, "name", None) or "label"
    axis = "UMAP" if note == "UMAP" else "PC"
    fig = go.Figure()
    base = dict(x=coords[:, 0], y=coords[:, 1], mode="markers",
                hovertemplate="%{text}<extra></extra>")
    if values is None:
        fig.add_trace(go.Scatter(**base, text=ids, marker=dict(size=marker_size), name="subjects"))
    else:
        is_cat = categorical if categorical is not None else (
            values.dtype.kind in "iubOUS" and len(set(values.tolist())) <= 12)
        text = [f"{sid}<br>{label_name} = {v:.4g}" if isinstance(v, (float, np.floating))
                else f"{sid}<br>{label_name} = {v}" for sid, v in zip(ids, values.tolist())]
        if is_cat:
            for j, category in enumerate(sorted(set(values.tolist()), key=str)):
                rows = np.flatnonzero(np.array([v == category for v in values.tolist()]))
                fig.add_trace(go.Scatter(
                    x=coords[rows, 0], y=coords[rows, 1], mode="markers",
                    text=[text[r] for r in rows], hovertemplate="%{text}<extra></extra>",
                    marker=dict(size=marker_size, color=CATEGORY_COLOURS[j % len(CATEGORY_COLOURS)]),
                    name=f"{label_name} = {category}"))
        else:
            fig.add_trace(go.Scatter(**base, text=text, name="subjects", marker=dict(
                size=marker_size, color=values.astype(np.float64), colorscale="Viridis",
                showscale=True, colorbar=dict(title=dict(text=label_name)))))
    fig.update_layout(title=title or f"Patient embeddings ({note})",
                      xaxis_title=f"{axis} 1", yaxis_title=f"{axis} 2",
                      margin=dict(l=40, r=10, t=50, b=40))
    fig.layout.meta = {"method": note}
    return fig

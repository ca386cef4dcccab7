"""Retrieval gallery: a chosen patch and its most similar patches at the same location.

Example:
    >>> fig = retrieval_gallery(emb, store, subject="syn000", landmark=120, k=5)  # doctest: +SKIP
    >>> fig.write_html("retrieval.html")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.constants import HU_WINDOW
from drasclr_toolkit.embed import Embeddings, retrieve_similar
from drasclr_toolkit.patch_source import PatchSource

__all__ = ["middle_slice", "retrieval_gallery"]

# Axis of a (z, y, x) patch held fixed, per plane name.
PLANE_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}


def middle_slice(patch: np.ndarray, plane: str = "axial") -> np.ndarray:
    """The middle slice of a (z, y, x) patch in ``plane`` (axial, coronal or sagittal)."""
    if plane not in PLANE_AXES:
        raise InputError(f"plane must be one of {list(PLANE_AXES)}, got {plane!r}")
    axis = PLANE_AXES[plane]
    return np.take(np.asarray(patch), patch.shape[axis] // 2, axis=axis)


def _source_index(source: PatchSource, subject_id: str) -> int:
    try:
        return list(source.subject_ids).index(subject_id)
    except ValueError:
        raise KeyError(f"subject {subject_id!r} of the embeddings is not in the patch source; "
                       "use the source the embeddings were extracted from") from None


def retrieval_gallery(embeddings: Embeddings, source: PatchSource, subject: int | str, landmark: int,
                      k: int = 5, *, center: bool = False, plane: str = "axial",
                      window: tuple[float, float] = HU_WINDOW,
                      title: str | None = None, labels=None) -> go.Figure:
    """Gallery (1 × k+1 heatmaps): the query patch's middle slice, then its ``k`` nearest
    neighbours by cosine similarity among the other subjects' patches at the same landmark,
    with subject id and similarity in each title. ``center``: see :func:`drasclr_toolkit.embed.retrieve_similar`.
    ``labels``: a DataFrame indexed by subject id; its values (e.g. disease severity and
    scanner noise) are written under each patch, so a reader can judge the neighbours.

    ``source`` is the patch source the embeddings were extracted from (patches are read
    with ``read_location``); ``window`` is the HU display range.
    """
    hits = retrieve_similar(embeddings, subject, landmark, k, center=center)
    query_id = embeddings.subject_ids[embeddings.subject_index(subject)]
    order = [query_id] + hits.subject_id.tolist()
    patches = source.read_location(int(landmark), [_source_index(source, s) for s in order])
    titles = [f"query {query_id}"] + [f"{sid} · cos {sim:.3f}"
                                       for sid, sim in zip(hits.subject_id, hits.similarity)]
    if labels is not None:
        def describe(sid: str) -> str:
            if sid not in labels.index:
                return "(no labels)"
            row = labels.loc[sid]
            return "<br>".join(f"{k} {v:.2g}" if isinstance(v, (float, np.floating)) else f"{k} {v}"
                               for k, v in row.items())
        titles = [f"{t}<br><span style='font-size:10px'>{describe(sid)}</span>"
                  for t, sid in zip(titles, order)]
    fig = make_subplots(rows=1, cols=len(order), subplot_titles=titles,
                        horizontal_spacing=0.01)
    for col, patch in enumerate(patches, start=1):
        fig.add_trace(go.Heatmap(z=middle_slice(patch, plane), colorscale="gray",
                                 zmin=window[0], zmax=window[1], showscale=col == 1,
                                 colorbar=dict(title=dict(text="HU")),
                                 hovertemplate="HU %{z}<extra></extra>"), row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
        fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor=f"x{col}",
                         row=1, col=col)
    extra = 0 if labels is None else 16 * len(labels.columns)  # label lines above each patch
    fig.update_layout(title=dict(text=title or f"Patches most similar to {query_id} at landmark "
                                               f"{int(landmark)} ({plane} middle slice)",
                                 y=0.99, yanchor="top", yref="container"),
                      height=260 + extra, margin=dict(l=10, r=10, t=80 + extra, b=10))
    fig.layout.meta = {"hits": hits.to_dict(orient="list")}
    return fig

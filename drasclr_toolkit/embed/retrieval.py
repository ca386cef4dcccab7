"""Patch retrieval: the most similar patches at the same anatomical location.

Example:
    >>> import numpy as np
    >>> from drasclr_toolkit.embed import Embeddings
    >>> patch = np.array([[[1, 0]], [[1, 0.1]], [[0, 1]]], np.float32)  # N=3, L=1, D=2
    >>> emb = Embeddings(patch, ["a", "b", "c"], np.zeros((1, 3), int), np.zeros((1, 3)),
    ...                  np.ones((3, 1)))
    >>> retrieve_similar(emb, "a", 0, k=1).subject_id.tolist()
    ['b']
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.embed.store import Embeddings

__all__ = ["retrieve_similar"]


def retrieve_similar(embeddings: Embeddings, subject: int | str, landmark: int, k: int = 5,
                     include_self: bool = False, center: bool = False) -> pd.DataFrame:
    """The ``k`` patches most similar (cosine) to ``subject``'s patch at ``landmark``, among
    all subjects' patches at that same landmark.

    ``center`` subtracts the cohort mean at that landmark first: embeddings of one location
    share a large common part (what every lung looks like there), which makes raw cosines
    all close to 1; centred, the similarity reflects how patients differ.

    Returns a DataFrame with columns ``rank`` (1 = most similar), ``subject_id``,
    ``subject_index``, ``landmark`` and ``similarity``, best first. The query subject is
    left out unless ``include_self``.
    """
    if not 0 <= int(landmark) < embeddings.n_landmarks:
        raise IndexError(f"landmark {landmark} out of range 0..{embeddings.n_landmarks - 1}")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    query_row = embeddings.subject_index(subject)
    vectors = embeddings.patch[:, int(landmark)].astype(np.float64)
    if center:
        vectors = vectors - vectors.mean(axis=0)
    norms = np.linalg.norm(vectors, axis=1)
    # A zero vector has no direction: give it similarity 0 rather than NaN.
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    similarity = unit @ unit[query_row]
    order = np.argsort(-similarity, kind="stable")
    if not include_self:
        order = order[order != query_row]
    order = order[:k]
    return pd.DataFrame({
        "rank": np.arange(1, len(order) + 1),
        "subject_id": [embeddings.subject_ids[i] for i in order],
        "subject_index": order,
        "landmark": int(landmark),
        "similarity": similarity[order],
    })

"""Embeddings: feature extraction, the embedding store, patient pooling, retrieval.

Example:
    >>> from drasclr_toolkit.embed import Embeddings, extract_embeddings  # doctest: +SKIP
    >>> emb = extract_embeddings(store, checkpoint="ckpt.pt", out_path="emb.npz")  # doctest: +SKIP
    >>> patients = emb.pool("mean")  # DataFrame (N, D) indexed by subject id  # doctest: +SKIP
"""

from .extract import EmbedConfig, extract_embeddings
from .retrieval import retrieve_similar
from .store import POOLING_METHODS, Embeddings

__all__ = [
    "POOLING_METHODS",
    "EmbedConfig",
    "Embeddings",
    "extract_embeddings",
    "retrieve_similar",
]

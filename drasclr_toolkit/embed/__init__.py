"""Embeddings: feature extraction, the embedding store, retrieval.

Example:
    >>> from drasclr_toolkit.embed import Embeddings, extract_embeddings  # doctest: +SKIP
    >>> emb = extract_embeddings(store, checkpoint="ckpt.pt", out_path="emb.npz")  # doctest: +SKIP
    >>> from drasclr_toolkit.evaluate import pool_embeddings  # doctest: +SKIP
    >>> patients = pool_embeddings(emb, "mean")  # DataFrame (N, D) by subject id  # doctest: +SKIP
"""

from drasclr_toolkit.embed.extract import EmbedConfig, extract_embeddings
from drasclr_toolkit.embed.retrieval import retrieve_similar
from drasclr_toolkit.embed.store import Embeddings

__all__ = [
    "EmbedConfig",
    "Embeddings",
    "extract_embeddings",
    "retrieve_similar",
]

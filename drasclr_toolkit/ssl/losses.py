"""DrasCLR contrastive losses: local and neighbour InfoNCE against per-location queues.

Local loss: the query is view 1 of patch p of subject s, the positive is the key of view 2
of the same patch, the negatives are location p's queue (the same anatomy in other
subjects). Neighbour loss: the query embeddings of the k nearest landmarks' patches of the
same subject are combined (summed, as the reference does, or averaged), normalised, and
contrasted against the same positive and negatives. Total = local + β(step)·neighbour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.errors import InputError


def info_nce_logits(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                    temperature: float = 0.2, negative_mask: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Logits (B, 1 + K): column 0 the positive, then the K negatives, all divided by T.

    ``query`` and ``positive`` (B, D) and ``negatives`` (K, D) are expected L2-normalised.
    Masked-out negatives (mask False; shape (K,) shared or (B, K) per query) get -inf and
    so drop out of the softmax.
    Computed in float32 whatever the input dtypes (bf16/fp16 queues, autocast).
    """
    q = query.float()
    pos = (q * positive.float()).sum(dim=1, keepdim=True)
    neg = q @ negatives.float().t()
    if negative_mask is not None:
        mask = negative_mask if negative_mask.dim() == 2 else negative_mask.view(1, -1)
        neg = neg.masked_fill(~mask, float("-inf"))
    return torch.cat([pos, neg], dim=1) / temperature


def contrast_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose positive (column 0) outranks every negative."""
    if logits.shape[1] == 1:
        return logits.new_ones(())
    return (logits[:, 0] > logits[:, 1:].max(dim=1).values).float().mean()


class LocalInfoNCE(nn.Module):
    """InfoNCE of a query against its positive key and its location's queue.

    Example:
        >>> loss_fn = LocalInfoNCE(temperature=0.2)
        >>> q = F.normalize(torch.randn(4, 8), dim=1)
        >>> negatives = F.normalize(torch.randn(16, 8), dim=1)
        >>> loss, logits = loss_fn(q, q, negatives)
        >>> tuple(logits.shape), bool(loss > 0)
        ((4, 17), True)
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise InputError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                negative_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = info_nce_logits(query, positive, negatives, self.temperature, negative_mask)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(logits, labels), logits

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class NeighbourInfoNCE(nn.Module):
    """InfoNCE of the combined neighbour embeddings against the anchor's key and queue.

    Args:
        temperature: softmax temperature (0.2).
        reduction: "sum" (the reference) or "mean" of the k neighbour embeddings. The
            combination is L2-normalised before the dot product, so the two agree in
            direction; they differ only when ``normalize=False``.
        normalize: normalise the combined embedding (True, as the reference).

    Example:
        >>> loss_fn = NeighbourInfoNCE()
        >>> neigh = F.normalize(torch.randn(2, 4, 8), dim=-1)    # (k, B, D)
        >>> key = F.normalize(torch.randn(4, 8), dim=1)
        >>> loss, logits = loss_fn(neigh, key, F.normalize(torch.randn(5, 8), dim=1))
        >>> tuple(logits.shape)
        (4, 6)
    """

    def __init__(self, temperature: float = 0.2, reduction: str = "sum",
                 normalize: bool = True) -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise InputError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.local = LocalInfoNCE(temperature)
        self.reduction = reduction
        self.normalize = normalize

    def combine(self, neighbour_queries: torch.Tensor) -> torch.Tensor:
        """(k, B, D) neighbour embeddings → (B, D) combined query."""
        q = neighbour_queries.sum(0) if self.reduction == "sum" else neighbour_queries.mean(0)
        return F.normalize(q, dim=1) if self.normalize else q

    def forward(self, neighbour_queries: torch.Tensor, positive: torch.Tensor,
                negatives: torch.Tensor, negative_mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.local(self.combine(neighbour_queries), positive, negatives, negative_mask)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, normalize={self.normalize}"


def neighbour_weight(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """β at ``step``: linear ramp from 0 to β over ``warmup_steps``, then constant.

    Example:
        >>> [neighbour_weight(s, beta=1.0, warmup_steps=4) for s in (0, 2, 4, 9)]
        [0.0, 0.5, 1.0, 1.0]
    """
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0, step) / warmup_steps)

"""The training objectives of the fine-tuned models: InfoNCE for the bi-encoder and a listwise
softmax cross-entropy for the cross-encoder."""

from __future__ import annotations

import torch


def contrastive_loss(
    queries: torch.Tensor,
    items: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """InfoNCE: row i's positive is item i; items equal to row i's positive elsewhere are masked.

    `positives` holds the product row of each query's positive, `candidates` the product row
    of every item column (the positives first, then the hard negatives).
    """
    logits = queries @ items.T / temperature
    duplicate = candidates.unsqueeze(0) == positives.unsqueeze(1)
    own = torch.arange(len(positives), device=logits.device)
    duplicate[own, own] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, own)


def listwise_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of a group's scores against its targets made a distribution.

    Click groups' inverse-propensity weights are self-normalised per group the same way: a
    list whose one click sat at position 20 then weighs as much as any other group instead of
    20 times as much (a small bias for far less variance), and click and graded groups are on
    one scale."""
    return -((targets / targets.sum()) * torch.log_softmax(scores, dim=0)).sum()

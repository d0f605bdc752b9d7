"""The cross-encoder's training objective: a listwise softmax cross-entropy (the bi-encoder
trains with sentence-transformers' `MultipleNegativesRankingLoss`)."""

from __future__ import annotations

import torch


def listwise_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of a group's scores against its targets made a distribution.

    Click groups' inverse-propensity weights are self-normalised per group the same way: a
    list whose one click sat at position 20 then weighs as much as any other group instead of
    20 times as much (a small bias for far less variance), and click and graded groups are on
    one scale."""
    return -((targets / targets.sum()) * torch.log_softmax(scores, dim=0)).sum()

"""A membership-inference audit: can an attacker tell the customers a model was trained on
from customers it never saw, by the model's loss on their data?

The loss-threshold attack (Yeom et al., CSF 2018) calls a customer a member when the model's
loss on their examples is low. Its AUC over member and outsider customers is the chance that
a random member's loss is below a random outsider's: 0.5 means the loss gives nothing away,
1.0 that it separates them perfectly. Differential privacy bounds it (a model trained with
(ε, δ) keeps any attack's advantage small when ε is), which is what the audit shows.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def loss_threshold_auc(member_losses: np.ndarray, outsider_losses: np.ndarray) -> float:
    """P(member's loss < outsider's loss), ties counting half: the attack's ROC AUC."""
    from scipy.stats import mannwhitneyu

    members, outsiders = np.asarray(member_losses), np.asarray(outsider_losses)
    if not len(members) or not len(outsiders):
        raise ValueError("the membership audit needs member and outsider customers")
    found = mannwhitneyu(outsiders, members, alternative="two-sided")
    return float(found.statistic / (len(members) * len(outsiders)))


def audit(member_losses: np.ndarray, outsider_losses: np.ndarray) -> dict:
    """The attack's record (metrics/retriever.json → membership): its AUC, how many customers
    of each kind it saw and their mean losses."""
    auc = loss_threshold_auc(member_losses, outsider_losses)
    log.info(
        "membership audit: loss-threshold attack AUC %.3f (%d members, %d outsiders)",
        auc,
        len(member_losses),
        len(outsider_losses),
    )
    return {
        "attack": "loss threshold",
        "auc": auc,
        "members": len(member_losses),
        "outsiders": len(outsider_losses),
        "member_loss": float(np.mean(member_losses)),
        "outsider_loss": float(np.mean(outsider_losses)),
    }

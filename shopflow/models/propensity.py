"""Position bias in click logs: examination propensities estimated from the logs themselves.

A click needs the shopper to look at the result and to like it. Under the position-based
model P(click | q, d, k) = θ_k · γ_qd, where θ_k is the chance of examining position k and
γ_qd the attractiveness of product d for query q. Learning from raw clicks would learn θ as
much as relevance; weighting each click by 1/θ_k (inverse propensity) removes it.

θ is not assumed: it is fitted by expectation-maximisation over the impressions (Wang et al.,
WSDM 2018, "Position bias estimation for unbiased learning to rank in personal search"). The
estimate is identified because the same product is shown at different positions for the same
query (the logging policy is noisy). No maintained Python package implements this click model
for tabular logs (pyclick is unmaintained and works session by session, far too slowly), and
it is 30 lines of vectorised numpy.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from shopflow.core.errors import StageInputError

log = logging.getLogger(__name__)


def estimate_propensities(
    impressions: pd.DataFrame, max_position: int = 20, iterations: int = 100, tol: float = 1e-6
) -> pd.Series:
    """θ_k / θ_1 for k = 1..max_position from columns query, product_id, position, clicked.

    Positions beyond `max_position` share its estimate. Returns a Series indexed by position.
    """
    missing = {"query", "product_id", "position", "clicked"} - set(impressions.columns)
    if missing:
        raise StageInputError(f"click log lacks columns {sorted(missing)}")
    if not impressions["clicked"].any():
        raise StageInputError("the click log has no clicks: position bias cannot be estimated")
    pair = pd.factorize(
        impressions["query"].astype(str) + "\x1f" + impressions["product_id"].astype(str)
    )[0]
    # A pair only ever seen at one position says nothing about θ (its γ absorbs everything),
    # and in practice flattens the estimate: keep pairs seen at two positions or more.
    positions = np.clip(impressions["position"].to_numpy(int), 1, max_position)
    informative = pd.Series(positions).groupby(pair).transform("nunique").to_numpy() > 1
    if not informative.any():
        raise StageInputError(
            "no (query, product) pair was shown at two different positions: position bias "
            "cannot be estimated from these logs"
        )
    impressions = impressions[informative]
    pos = positions[informative] - 1
    pair = pd.factorize(pair[informative])[0]
    clicked = impressions["clicked"].to_numpy(bool)
    n_pos = np.bincount(pos, minlength=max_position).astype(float)
    n_pair = np.bincount(pair).astype(float)
    theta = np.full(max_position, 0.5)
    gamma = np.full(len(n_pair), 0.5)
    rounds = 0
    for rounds in range(1, iterations + 1):  # noqa: B007 (logged below)
        t, g = theta[pos], gamma[pair]
        unclicked = np.where(clicked, 0.0, 1.0 / np.maximum(1.0 - t * g, 1e-12))
        examined = np.where(clicked, 1.0, t * (1.0 - g) * unclicked)
        attractive = np.where(clicked, 1.0, (1.0 - t) * g * unclicked)
        new_theta = np.bincount(pos, examined, minlength=max_position) / np.maximum(n_pos, 1)
        new_gamma = np.bincount(pair, attractive) / n_pair
        change = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max())
        theta, gamma = new_theta, new_gamma
        if change < tol:
            break
    seen = n_pos > 0
    theta = np.where(seen, theta, np.nan)
    propensity = pd.Series(theta / theta[0], index=pd.RangeIndex(1, max_position + 1))
    propensity = propensity.ffill().rename("propensity")
    propensity.index.name = "position"
    log.info(
        "position bias (EM, %d iterations, %d informative impressions): θ_k/θ_1 at 1..5 = %s",
        rounds,
        len(impressions),
        ", ".join(f"{v:.3f}" for v in propensity.iloc[:5]),
    )
    return propensity


def click_weights(positions: np.ndarray, propensity: pd.Series, clip: float = 0.05) -> np.ndarray:
    """1/propensity per click, with propensities clipped at `clip` to bound the variance."""
    max_position = int(propensity.index.max())
    theta = propensity.to_numpy()[np.clip(positions.astype(int), 1, max_position) - 1]
    return 1.0 / np.clip(theta, clip, None)

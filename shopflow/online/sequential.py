"""Always-valid tests for an experiment read every night.

The mixture sequential probability ratio test (mSPRT; Johari, Pekelis & Walsh, "Always Valid
Inference", 2017) compares H0: mean 0 with a normal mixture N(0, τ²) of alternatives. For n
observations with mean x̄ and variance σ²,

    Λ_n = sqrt(σ² / (σ² + nτ²)) · exp(n²τ² x̄² / (2σ² (σ² + nτ²)))

and p_n = min(1, min_{m ≤ n} 1/Λ_m) is a p-value that stays valid however often it is read:
stopping the first night p_n ≤ α keeps false positives at α. The observations here are per
unit (customer or session), never per impression or click, since one unit's clicks are not
independent.

`ab_sample_size` and `preference_sample_size` are the fixed-horizon sizes of a 50/50 A/B test
on click-through and of a sign test on the interleaving preference at the same α and power:
the bench compares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SequentialResult:
    n: int
    mean: float
    p_value: float  # always valid
    log_lr: float  # log Λ_n at the last observation

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def log_mixture_lr(n: np.ndarray, mean: np.ndarray, variance: float, tau: float) -> np.ndarray:
    """log Λ_n for each prefix (vectorised)."""
    n = np.asarray(n, float)
    denom = variance + n * tau**2
    return 0.5 * np.log(variance / denom) + (n**2 * tau**2 * np.asarray(mean) ** 2) / (
        2 * variance * denom
    )


def msprt(observations: np.ndarray, tau: float, variance: float = 1.0) -> SequentialResult:
    """The always-valid p-value after each prefix of `observations`, in arrival order."""
    x = np.asarray(observations, float)
    if len(x) == 0:
        return SequentialResult(0, 0.0, 1.0, 0.0)
    n = np.arange(1, len(x) + 1)
    means = np.cumsum(x) / n
    log_lr = log_mixture_lr(n, means, variance, tau)
    p = float(min(1.0, np.exp(-log_lr.max())))
    return SequentialResult(len(x), float(means[-1]), p, float(log_lr[-1]))


def unit_preferences(credit: np.ndarray) -> np.ndarray:
    """+1 / -1 per unit that preferred the challenger / champion (more clicks on its team's
    items over all its interleaved impressions); units without a preference are left out."""
    credit = np.asarray(credit, float)
    return np.sign(credit[credit != 0])


def preference_sample_size(
    win_rate: float, decided_share: float, alpha: float, power: float
) -> float:
    """Units needed by a two-sided sign test to detect `win_rate` ≠ 0.5, counting the units
    with no preference (`decided_share` of units have one)."""
    delta = abs(win_rate - 0.5)
    if delta == 0 or decided_share <= 0:
        return math.inf
    z = stats.norm.ppf(1 - alpha / 2) * 0.5 + stats.norm.ppf(power) * math.sqrt(
        win_rate * (1 - win_rate)
    )
    return (z / delta) ** 2 / decided_share


def ab_sample_size(ctr_a: float, ctr_b: float, alpha: float, power: float) -> float:
    """Units (both arms together) a 50/50 two-proportion z-test needs to detect ctr_a ≠ ctr_b."""
    delta = abs(ctr_a - ctr_b)
    if delta == 0:
        return math.inf
    pooled = (ctr_a + ctr_b) / 2
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    per_arm = (
        z_a * math.sqrt(2 * pooled * (1 - pooled))
        + z_b * math.sqrt(ctr_a * (1 - ctr_a) + ctr_b * (1 - ctr_b))
    ) ** 2 / delta**2
    return 2 * per_arm


def srm_p_value(observed: list[int], expected_shares: list[float]) -> float:
    """Chi-square test that units split as designed (a sample-ratio mismatch means the split or
    the logging is broken, and no comparison of the arms can be trusted)."""
    total = sum(observed)
    if total == 0:
        return 1.0
    expected = [total * s for s in expected_shares]
    return float(stats.chisquare(observed, expected).pvalue)

"""Is a difference between two systems real? Paired statistics over the same queries.

Every comparison shopflow makes is paired: both systems answer the same test queries, so the
per-query differences carry the signal and the query-to-query variance cancels. Used here:

- a paired bootstrap confidence interval of the mean difference (scipy's BCa bootstrap over
  the per-query differences);
- a paired permutation test (random sign flips of the differences; scipy's
  `permutation_test`), one-sided toward the alternative that matters to the caller;
- a non-inferiority test: is the challenger worse by more than a margin? (the same test on
  differences shifted by the margin);
- the sample size a classic A/B test on click-through rate would need (statsmodels' power
  analysis for two proportions).

Everything is seeded, so a night's decision is reproducible to the last digit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired runs must be equally long, got {a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError("a paired comparison needs at least 2 queries")
    return a - b


def bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """Confidence interval of mean(a - b) by the paired (BCa) bootstrap."""
    from scipy import stats

    diff = _differences(a, b)
    if np.ptp(diff) == 0:  # every query moved by the same amount: no sampling spread
        return float(diff[0]), float(diff[0])
    result = stats.bootstrap(
        (diff,), np.mean, n_resamples=resamples, confidence_level=confidence, method="BCa",
        random_state=np.random.default_rng(seed), vectorized=True,
    )  # fmt: skip
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerates on very skewed data
        result = stats.bootstrap(
            (diff,), np.mean, n_resamples=resamples, confidence_level=confidence,
            method="percentile", random_state=np.random.default_rng(seed), vectorized=True,
        )  # fmt: skip
        low, high = result.confidence_interval
    return float(low), float(high)


def permutation_p(
    a: Sequence[float], b: Sequence[float], *, alternative: Alternative = "greater",
    shift: float = 0.0, resamples: int = 10_000, seed: int = 0,
) -> float:  # fmt: skip
    """p-value of the paired permutation (sign-flip) test of mean(a - b + shift) vs 0.

    `alternative="greater"`: evidence that a beats b. With `shift` = a margin and
    `alternative="less"`, it tests whether a is worse than b by more than the margin.
    Exact (all 2^n sign patterns) when n is small, Monte Carlo otherwise.
    """
    from scipy import stats

    diff = _differences(a, b) + shift
    if not diff.any():
        return 1.0
    result = stats.permutation_test(
        (diff,), lambda d, axis: np.mean(d, axis=axis), permutation_type="samples",
        alternative=alternative, n_resamples=resamples, vectorized=True,
        random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return float(result.pvalue)


def compare(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Means, difference, its interval and the one-sided p-value that a beats b."""
    from scipy import stats

    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    diff = _differences(a_arr, b_arr)
    low, high = bootstrap_ci(a_arr, b_arr, confidence=confidence, resamples=resamples, seed=seed)
    wilcoxon = float(stats.wilcoxon(a_arr, b_arr).pvalue) if diff.any() else 1.0
    return {
        "challenger": float(a_arr.mean()),
        "champion": float(b_arr.mean()),
        "difference": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_value": permutation_p(a_arr, b_arr, resamples=resamples, seed=seed),
        "p_wilcoxon_two_sided": wilcoxon,
        "n": len(diff),
    }


def worse_by_more_than(
    a: Sequence[float], b: Sequence[float], margin: float, *, resamples: int = 10_000,
    seed: int = 0,
) -> float:  # fmt: skip
    """One-sided p-value that a is worse than b by more than `margin` (mean(a - b) < -margin)."""
    return permutation_p(a, b, alternative="less", shift=margin, resamples=resamples, seed=seed)


def sessions_per_arm(
    ctr_a: float, ctr_b: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Sessions each arm of a two-sided A/B test on CTR needs to detect ctr_a vs ctr_b.

    Cohen's h effect size and the normal approximation (statsmodels); infinite when the two
    click-through rates are equal.
    """
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not (0 < ctr_a < 1 and 0 < ctr_b < 1) or math.isclose(ctr_a, ctr_b, abs_tol=1e-12):
        return math.inf
    effect = abs(proportion_effectsize(ctr_a, ctr_b))
    n = NormalIndPower().solve_power(effect, alpha=alpha, power=power, alternative="two-sided")
    return float(math.ceil(n))
